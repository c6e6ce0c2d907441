"""Finding a model: a bundled name, a `.safetensors` file, a training run folder, a Hub repo id or a diffusers
pipeline (a folder or repo with model_index.json, see diffusers_models/); and two models blended into one."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import torch

from diffgen import diffusers_models
from diffgen.checkpoint import LoadedModel, Task, load_model
from diffgen.diffusers_models.network import load_pipeline
from diffgen.errors import CheckpointError, OptionError
from diffgen.hub import hub_model_file, is_repo_id, parse_repo
from diffgen.runs import find_model

# Bundled models: name -> file in weights/. The first of each task is that task's default.
BUNDLED = {
    "digits": ("digits.safetensors", Task.GENERATE),
    "emoji": ("emoji.safetensors", Task.GENERATE),
    "upscale-x4": ("upscale-x4.safetensors", Task.UPSCALE),  # trained on degraded inputs: JPEG, noise, blur
    "upscale-x4-clean": ("upscale-x4-clean.safetensors", Task.UPSCALE),  # on clean ones: best on clean PNG inputs
    "upscale-x2": ("upscale-x2.safetensors", Task.UPSCALE),  # upscale-x4 made x2, fine-tuned on degraded inputs
    "upscale-x2-clean": ("upscale-x2-clean.safetensors", Task.UPSCALE),  # upscale-x4-clean made x2
}

# `upscale --denoise`: a bundled real-world upscaler and the clean one it descends from (both x2 models are
# made from the x4 pair by tools/change_scale.py), which `blend` mixes (0: the clean one, 1: the real-world
# one). By default (AUTO) each image gets 1 if it shows JPEG blocks or noise and 0 if it looks clean
# (damage.py, api.Upscalers); of the fixed strengths 0, 0.25, ..., 1, 1 has the best mean gain over clean,
# JPEG and noisy inputs on crops of training photos (benchmarks/upscale_denoise.py; docs/upscale.md).
DENOISE_PARTNERS = {"upscale-x4": "upscale-x4-clean", "upscale-x2": "upscale-x2-clean"}
STRONGEST = 1.0  # --denoise 1: the real-world upscaler as it is
AUTO = "auto"  # --denoise's default: per image, 1 where it shows JPEG blocks or noise, else 0 (api.Upscalers)


def weights_dir() -> Path:
    """Where bundled weights live: inside the installed package, or at the top of a source checkout."""
    installed = Path(__file__).parent / "weights"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / "weights"


def default_model(task: Task) -> str:
    return next(name for name, (_, t) in BUNDLED.items() if t is task)


def bundled_upscaler(scale: int) -> str:
    """The bundled upscaler of a factor (`upscale --scale 2` without --model): upscale-x2, upscale-x4."""
    factors = {int(name.removeprefix("upscale-x")): name for name, (_, task) in BUNDLED.items()
               if task is Task.UPSCALE and name.removeprefix("upscale-x").isdigit()}
    if scale not in factors:
        raise OptionError(f"--scale {scale}: no bundled model upscales x{scale} (bundled: "
                          f"{', '.join(f'x{f}' for f in sorted(factors))}); pass --model with one trained with "
                          f"`diffgen train --task upscale --scale {scale}`")
    return factors[scale]


def resolve(model: str | None, task: Task, option: str = "--model") -> Path:
    """The file a `--model` value (or that of `option`) names."""
    model = model or default_model(task)
    if model in BUNDLED:
        path = weights_dir() / BUNDLED[model][0]
        if not path.is_file():
            raise CheckpointError(f"{path}: the bundled model '{model}' is missing; reinstall diffgen or pass {option} PATH")
        return path
    if is_repo_id(model):  # `user/name[@revision]` that is not a local path
        repo_id, revision = parse_repo(model)
        return diffusers_models.hub_pipeline(repo_id, revision) or hub_model_file(repo_id, revision)
    if (pipeline := diffusers_models.pipeline_root(Path(model))) is not None:
        return diffusers_models.weights_of(pipeline)  # a diffusers pipeline is named by its UNet's weights
    also = f", a diffusers pipeline folder, a Hub repo id (user/name) or one of: {', '.join(BUNDLED)}"
    return find_model(model, also=also)


def open_model(model: str | None, task: Task | None, device: str = "cpu") -> LoadedModel:
    """Load the model a `--model` value names (None: the task's default); a model for another task is named as
    the user named it. Without a task, a model of either task loads."""
    model = model or default_model(task)
    path = resolve(model, task)
    if diffusers_models.pipeline_root(path) is not None:
        return load_pipeline(path, task=task, device=device, name=model)
    return load_model(path, task=task, device=device, name=model)


def bundled_models() -> list[tuple[str, Path]]:
    """The bundled models that are present, with their files."""
    return [(name, weights_dir() / file) for name, (file, _) in BUNDLED.items() if (weights_dir() / file).is_file()]


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
