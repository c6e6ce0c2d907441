"""Model files: one `.safetensors` file holds the weights and everything needed to use them.

The metadata carries `format = "diffgen"`, a format version, the diffgen version and the model's
`ModelSpec` as JSON, so a file alone rebuilds the U-Net, its schedule and its task. Files are written
atomically (temporary file, fsync, rename) and read with safetensors only: no pickle anywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from diffgen import __version__
from diffgen.errors import CheckpointError
from diffgen.files import atomic_write
from diffgen.schedule import Prediction, Schedule, ScheduleKind, make_schedule
from diffgen.unet import UNet, UNetConfig

FORMAT = "diffgen"
FORMAT_VERSION = 1


class Task(str, Enum):
    GENERATE = "generate"
    UPSCALE = "upscale"


@dataclass(frozen=True)
class ModelSpec:
    unet: UNetConfig  # the network's architecture
    task: Task = Task.GENERATE  # what the model does
    scale: int = 1  # upscaling factor (1 for generation)
    image_size: int = 32  # training resolution (of the high-resolution crop for upscaling)
    channels: int = 3  # image channels: 1 grey, 3 RGB, 4 RGBA
    class_names: tuple[str, ...] = ()  # one name per class; empty for an unconditional model
    schedule: ScheduleKind = ScheduleKind.LINEAR  # noise schedule
    num_timesteps: int = 1000  # T, the length of the diffusion chain
    prediction: Prediction = Prediction.EPS  # what the U-Net outputs
    residual_scale: float = 1.0  # upscaling: the model denoises (HR - bicubic(LR)) * residual_scale
    train_steps: int = 0  # optimisation steps the weights have seen
    extra: dict = field(default_factory=dict)  # free-form provenance: data, command, metrics

    def make_schedule(self) -> Schedule:
        return make_schedule(self.schedule, self.num_timesteps)

    def to_json(self) -> str:
        d = asdict(self)
        d["unet"] = self.unet.to_dict()
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        d = json.loads(text)
        d["unet"] = UNetConfig.from_dict(d["unet"])
        d["task"] = Task(d["task"])
        d["schedule"] = ScheduleKind(d["schedule"])
        d["prediction"] = Prediction(d["prediction"])
        d["class_names"] = tuple(d["class_names"])
        return cls(**d)


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    model: torch.nn.Module  # the UNet, or a wrapper with the same call signature (see `in_bfloat16`)
    path: Path
    precision: str = "fp32"  # what sampling computes in: fp32, or bf16 (autocast)


class BFloat16Autocast(torch.nn.Module):
    """Run a model under bfloat16 autocast and return float32: about 1.7x faster on CPUs with bf16 support."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.inner = model

    def forward(self, *args: Tensor | None) -> Tensor:
        device = next(self.inner.parameters()).device
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return self.inner(*args).float()


def in_bfloat16(loaded: LoadedModel) -> LoadedModel:
    """The same model, sampling in bfloat16 (outputs differ from float32 by about 1%)."""
    return replace(loaded, model=BFloat16Autocast(loaded.model), precision="bf16")


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
    """Sample in `precision`: fp32, bf16, or auto (bf16 where `bf16_is_fast`, else fp32)."""
    device = next(loaded.model.parameters()).device
    if precision == "bf16" or (precision == "auto" and bf16_is_fast(device)):
        return in_bfloat16(loaded)
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


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file's tensors and metadata, turning any failure into a CheckpointError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such model file; check the path") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read model file ({e.strerror}); check its permissions") from None
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError, RuntimeError):
        raise CheckpointError(
            f"{path}: not a valid safetensors file (truncated or corrupt); re-download or retrain it"
        ) from None
    return tensors, metadata


def load_model(path: Path, *, task: Task | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a diffgen model file, checking that it is one and, if `task` is given, that it does that task."""
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    spec = spec_from_metadata(path, metadata)
    if task is not None and spec.task is not task:
        raise CheckpointError(
            f"{path}: this is a {spec.task.value} model, but `{task.value}` needs a {task.value} model; "
            f"pass one with --model"
        )
    model = UNet(spec.unet)
    try:
        model.load_state_dict({k: v.float() for k, v in tensors.items()})
    except RuntimeError:
        raise CheckpointError(f"{path}: the weights do not match the architecture in its metadata; the file is damaged") from None
    model.eval().requires_grad_(False).to(device)
    return LoadedModel(spec=spec, model=model, path=path)


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
    try:
        return ModelSpec.from_json(metadata["spec"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: a diffgen model whose metadata cannot be read; the file is damaged") from None
