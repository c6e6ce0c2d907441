"""Model files: one `.safetensors` file holds the weights and everything needed to use them.

The metadata carries `format = "diffgen"`, a format version, the diffgen version and the model's
`ModelSpec` as JSON, so a file alone rebuilds the U-Net, its schedule and its task. Files are written
atomically (temporary file, fsync, rename) and read with safetensors only: no pickle anywhere.
"""

from __future__ import annotations

import copy
import json
import math
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import Tensor

from diffgen import __version__
from diffgen.errors import CheckpointError
from diffgen.files import atomic_write
from diffgen.schedule import Prediction, Schedule, ScheduleKind, make_schedule
from diffgen.unet import UNet, UNetConfig

FORMAT = "diffgen"
FORMAT_VERSION = 1

# What a model file may ask for. Anyone can publish one, and its metadata alone could otherwise ask for
# any amount of memory (num_timesteps 10^9, image_size 8192, scale 10^6): every value is checked against
# these before anything is allocated. Generous for any model diffgen trains, and finite; listed in
# docs/guarantees.md.
LIMITS = {  # field: (lowest, highest), inclusive
    "num_timesteps": (1, 100_000),
    "image_size": (1, 2048),
    "scale": (1, 16),
    "train_steps": (0, 10**15),
    "unet.in_channels": (1, 4),
    "unet.base_channels": (1, 1024),
    "unet.channel_mults": (1, 16),  # each entry
    "unet.num_res_blocks": (1, 16),
    "unet.head_channels": (1, 4096),
    "unet.norm_groups": (1, 1024),
    "unet.num_classes": (0, 10_000),
    "unet.cond_channels": (0, 4),
    "unet.pixel_shuffle": (1, 16),
}
MAX_LEVELS = 8  # entries of channel_mults
MAX_WIDTH = 4096  # channels of the widest level
MAX_IMAGE_VALUES = 2**30  # what the U-Net's skip tensors hold for one image_size image: 4 GiB of float32
MAX_NAME = 255  # characters of a class name
MAX_SPEC_CHARS = 1_000_000  # the spec's JSON text
MAX_EXTRA_DEPTH = 32  # nesting of `extra`
MAX_RESIDUAL_SCALE = 1e6
WEIGHT_DTYPES = {"F16", "BF16", "F32", "F64"}


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
        """The spec a file's metadata holds; ValueError (saying which value) unless it is within LIMITS."""
        if len(text) > MAX_SPEC_CHARS:
            raise ValueError(f"spec of {len(text):,} characters, over the limit of {MAX_SPEC_CHARS:,}")
        try:
            d = json.loads(text)
        except RecursionError:
            raise ValueError("spec nested too deeply") from None
        if not isinstance(d, dict) or not isinstance(d.get("unet"), dict):
            raise ValueError("spec without a unet object")
        for prefix, given, cls_ in (("", d, cls), ("unet.", d["unet"], UNetConfig)):
            if unknown := sorted(set(given) - {f.name for f in fields(cls_)}):
                raise ValueError(f"unknown field {prefix}{unknown[0][:40]}")
        for key in ("class_names", "unet.channel_mults", "unet.attention_levels"):
            parent, name = (d["unet"], key[5:]) if key.startswith("unet.") else (d, key)
            if name in parent and not isinstance(parent[name], list):
                raise ValueError(f"{key} {shown(parent[name])}: not a list")
        d["unet"] = UNetConfig.from_dict(d["unet"])
        for name, kind in (("task", Task), ("schedule", ScheduleKind), ("prediction", Prediction)):
            if name in d:
                d[name] = enum_value(name, kind, d[name])
        spec = cls(**d | {"class_names": tuple(d.get("class_names", ()))})
        check_spec(spec)
        return spec


def shown(value) -> str:
    """A value as a message shows it: its JSON, cut short."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def enum_value(name: str, kind: type[Enum], value) -> Enum:
    choices = [member.value for member in kind]
    if value not in choices:
        raise ValueError(f"{name} {shown(value)}: not one of {', '.join(choices)}")
    return kind(value)


def check_int(name: str, value, low: int, high: int) -> None:
    if type(value) is not int:
        raise ValueError(f"{name} {shown(value)}: not a whole number")
    if not low <= value <= high:
        raise ValueError(f"{name} {shown(value)}: outside {low:,} to {high:,}")


def check_spec(spec: ModelSpec) -> None:
    """Refuse a spec outside LIMITS, or one whose parts contradict each other, before anything is allocated."""
    u = spec.unet
    for name, (low, high) in LIMITS.items():
        if name != "unet.channel_mults":
            check_int(name, getattr(u, name[5:]) if name.startswith("unet.") else getattr(spec, name), low, high)
    check_unet_shape(u)
    check_task(spec)
    if spec.channels not in (1, 3, 4) or u.in_channels != spec.channels:
        raise ValueError(f"channels {shown(spec.channels)} with unet.in_channels {u.in_channels}: need 1, 3 or 4, both the same")
    if spec.image_size % u.size_multiple:
        raise ValueError(f"image_size {spec.image_size}: not a multiple of {u.size_multiple}, which the U-Net needs")
    if (values := skip_values(u, spec.image_size)) > MAX_IMAGE_VALUES:
        raise ValueError(f"image_size {spec.image_size} with this U-Net: {values:,} values held for one image, "
                         f"over the limit of {MAX_IMAGE_VALUES:,}")
    check_names(spec.class_names, u.num_classes)
    check_real("residual_scale", spec.residual_scale, lambda x: 0 < x <= MAX_RESIDUAL_SCALE, f"in (0, {MAX_RESIDUAL_SCALE:g}]")
    check_real("unet.dropout", u.dropout, lambda x: 0 <= x < 1, "in [0, 1)")
    if not isinstance(spec.extra, dict):
        raise ValueError(f"extra {shown(spec.extra)}: not an object")
    if nested_deeper(spec.extra, MAX_EXTRA_DEPTH):
        raise ValueError(f"extra nested deeper than {MAX_EXTRA_DEPTH} levels")


def check_unet_shape(u: UNetConfig) -> None:
    """The U-Net's levels, widths and attention: within LIMITS, and a network UNet can build."""
    if not 1 <= len(u.channel_mults) <= MAX_LEVELS:
        raise ValueError(f"unet.channel_mults {shown(list(u.channel_mults))}: 1 to {MAX_LEVELS} levels")
    for mult in u.channel_mults:
        check_int("unet.channel_mults", mult, *LIMITS["unet.channel_mults"])
    widths = [u.base_channels * m for m in (1, *u.channel_mults)]
    if max(widths) > MAX_WIDTH:
        raise ValueError(f"unet.channel_mults {shown(list(u.channel_mults))}: a level over {MAX_WIDTH} channels")
    if any(w % u.norm_groups for w in widths):
        raise ValueError(f"unet.base_channels {u.base_channels}, unet.channel_mults {list(u.channel_mults)}: widths "
                         f"{widths}, not all multiples of unet.norm_groups {u.norm_groups}")
    for level in u.attention_levels:
        check_int("unet.attention_levels", level, 0, len(u.channel_mults) - 1)


def skip_values(u: UNetConfig, size: int) -> int:
    """About how many values a forward pass keeps for one size×size image: the input convolution's output
    and each level's skip tensors (its blocks' and its downsampling's), at the level's width and resolution."""
    side = size // u.pixel_shuffle
    widths = [u.base_channels * m for m in u.channel_mults]
    return u.base_channels * side**2 + sum((u.num_res_blocks + 1) * w * (side >> i) ** 2 for i, w in enumerate(widths))


def check_task(spec: ModelSpec) -> None:
    """What each task's network must look like: as `diffgen train` builds it."""
    u = spec.unet
    if spec.task is Task.GENERATE:
        expected = {"scale": 1, "unet.pixel_shuffle": 1, "unet.cond_channels": 0}
    elif spec.scale < 2:
        raise ValueError(f"scale {spec.scale}: an upscale model upscales by 2 or more")
    else:
        expected = {"unet.pixel_shuffle": spec.scale, "unet.cond_channels": spec.channels, "unet.num_classes": 0}
    for name, value in expected.items():
        given = getattr(u, name[5:]) if name.startswith("unet.") else getattr(spec, name)
        if given != value:
            raise ValueError(f"{name} {given}: {'an upscale' if spec.task is Task.UPSCALE else 'a generate'} model needs {value}")


def check_names(names: tuple, num_classes: int) -> None:
    if len(names) != num_classes:
        raise ValueError(f"class_names: {len(names)} names for unet.num_classes {num_classes}")
    for name in names:
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
            raise ValueError(f"class_names {shown(name)}: not a name of 1 to {MAX_NAME} characters")
    if len(set(names)) < len(names):
        raise ValueError("class_names: a name given twice")


def check_real(name: str, value, ok, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} {shown(value)}: must be a number {allowed}")


def nested_deeper(value, levels: int) -> bool:
    """Whether lists and objects nest more than `levels` deep in a JSON value (looking no deeper than that)."""
    if not isinstance(value, (dict, list)):
        return False
    children = value.values() if isinstance(value, dict) else value
    return levels == 0 or any(nested_deeper(child, levels - 1) for child in children)


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


def blend(gentle: LoadedModel, strong: LoadedModel, strength: float) -> LoadedModel:
    """A model between two fine-tunes of one network: weights (1 - strength) * gentle + strength * strong.

    Network interpolation (Wang et al. 2018, ESRGAN section 3.4; realesr-general-x4v3's `-dn`): two models
    fine-tuned from the same start lie in one basin, so their blend behaves in between, e.g. between an
    upscaler trained on clean inputs (0: keeps faint texture) and one trained on noisy JPEGs (1: removes
    noise and blocks). Only models that compute the same thing in the same way can be blended.
    """
    a, b = gentle.spec, strong.spec
    same = ("unet", "task", "scale", "channels", "schedule", "num_timesteps", "prediction", "residual_scale")
    differ = [name for name in same if getattr(a, name) != getattr(b, name)]
    if differ:
        raise CheckpointError(f"{gentle.path} and {strong.path}: cannot be blended, their {', '.join(differ)} differ; "
                              "blend two fine-tunes of one model")
    model = copy.deepcopy(strong.model)
    with torch.no_grad():
        for p, p_gentle in zip(model.parameters(), gentle.model.parameters()):
            p.lerp_(p_gentle.to(p.dtype), 1 - strength)
    return replace(strong, model=model)


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
