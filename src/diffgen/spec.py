"""What a model is: `ModelSpec`, the JSON a model file carries beside its weights, and the checks that refuse a
spec outside `LIMITS` before anything is allocated (anyone can publish a model file)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from enum import Enum

from diffgen.enums import Task
from diffgen.schedule import Prediction, Schedule, ScheduleKind, make_schedule
from diffgen.unet import UNetConfig

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
MAX_GUIDANCE = 100.0
OPTIONAL_FIELDS = ("guidance", "guidance_interval")  # left out of a spec's JSON at their defaults


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
    # How `generate` samples this model unless told otherwise: the classifier-free guidance weight, and the
    # noise levels σ (low, high) it applies at (None: all). Written only when set, so older diffgens read the rest.
    guidance: float = 0.0
    guidance_interval: tuple[float, float] | None = None

    def make_schedule(self) -> Schedule:
        return make_schedule(self.schedule, self.num_timesteps)

    def to_json(self) -> str:
        d = asdict(self)
        d["unet"] = self.unet.to_dict()
        for name in OPTIONAL_FIELDS:
            if d[name] == getattr(ModelSpec, name):
                del d[name]
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
        if (interval := d.get("guidance_interval")) is not None:
            if not isinstance(interval, list):
                raise ValueError(f"guidance_interval {shown(interval)}: not a list")
            d["guidance_interval"] = tuple(interval)
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
    check_guidance(spec)
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


def check_guidance(spec: ModelSpec) -> None:
    """A default guidance weight needs classes to guide by; its interval is two noise levels, low < high."""
    check_real("guidance", spec.guidance, lambda x: 0 <= x <= MAX_GUIDANCE, f"in [0, {MAX_GUIDANCE:g}]")
    if spec.guidance and not spec.class_names:
        raise ValueError(f"guidance {spec.guidance:g}: an unconditional model has no classes to guide by")
    if spec.guidance_interval is None:
        return
    if len(spec.guidance_interval) != 2:
        raise ValueError(f"guidance_interval {shown(list(spec.guidance_interval))}: not two noise levels")
    for end in spec.guidance_interval:
        check_real("guidance_interval", end, lambda x: x >= 0, "of 0 or more")
    low, high = spec.guidance_interval
    if low >= high:
        raise ValueError(f"guidance_interval {shown(list(spec.guidance_interval))}: the low end must be below the high end")


def check_real(name: str, value, ok, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} {shown(value)}: must be a number {allowed}")


def nested_deeper(value, levels: int) -> bool:
    """Whether lists and objects nest more than `levels` deep in a JSON value (looking no deeper than that)."""
    if not isinstance(value, (dict, list)):
        return False
    children = value.values() if isinstance(value, dict) else value
    return levels == 0 or any(nested_deeper(child, levels - 1) for child in children)
