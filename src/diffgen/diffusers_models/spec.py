"""A diffusers pipeline's configs read into diffgen's terms: its schedule, its U-Net's shape, each value checked
(no diffusers needed)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from diffgen.checkpoint import open_safetensors
from diffgen.spec import LIMITS, MAX_LEVELS, MAX_WIDTH, ModelSpec, check_spec, shown
from diffgen.diffusers_models import (
    BETA_SCHEDULES,
    MAX_CONFIG_BYTES,
    PIPELINE_FILE,
    PREDICTIONS,
    SCHEDULER_CONFIG,
    SCHEDULERS,
    TIME_EMBEDDINGS,
    UNET_CONFIG,
)
from diffgen.errors import CheckpointError
from diffgen.schedule import Schedule, ScheduleKind, make_schedule
from diffgen.unet import UNetConfig


def read_json(path: Path) -> dict:
    """A config file as a JSON object, or a CheckpointError saying why not."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise CheckpointError(f"{path}: over {MAX_CONFIG_BYTES:,} bytes, not a diffusers config; use another model")
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing from the diffusers pipeline; re-download it or use another model") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        why = getattr(e, "strerror", None) or "not valid JSON"
        raise CheckpointError(f"{path}: cannot read this diffusers config ({why}); re-download it or use another model") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: not a JSON object, so not a diffusers config; re-download it or use another model")
    return value


@dataclass(frozen=True)
class DiffusersSpec(ModelSpec):
    """A pipeline as diffgen sees it. `unet` is the diffgen U-Net of about the same shape, which the memory
    estimates read; the schedule is the pipeline's own β schedule, which `schedule` only names roughly."""

    beta_schedule: str = "linear"  # the scheduler's: linear, scaled_linear, squaredcos_cap_v2, or "trained" (its list)
    beta_start: float = 1e-4  # β_0 of the linear schedules
    beta_end: float = 0.02  # β_(T-1) of the linear schedules
    trained_betas: tuple[float, ...] = ()  # the scheduler's own β list, when it gives one

    def make_schedule(self) -> Schedule:
        return pipeline_schedule(self.beta_schedule, self.num_timesteps, self.beta_start, self.beta_end, self.trained_betas)


def pipeline_schedule(kind: str, T: int, beta_start: float, beta_end: float, trained: tuple[float, ...] = ()) -> Schedule:
    """The β schedule a diffusers scheduler config names, as diffusers computes it (here in float64)."""
    if kind == "squaredcos_cap_v2":
        return make_schedule(ScheduleKind.COSINE, T)  # the same formula (Nichol & Dhariwal), capped at 0.999 too
    if kind == "trained":
        betas = torch.tensor(trained, dtype=torch.float64)
    elif kind == "scaled_linear":  # linear in sqrt(β), the latent diffusion schedule
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    else:
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return Schedule(kind=ScheduleKind.LINEAR, betas=betas, alphas_cumprod=torch.cumprod(1 - betas, dim=0))


def pipeline_spec(root: Path) -> DiffusersSpec:
    """The spec of the pipeline in `root`, from its three configs, each value checked (no diffusers needed)."""
    index, unet, scheduler = (read_json(Path(root) / name) for name in (PIPELINE_FILE, UNET_CONFIG, SCHEDULER_CONFIG))
    check_index(Path(root) / PIPELINE_FILE, index)
    try:
        schedule = schedule_fields(scheduler)
        image_size, channels, approx = unet_shape(unet)
    except ValueError as e:  # the message starts with the key: say which file holds it
        where = SCHEDULER_CONFIG if str(e).startswith("scheduler ") else UNET_CONFIG
        raise CheckpointError(f"{Path(root) / where}: {str(e).removeprefix('scheduler ')}; diffgen cannot run this "
                              "pipeline") from None
    extra = {"diffusers": {"pipeline": index.get("_class_name"), "scheduler": scheduler.get("_class_name"),
                           "prediction_type": scheduler.get("prediction_type", "epsilon"),
                           "version": index.get("_diffusers_version"), "unet": unet}}
    spec = DiffusersSpec(unet=approx, image_size=image_size, channels=channels, extra=extra, **schedule)
    try:
        check_spec(spec)  # diffgen's own limits, on the U-Net of about the same shape
    except ValueError as e:
        raise CheckpointError(f"{Path(root) / UNET_CONFIG}: a network beyond diffgen's limits ({e}); use another model") from None
    return spec


def check_index(path: Path, index: dict) -> None:
    """An unconditional pipeline: a UNet2DModel and a scheduler, nothing else (no VAE, no text encoder)."""
    pipeline = index.get("_class_name", "pipeline")
    unet, scheduler = index.get("unet"), index.get("scheduler")
    if not (isinstance(unet, list) and unet[-1:] == ["UNet2DModel"]):
        raise CheckpointError(f"{path}: a {shown(pipeline)} whose unet is {shown(unet)}; diffgen runs unconditional "
                              "pipelines of a UNet2DModel only")
    if not (isinstance(scheduler, list) and scheduler[-1:] and str(scheduler[-1]) in SCHEDULERS):
        raise CheckpointError(f"{path}: scheduler {shown(scheduler)}; diffgen reads the β schedule of "
                              "DDPM-family schedulers only (DDPMScheduler, DDIMScheduler, ...)")
    for name, value in index.items():
        if not name.startswith("_") and name not in ("unet", "scheduler") and value not in (None, [None, None]):
            raise CheckpointError(f"{path}: a {shown(pipeline)} with a {shown(name)} ({shown(value)}); diffgen runs "
                                  "unconditional pipelines of a UNet2DModel and a scheduler only")


def schedule_fields(config: dict) -> dict:
    """The spec's schedule fields from a scheduler config; ValueError("scheduler KEY ...") for what diffgen lacks.

    Only what defines the model's diffusion is read: the scheduler's sampling settings (spacing, Karras
    sigmas, clipping, ...) are its own sampler's, which diffgen's replace."""
    T = config.get("num_train_timesteps", 1000)
    check_whole("scheduler num_train_timesteps", T, *LIMITS["num_timesteps"])
    prediction = config.get("prediction_type", "epsilon")
    if not isinstance(prediction, str) or prediction not in PREDICTIONS:
        raise ValueError(f"scheduler prediction_type {shown(prediction)}: diffgen supports {', '.join(PREDICTIONS)}")
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("scheduler rescale_betas_zero_snr true: not supported (diffgen's schedules keep ᾱ above 0)")
    fields = {"num_timesteps": T, "prediction": PREDICTIONS[prediction]} | beta_fields(config, T)
    schedule = pipeline_schedule(fields["beta_schedule"], T, fields.get("beta_start", 0), fields.get("beta_end", 0),
                                 fields.get("trained_betas", ()))
    if not schedule.alphas_cumprod[-1] > torch.finfo(torch.float32).tiny:  # samplers compute in float32
        raise ValueError(f"scheduler beta_schedule {fields['beta_schedule']} with these betas: ᾱ reaches 0, which "
                         "diffgen's samplers cannot use")
    return fields


def beta_fields(config: dict, T: int) -> dict:
    """The β schedule: a trained list, or a named schedule (with its range, for the linear ones)."""
    trained = config.get("trained_betas")
    if trained is not None:
        if not (isinstance(trained, list) and len(trained) == T and all(is_beta(b) for b in trained)):
            raise ValueError(f"scheduler trained_betas: need {T} numbers in (0, 1)")
        return {"beta_schedule": "trained", "trained_betas": tuple(float(b) for b in trained)}
    kind = config.get("beta_schedule", "linear")
    if kind not in BETA_SCHEDULES:
        raise ValueError(f"scheduler beta_schedule {shown(kind)}: diffgen supports {', '.join(BETA_SCHEDULES)}")
    if kind == "squaredcos_cap_v2":
        return {"beta_schedule": kind}  # no range: beta_start and beta_end are not used
    start, end = config.get("beta_start", 1e-4), config.get("beta_end", 0.02)
    if not (is_beta(start) and is_beta(end) and start <= end):
        raise ValueError(f"scheduler beta_start {shown(start)}, beta_end {shown(end)}: need 0 < beta_start <= beta_end < 1")
    return {"beta_schedule": kind, "beta_start": float(start), "beta_end": float(end)}


def is_beta(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1


def check_whole(name: str, value, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{name} {shown(value)}: need a whole number from {low:,} to {high:,}")


def unet_shape(config: dict) -> tuple[int, int, UNetConfig]:
    """Image size, channels and the diffgen U-Net of about the same shape; ValueError for what diffgen lacks."""
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"_class_name {shown(config['_class_name'])}: diffgen runs a UNet2DModel only")
    size = config.get("sample_size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]  # square: diffgen's images are
    check_whole("sample_size", size, *LIMITS["image_size"])
    channels = config.get("in_channels", 3)
    if channels not in (1, 3, 4) or type(channels) is not int:
        raise ValueError(f"in_channels {shown(channels)}: diffgen makes images of 1, 3 or 4 channels")
    if config.get("out_channels", channels) not in (channels, 2 * channels):  # 2x: a learned variance, unused
        raise ValueError(f"out_channels {shown(config.get('out_channels'))}: need in_channels ({channels}) or twice it")
    widths = config.get("block_out_channels")
    if not (isinstance(widths, (list, tuple)) and 1 <= len(widths) <= MAX_LEVELS):
        raise ValueError(f"block_out_channels {shown(widths)}: need a list of 1 to {MAX_LEVELS} widths")
    for width in widths:
        check_whole("block_out_channels", width, 1, MAX_WIDTH)
    layers = config.get("layers_per_block", 2)
    check_whole("layers_per_block", layers, *LIMITS["unet.num_res_blocks"])
    if size % 2 ** (len(widths) - 1):
        raise ValueError(f"sample_size {size}: not a multiple of {2 ** (len(widths) - 1)}, which the UNet's levels need")
    for key, allowed in (("class_embed_type", (None,)), ("num_class_embeds", (None, 0)),
                         ("time_embedding_type", TIME_EMBEDDINGS)):
        if config.get(key) not in allowed:
            raise ValueError(f"{key} {shown(config.get(key))}: diffgen runs unconditional UNets of the timestep index only")
    kinds = config.get("down_block_types")
    attention = tuple(i for i, kind in enumerate(kinds if isinstance(kinds, (list, tuple)) else ()) if "Attn" in str(kind))
    approx = UNetConfig(in_channels=channels, base_channels=widths[0], channel_mults=tuple(-(-w // widths[0]) for w in widths),
                        num_res_blocks=layers, attention_levels=attention, norm_groups=1, head_channels=widths[0])
    return size, channels, approx


def parameter_count(path: Path) -> int:
    """The number of values in a safetensors file, from its header alone."""
    with open_safetensors(path) as f:
        return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
