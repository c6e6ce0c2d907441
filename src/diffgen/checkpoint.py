"""Model files: one `.safetensors` file holds the weights and everything needed to use them.

The metadata carries `format = "diffgen"`, a format version, the diffgen version and the model's
`ModelSpec` as JSON, so a file alone rebuilds the U-Net, its schedule and its task. Files are written
atomically (temporary file, fsync, rename) and read with safetensors only: no pickle anywhere.
"""

from __future__ import annotations

import copy
import math
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import Tensor

from diffgen import __version__
from diffgen.enums import Task
from diffgen.errors import CheckpointError
from diffgen.files import atomic_write
from diffgen.spec import ModelSpec
from diffgen.unet import UNet

FORMAT = "diffgen"
FORMAT_VERSION = 1

WEIGHT_DTYPES = {"F16", "BF16", "F32", "F64"}


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    model: torch.nn.Module  # the UNet, or a wrapper with the same call signature (see `in_bfloat16`)
    path: Path
    precision: str = "fp32"  # what sampling computes in: fp32, or bf16 (weights and activations)


class BFloat16Model(torch.nn.Module):
    """A bfloat16 copy of a model, in channels-last memory format, that takes and returns float32.

    The weights are cast once, not by autocast on every call, and kept in channels-last, the layout oneDNN's
    bf16 convolutions work in (no reorders between layers): 1.13x faster than autocast of the float32
    network for an upscaler tile (channels-last alone 1.07x, the cast alone 0.98x), measured on a loaded
    2-core AMD EPYC (`benchmarks/inference_levers.py`). The model it was made from is left as it was.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.inner = copy.deepcopy(model).to(torch.bfloat16, memory_format=torch.channels_last)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        as_bf16 = lambda image: None if image is None else image.to(torch.bfloat16, memory_format=torch.channels_last)
        return self.inner(as_bf16(x), t, labels, as_bf16(cond)).float()


def in_bfloat16(loaded: LoadedModel) -> LoadedModel:
    """The same model, sampling in bfloat16 (outputs differ from float32 by about 1%)."""
    return replace(loaded, model=BFloat16Model(loaded.model), precision="bf16")


def bf16_is_fast(device: torch.device) -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere it is emulated, and slower.

    GPUs are left in float32: bf16 sampling there has not been measured.
    """
    if device.type != "cpu":
        return False
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes
        return False


def with_precision(loaded: LoadedModel, precision: str) -> LoadedModel:
    """Sample in `precision`: fp32, bf16, or auto (bf16 where `bf16_is_fast`, else fp32).

    A float32 network on a CPU is put in channels-last in place (its values are unchanged): oneDNN's
    convolutions then skip a reorder per call: an upscaler tile 1.19x faster on machine C
    (`benchmarks/inference_levers.py`, fp32 rows; not yet measured on a CPU without AVX-512).
    """
    device = next(loaded.model.parameters()).device
    if precision == "bf16" or (precision == "auto" and bf16_is_fast(device)):
        return in_bfloat16(loaded)
    if device.type == "cpu":
        loaded.model.to(memory_format=torch.channels_last)
    return loaded


def save_model(path: Path, model: torch.nn.Module, spec: ModelSpec, *, half: bool = False) -> None:
    """Write the weights and spec of a model as one safetensors file."""
    dtype = torch.float16 if half else torch.float32
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    atomic_write(Path(path), st_save(tensors, metadata=model_metadata(spec)))


def model_metadata(spec: ModelSpec) -> dict[str, str]:
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "diffgen_version": __version__,
        "spec": spec.to_json(),
    }


@contextmanager
def open_safetensors(path: Path) -> Iterator:
    """A safetensors file opened (memory-mapped: its bytes are never held twice), its header checked;
    any failure to read it is a CheckpointError."""
    try:
        with safe_open(path, "pt") as f:
            yield f
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such model file; check the path") from None
    except SafetensorError:
        raise CheckpointError(
            f"{path}: not a valid safetensors file (truncated or corrupt); re-download or retrain it"
        ) from None
    except OSError as e:
        why = e.strerror or str(e).split(" (os error")[0]
        raise CheckpointError(f"{path}: cannot read model file ({why}); check its permissions") from None


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file's tensors and metadata, turning any failure into a CheckpointError."""
    path = Path(path)
    with open_safetensors(path) as f:
        return {name: f.get_tensor(name) for name in f.keys()}, f.metadata() or {}


def read_header(path: Path) -> tuple[ModelSpec, dict[str, str], int]:
    """A model file's spec, metadata and parameter count, checked against each other; reads no weights."""
    path = Path(path)
    with open_safetensors(path) as f:
        metadata = f.metadata() or {}
        spec = spec_from_metadata(path, metadata)
        params = check_weights(path, spec, f)
    return spec, metadata, params


def check_weights(path: Path, spec: ModelSpec, f) -> int:
    """Check that the file holds exactly the weights of the spec's U-Net, comparing shapes with a network
    built on the meta device (which allocates nothing): a spec describing a huge network in a small file
    is refused before any memory is spent. Returns the number of parameters."""
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in UNet(spec.unet).state_dict().items()}
    found = {}
    for name in f.keys():
        sliced = f.get_slice(name)
        found[name] = tuple(sliced.get_shape()) if sliced.get_dtype() in WEIGHT_DTYPES else None
    if found != expected:
        raise CheckpointError(f"{path}: the weights do not match the architecture in its metadata; the file is damaged")
    return sum(math.prod(shape) for shape in expected.values())


def load_model(
    path: Path, *, task: Task | None = None, device: str | torch.device = "cpu", name: str | None = None
) -> LoadedModel:
    """Load a diffgen model file, checking that it is one and, if `task` is given, that it does that task.

    `name` is the model as the user named it (a bundled name, a repo id, a path), for messages.
    """
    path = Path(path)
    with open_safetensors(path) as f:
        spec = spec_from_metadata(path, f.metadata() or {})
        if task is not None and spec.task is not task:
            raise wrong_task(name or str(path), spec, task)
        check_weights(path, spec, f)
        with torch.device("meta"):
            model = UNet(spec.unet)  # the file's tensors become its weights: no random init, no second copy
        model.load_state_dict({k: f.get_tensor(k).float() for k in f.keys()}, assign=True)
    model.eval().requires_grad_(False).to(device)
    return LoadedModel(spec=spec, model=model, path=path)


def wrong_task(name: str, spec: ModelSpec, task: Task) -> CheckpointError:
    """A model given to the other task's command: name it as the user did, and say which command takes it."""
    quoted = shlex.quote(name)
    if spec.task is Task.UPSCALE:
        what, use = f"an upscale model (x{spec.scale})", f"diffgen upscale IMAGE --model {quoted}"
    else:
        what, use = "a generate model", f"diffgen generate --model {quoted}"
    needs = "an upscale model" if task is Task.UPSCALE else "a generate model"
    return CheckpointError(f"{name}: this is {what}, but `{task.value}` needs {needs}; use it with `{use}`")


DAMAGED = "the model file is damaged or not made by diffgen"


def spec_from_metadata(path: Path, metadata: dict[str, str]) -> ModelSpec:
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a safetensors file, but not a diffgen model; use a model made by `diffgen train`")
    try:
        version = int(metadata["format_version"])
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: a diffgen model with no valid format version; the file is damaged") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: made by a newer diffgen (format {version}, this one reads up to {FORMAT_VERSION}); "
            "upgrade diffgen"
        )
    if "spec" not in metadata:
        raise CheckpointError(f"{path}: {DAMAGED} (no spec); re-download it or use another model")
    try:
        return ModelSpec.from_json(metadata["spec"])
    except ValueError as e:
        raise CheckpointError(f"{path}: {DAMAGED} ({e}); re-download it or use another model") from None
