"""A diffusers pipeline's UNet2DModel built (by diffusers) and loaded (by diffgen, from safetensors only) behind
the call of diffgen's U-Net, so that every sampler runs over it unchanged."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from diffgen.checkpoint import WEIGHT_DTYPES, LoadedModel, Task, open_safetensors, wrong_task
from diffgen.diffusers_models import INSTALL, UNET_CONFIG, pipeline_root, weights_of
from diffgen.diffusers_models.spec import pipeline_spec
from diffgen.errors import CheckpointError, DiffgenError
from diffgen.hub import first_line

class DiffusersUNet(nn.Module):
    """diffusers' UNet2DModel behind the call of diffgen's U-Net: (x_t, t, labels, cond) -> its prediction.

    A UNet with a learned variance outputs twice the channels; diffgen's samplers use the first half only."""

    def __init__(self, unet: nn.Module, channels: int):
        super().__init__()
        self.unet, self.channels = unet, channels

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        try:
            return self.unet(x, t, return_dict=False)[0][:, : self.channels]
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # a config diffusers built but cannot run: our inputs are well-formed
            raise CheckpointError(f"the pipeline's UNet2DModel fails on a {tuple(x.shape)} batch ({first_line(e)}); "
                                  "its unet/config.json does not work in this diffusers; use another model") from None


def import_diffusers(name: str):
    """diffusers' UNet2DModel and its logging, or the one line that names the extra to install."""
    try:
        import diffusers
        from diffusers import UNet2DModel
    except ImportError:
        raise DiffgenError(f"{name}: a diffusers pipeline, which needs diffusers installed: {INSTALL}") from None
    return UNet2DModel, diffusers.utils.logging


@contextmanager
def quiet(logging):
    """diffusers' log warnings and Python's warnings silenced while it builds (the core never prints)."""
    before = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(before)


# Attention weights of diffusers before 0.14, which its own loader still renames on the way in.
OLD_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def current_name(name: str, expected: dict) -> str:
    if name in expected:
        return name
    for old, new in OLD_ATTENTION.items():
        name = name.replace(old, new)
    return name


def load_pipeline(path: Path, *, task: Task | None = None, device: str | torch.device = "cpu",
                  name: str | None = None) -> LoadedModel:
    """Load the pipeline a path names (see `pipeline_root`) as a LoadedModel whose path is its UNet weights."""
    root = pipeline_root(path)
    weights = weights_of(root)
    spec = pipeline_spec(root)
    if task is not None and task is not spec.task:
        raise wrong_task(name or str(root), spec, task)
    UNet2DModel, logging = import_diffusers(name or str(root))
    with quiet(logging):
        try:
            with torch.device("meta"):
                unet = UNet2DModel.from_config(spec.extra["diffusers"]["unet"])
        except Exception as e:  # a publisher's config that diffusers refuses: never an internal error
            raise CheckpointError(f"{root / UNET_CONFIG}: diffusers cannot build this UNet2DModel "
                                  f"({first_line(e)}); use another model") from None
    unet.load_state_dict(read_weights(weights, unet), assign=True)
    model = DiffusersUNet(unet, spec.channels).eval().requires_grad_(False).to(device)
    return LoadedModel(spec=spec, model=model, path=weights)


def read_weights(path: Path, unet: nn.Module) -> dict[str, Tensor]:
    """The file's tensors as float32, after checking that they are exactly the network's, shape for shape."""
    expected = {name: tuple(t.shape) for name, t in unet.state_dict().items()}
    with open_safetensors(path) as f:
        found = {}
        for name in f.keys():
            sliced = f.get_slice(name)
            found[current_name(name, expected)] = (name, tuple(sliced.get_shape()) if sliced.get_dtype() in WEIGHT_DTYPES else None)
        if {key: shape for key, (_, shape) in found.items()} != expected:
            raise CheckpointError(f"{path}: the weights do not match the UNet in {UNET_CONFIG}; re-download the pipeline "
                                  "or use another model")
        return {key: f.get_tensor(name).float() for key, (name, _) in found.items()}
