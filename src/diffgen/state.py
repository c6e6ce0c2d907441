"""The resumable training state: one safetensors file, written atomically.

Tensors: model and EMA weights, AdamW moments, the global torch RNG (dropout).
Metadata (JSON): step, optimizer hyper-parameters, model spec, train config. The data order and the
noise of every batch are functions of the seed and the step (see `data.py`), so the step is enough.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save as st_save

from diffgen.checkpoint import ModelSpec, open_safetensors, read_safetensors
from diffgen.config import TrainConfig, config_from_json, config_to_json
from diffgen.errors import CheckpointError
from diffgen.files import atomic_write

FORMAT = "diffgen-state"
FORMAT_VERSION = 1


def save_state(path: Path, model, ema, opt, spec: ModelSpec, cfg: TrainConfig, step: int) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
    opt_state = opt.state_dict()
    for i, s in opt_state["state"].items():
        tensors |= {f"opt.{i}.{k}": torch.as_tensor(v) for k, v in s.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    groups = [{k: v for k, v in grp.items()} for grp in opt_state["param_groups"]]
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "step": str(step),
        "opt_groups": json.dumps(groups),
        "spec": spec.to_json(),
        "config": config_to_json(cfg),
    }
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(Path(path), st_save(cpu, metadata=metadata))


def read_state(path: Path) -> tuple[dict, dict]:
    """A training state's tensors and metadata; its spec and config are checked (`load_config`, `saved_spec`)."""
    tensors, meta = read_safetensors(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a diffgen training state; start a new run without --resume")
    with damaged_state(path):
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(f"{path}: written by a newer diffgen; upgrade diffgen to resume it")
        int(meta["step"]), saved_spec(meta), config_from_json(meta["config"])
    return tensors, meta


@contextmanager
def damaged_state(path: Path) -> Iterator[None]:
    """Turn what a damaged state's metadata raises into one line that names it."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: the training state is damaged ({type(e).__name__}: {e}); start a new run "
                              "without --resume, or in another --out") from None


def state_header(path: Path) -> dict[str, str]:
    with open_safetensors(path) as f:
        return f.metadata() or {}


def state_spec(path: Path) -> ModelSpec:
    """The spec of the network a run's state holds, from its header alone."""
    meta = state_header(path)
    with damaged_state(path):
        return saved_spec(meta)


def state_config(path: Path) -> TrainConfig:
    """The train config of a run's state, from its header alone."""
    meta = state_header(path)
    with damaged_state(path):
        return config_from_json(meta["config"])


def saved_spec(meta: dict) -> ModelSpec:
    """The spec of the network a state holds (from `read_state`'s metadata): resuming builds this one."""
    return ModelSpec.from_json(meta["spec"])


def restore_state(state: tuple[dict, dict], model, ema, opt) -> int:
    """Restore everything `save_state` wrote (as `read_state` returns it) into a network built from
    `saved_spec`; returns the step."""
    tensors, meta = state
    take = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    device = next(model.parameters()).device
    model.load_state_dict(take("model."))
    ema.load_state_dict(take("ema."))
    opt_state: dict[int, dict] = {}
    for k, v in take("opt.").items():
        i, name = k.split(".", 1)
        opt_state.setdefault(int(i), {})[name] = v if name == "step" else v.to(device)
    opt.load_state_dict({"state": opt_state, "param_groups": json.loads(meta["opt_groups"])})
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["step"])


def load_config(path: Path) -> TrainConfig:
    """The train config a run was started with, from its state file."""
    _, meta = read_state(path)
    return config_from_json(meta["config"])
