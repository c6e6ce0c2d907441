"""Where a model came from and what it is: the record `diffgen info` shows and images carry.

A model file is bundled with diffgen (by name), from the Hugging Face Hub cache (repo id, revision,
commit) or any other file (name and sha256). `describe` gathers that with the model's spec and
training provenance; `overview` turns it into `diffgen info`'s rows.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

from diffgen import diffusers_models, models  # models by module: tests point models.weights_dir elsewhere
from diffgen.checkpoint import LoadedModel, ModelSpec
from diffgen.diffusers_models import spec as diffusers_spec
from diffgen.hub import COLOURS, read_model_file, summary, usage
from diffgen.runs import find_model


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bundled_name(path: Path) -> str | None:
    """The name of a bundled model, if `path` is one."""
    for name, (file, _) in models.BUNDLED.items():
        if Path(path).resolve() == (models.weights_dir() / file).resolve():
            return name
    return None


def hub_origin(path: Path) -> dict[str, str] | None:
    """Repo id, revision and commit of a file in the Hub cache: .../models--user--name/snapshots/<commit>/FILE."""
    parts = Path(path).absolute().parts
    for i, part in enumerate(parts[:-3]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            repo_dir, commit = Path(*parts[: i + 1]), parts[i + 2]
            repo_id = part.removeprefix("models--").replace("--", "/")
            return {"model": repo_id, "revision": ref_name(repo_dir, commit), "commit": commit}
    return None


def ref_name(repo_dir: Path, commit: str) -> str:
    """The branch or tag that points at `commit` in the cache (main first), or the commit itself."""
    refs = repo_dir / "refs"
    names = sorted(str(f.relative_to(refs)) for f in refs.rglob("*") if f.is_file() and read_ref(f) == commit)
    return "main" if "main" in names else (names[0] if names else commit)


def read_ref(path: Path) -> str | None:
    """The commit a ref file in the Hub cache names; None if it cannot be read (a damaged ref names nothing)."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def model_identity(path: Path) -> dict[str, str]:
    """What to record about a model in a PNG: bundled name; repo id, revision and commit; or file name and sha256."""
    source = origin(path)
    if source.pop("source") == "file":
        return {"model": Path(path).name, "sha256": file_sha256(path)[:12]}
    return source


def model_arg(origin: dict[str, str]) -> str:
    """The --model value that names a model again."""
    revision = origin.get("revision", "main")
    return origin["model"] if revision == "main" else f"{origin['model']}@{revision}"


def origin(path: Path) -> dict[str, str]:
    """Where a model file came from: a bundled name, a Hub repo (revision, commit), or a file path."""
    if name := bundled_name(path):
        return {"source": "bundled", "model": name}
    hub = hub_origin(path)
    return {"source": "hub", **hub} if hub else {"source": "file", "model": str(path)}


def describe(path_or_loaded: Path | LoadedModel) -> dict:
    """What `diffgen info` shows: what a model does, how it was made, where it came from, how to use it.

    Takes a model file, a run folder, a diffusers pipeline or a loaded model.
    """
    path = path_or_loaded.path if isinstance(path_or_loaded, LoadedModel) else path_or_loaded
    if diffusers_models.pipeline_root(path) is not None:
        return describe_pipeline(path)
    path = find_model(path)
    spec, metadata, params = read_model_file(path)
    source = origin(path)
    shown = ("data", "command", "metrics")
    more = {key: value for key, value in spec.extra.items() if key not in shown}  # e.g. init_from, averaged
    return {
        **source, "path": str(path), "size_bytes": path.stat().st_size, "sha256": file_sha256(path),
        "task": spec.task.value, "scale": spec.scale, "image_size": spec.image_size, "channels": spec.channels,
        "classes": list(spec.class_names), "parameters": params, "train_steps": spec.train_steps,
        "data": spec.extra.get("data"), "train_command": spec.extra.get("command"), "provenance": more or None,
        "metrics": spec.extra.get("metrics"), "diffgen_version": metadata.get("diffgen_version"),
        "config": {"schedule": spec.schedule.value, "num_timesteps": spec.num_timesteps,
                   "prediction": spec.prediction.value, "unet": spec.unet.to_dict()},
        "guidance": guidance_text(spec),
        "usage": usage(spec, model_arg(source)), "summary": summary(spec),
    }


def guidance_text(spec: ModelSpec) -> str | None:
    """How `generate` guides this model unless told otherwise; None when it does not."""
    if not spec.guidance:
        return None
    where = ("at noise levels σ from {:g} to {:g}".format(*spec.guidance_interval) if spec.guidance_interval
             else "at every noise level")
    return f"w = {spec.guidance:g} {where} by default (--guidance, --guidance-interval)"


def overview(info: dict) -> list[tuple[str, str]]:
    """`diffgen info`'s summary of `describe`'s record: what the model does, how to use it, where it came
    from and how it was trained."""
    if info.get("kind") == "diffusers":
        return pipeline_overview(info)
    config = info["config"]
    rows = [("what it does", info["summary"])]
    if info["classes"]:
        rows.append(("classes", ", ".join(info["classes"])))
    rows += [
        ("use it", info["usage"]),
        ("source", source_text(info)),
        ("file", f"{info['path']} ({info['size_bytes'] / 1e6:.1f} MB, sha256 {info['sha256'][:12]})"),
        ("network", f"{info['parameters'] / 1e6:.2f} M parameters; {config['schedule']} schedule of "
                    f"{config['num_timesteps']} steps, predicts {config['prediction']}"),
        ("training", training_text(info)),
    ]
    if info.get("guidance"):
        rows.append(("guidance", info["guidance"]))
    provenance = dict(info["provenance"] or {})
    provenance.pop("images", None)  # shown in the training row
    if info["train_command"]:
        command = info["train_command"]
        rows.append(("command", shlex.join(map(str, command)) if isinstance(command, list) else str(command)))
    if "init_from" in provenance:
        steps = provenance.pop("init_steps", None)
        rows.append(("fine-tuned from", str(provenance.pop("init_from")) + (f" ({number(steps)} steps)" if steps else "")))
    rows += [(str(key), value if isinstance(value, str) else json.dumps(value)) for key, value in provenance.items()]
    if info["metrics"]:
        metrics = info["metrics"]
        text = ", ".join(f"{k} {v}" for k, v in metrics.items()) if isinstance(metrics, dict) else json.dumps(metrics)
        rows.append(("metrics", text))
    rows.append(("made with", f"diffgen {info['diffgen_version'] or '(version unknown)'}"))
    return rows


def source_text(info: dict) -> str:
    if info["source"] == "bundled":
        return f"bundled with diffgen, as {info['model']}"
    if info["source"] == "hub":
        return f"Hugging Face Hub: {info['model']}, revision {info['revision']}, commit {info['commit'][:12]}"
    return "a local file"


def training_text(info: dict) -> str:
    """'7,783 steps on data/digits (5,000 images)'."""
    text = f"{number(info['train_steps'])} steps"
    if info["data"]:
        text += f" on {info['data']}"
    images = (info["provenance"] or {}).get("images")
    return text + (f" ({number(images)} images)" if images is not None else "")


def number(value) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def describe_pipeline(path: Path) -> dict:
    """`diffgen info`'s record of a pipeline: what it makes, its network and schedule, where it came from."""
    root = diffusers_models.pipeline_root(path)
    weights = diffusers_models.weights_of(root)
    spec = diffusers_spec.pipeline_spec(root)
    source = origin(weights)
    if source["source"] == "file":
        source["model"] = str(root)  # the folder is what --model takes
    info = spec.extra["diffusers"]
    unet = info["unet"]
    model = model_arg(source) if source["source"] == "hub" else str(root)
    colour = COLOURS.get(spec.channels, f"{spec.channels}-channel")
    return {
        "kind": "diffusers", **source, "path": str(root), "weights": str(weights),
        "size_bytes": weights.stat().st_size, "sha256": file_sha256(weights),
        "task": spec.task.value, "image_size": spec.image_size, "channels": spec.channels, "classes": [],
        "parameters": diffusers_spec.parameter_count(weights), "pipeline": info["pipeline"], "scheduler": info["scheduler"],
        "diffusers_version": info["version"],
        "config": {"beta_schedule": spec.beta_schedule, **linear_range(spec),
                   "num_timesteps": spec.num_timesteps, "prediction": spec.prediction.value,
                   "prediction_type": info["prediction_type"], "unet": unet},
        "usage": usage(spec, model),
        "summary": f"A diffusers {info['pipeline']} (UNet2DModel) that generates {spec.image_size}×{spec.image_size} "
                   f"{colour} images, unconditionally.",
    }


def linear_range(spec: diffusers_spec.DiffusersSpec) -> dict:
    """beta_start and beta_end where the schedule has them (the linear ones)."""
    linear = spec.beta_schedule in ("linear", "scaled_linear")
    return {"beta_start": spec.beta_start, "beta_end": spec.beta_end} if linear else {}


def pipeline_overview(info: dict) -> list[tuple[str, str]]:
    """`diffgen info`'s summary of `describe`'s record."""
    config, unet = info["config"], info["config"]["unet"]
    betas = f", β {config['beta_start']:g} to {config['beta_end']:g}" if "beta_start" in config else ""
    source = source_text(info) if info["source"] == "hub" else "a local folder"
    widths = "-".join(map(str, unet["block_out_channels"]))
    return [
        ("what it does", info["summary"]),
        ("use it", info["usage"]),
        ("source", source),
        ("file", f"{info['weights']} ({info['size_bytes'] / 1e6:.1f} MB, sha256 {info['sha256'][:12]})"),
        ("network", f"{info['parameters'] / 1e6:.2f} M parameters; UNet2DModel of {widths} channels"),
        ("schedule", f"{config['beta_schedule']} β schedule of {config['num_timesteps']} steps{betas}, predicts "
                     f"{config['prediction_type']} ({config['prediction']}); sampled with diffgen's samplers, "
                     f"not the pipeline's {info['scheduler']}"),
        ("made with", f"diffusers {info['diffusers_version'] or '(version unknown)'}"),
    ]
