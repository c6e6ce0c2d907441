"""Finding a model: a bundled name, a `.safetensors` file, a training run folder or a Hub repo id."""

from __future__ import annotations

from pathlib import Path

from diffgen.checkpoint import LoadedModel, Task, load_model
from diffgen.errors import CheckpointError
from diffgen.hub import hub_model_file, is_repo_id, parse_repo
from diffgen.runs import find_model

# Bundled models: name -> file in weights/. The first of each task is that task's default.
BUNDLED = {
    "digits": ("digits.safetensors", Task.GENERATE),
    "emoji": ("emoji.safetensors", Task.GENERATE),
    "upscale-x4": ("upscale-x4.safetensors", Task.UPSCALE),
}


def weights_dir() -> Path:
    """Where bundled weights live: inside the installed package, or at the top of a source checkout."""
    installed = Path(__file__).parent / "weights"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / "weights"


def default_model(task: Task) -> str:
    return next(name for name, (_, t) in BUNDLED.items() if t is task)


def resolve(model: str | None, task: Task, option: str = "--model") -> Path:
    """The file a `--model` value (or that of `option`) names."""
    model = model or default_model(task)
    if model in BUNDLED:
        path = weights_dir() / BUNDLED[model][0]
        if not path.is_file():
            raise CheckpointError(f"{path}: the bundled model '{model}' is missing; reinstall diffgen or pass {option} PATH")
        return path
    if is_repo_id(model):  # `user/name[@revision]` that is not a local path
        return hub_model_file(*parse_repo(model))
    return find_model(model, also=f", a Hub repo id (user/name) or one of: {', '.join(BUNDLED)}")


def open_model(model: str | None, task: Task, device: str = "cpu") -> LoadedModel:
    """Load the model a `--model` value names; a model for another task is named as the user named it."""
    model = model or default_model(task)
    return load_model(resolve(model, task), task=task, device=device, name=model)


def bundled_models() -> list[tuple[str, Path]]:
    """The bundled models that are present, with their files."""
    return [(name, weights_dir() / file) for name, (file, _) in BUNDLED.items() if (weights_dir() / file).is_file()]
