"""A training run's folder: what it holds, and the one place that spells its layout.

    RUN_DIR/model.safetensors         the EMA model, a model file like any other (checkpoint.py)
    RUN_DIR/state.safetensors         what resuming needs (state.py)
    RUN_DIR/log.jsonl                 a line every --log-every steps
    RUN_DIR/samples/step_NNNNNN.png   a sample grid every --sample-every steps
    RUN_DIR/.lock                     held by the trainer writing the run

Here too: the run lock, the checks of --out, the log, and the one resolver from a run folder (or a
file) to its model file. Torch-free: `hub.py` and the CLI use it without loading the trainer.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from diffgen.config import TrainConfig
from diffgen.errors import CheckpointError, DiffgenError, OptionError
from diffgen.files import atomic_write, write_fix

MODEL = "model.safetensors"
STATE = "state.safetensors"
LOG = "log.jsonl"
SAMPLES = "samples"
LOCK = ".lock"  # empty, it only carries the lock
SAMPLE_NAME = re.compile(r"step_(\d+)\.png")


def model_file(run: Path) -> Path:
    return Path(run) / MODEL


def state_file(run: Path) -> Path:
    return Path(run) / STATE


def log_file(run: Path) -> Path:
    return Path(run) / LOG


def sample_file(run: Path, step: int) -> Path:
    return Path(run) / SAMPLES / f"step_{step:06d}.png"


def newest_sample(run: Path) -> Path | None:
    """The sample grid of the latest step in a run folder, if any."""
    steps = {int(m[1]): png for png in (Path(run) / SAMPLES).glob("step_*.png") if (m := SAMPLE_NAME.fullmatch(png.name))}
    return steps[max(steps)] if steps else None


def find_model(name: str, *, also: str = "") -> Path:
    """The model file `name` names: a .safetensors file, or the model of a run folder. `also` lists the other
    kinds of name the caller takes, for the message when there is no such file."""
    path = Path(name)
    path = model_file(path) if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"{name}: no such model file or run folder; pass a .safetensors file, a run folder{also}")
    return path


def resume_command(cfg: TrainConfig) -> str:
    return shlex.join(["diffgen", "train", str(cfg.data_dir), "--out", str(cfg.out_dir), "--resume"])


@contextmanager
def writing(path: Path, cfg: TrainConfig) -> Iterator[None]:
    """Turn a failed write of a run's file (full disk, lost permission) into one line with the fix; the file
    itself is written atomically, so the last complete one stays and no temporary file is left."""
    try:
        yield
    except OSError as e:
        raise DiffgenError(f"{path}: cannot write ({e.strerror}); {write_fix(e)}, then continue from the last checkpoint "
                           f"with: {resume_command(cfg)}") from None


@contextmanager
def run_lock(out: Path, *, held: bool = True) -> Iterator[None]:
    """An exclusive lock on the run folder for the whole run: a second trainer on it stops with an error.

    Without it, a run resumed while the interrupted one is still saving would load an older state and
    then both would write the folder. The OS drops the lock when the process dies, so none goes stale.
    Where there is no fcntl (Windows) runs go unlocked.
    """
    try:
        import fcntl  # noqa: PLC0415
    except ImportError:  # pragma: no cover - Windows
        held = False
    if not held:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OptionError(
                f"--out {out}: another diffgen train is writing to this run; wait until it has stopped "
                "(it saves first) or choose another --out"
            ) from None
        yield


def check_run_dir(out: Path, data_dir: Path, resume: bool) -> None:
    state = state_file(out)
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out}: is a file; choose a folder for the run")
    if resume and not state.exists():
        if out.is_dir() and any(out.iterdir()) and no_checkpoint_yet(out):
            raise OptionError(f"--resume: {out} has no checkpoint yet (its run stopped before the first save); "
                              "start it again without --resume")
        raise OptionError(f"--resume: {state} does not exist; start a new run without --resume")
    if not resume and out.exists() and not no_checkpoint_yet(out):
        raise OptionError(f"--out {out}: already holds a run; pass --resume to continue it or choose a new folder")
    if out.resolve().is_relative_to(data_dir.resolve()):
        raise OptionError(f"--out {out}: is inside the data folder {data_dir}; put the run somewhere else")
    check_writable(out)


def check_writable(out: Path) -> None:
    """Refuse an --out that cannot be written before any work: the nearest folder on its path that exists
    decides (a read-only disk, or another user's folder)."""
    folder = out.absolute()
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise OptionError(f"--out {out}: {folder} is a file, not a folder; choose another --out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OptionError(f"--out {out}: cannot write in {folder} (read-only, or no permission); "
                          "choose another --out or change the folder's permissions")


def is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")  # as files.atomic_write names them


def no_checkpoint_yet(out: Path) -> bool:
    """Whether `out` holds nothing but what a run stopped before its first checkpoint leaves: the lock, the
    log, sample grids and temporary files. Such a run starts again from step 0 without --resume."""
    early = {LOCK, LOG, SAMPLES}
    samples = out / SAMPLES
    return (all(p.name in early or is_temp(p) for p in out.iterdir())
            and (not samples.is_dir() or all(p.suffix == ".png" or is_temp(p) for p in samples.iterdir())))


def clear_leftovers(out: Path) -> bool:
    """Remove what a run stopped before its first checkpoint left, so a new run starts clean; whether any."""
    found = [p for p in [out / LOG, *out.glob(".*.tmp"), *(out / SAMPLES).glob("*")] if p.is_file()]
    for path in found:
        path.unlink()
    return bool(found)


def append_log(path: Path, record: dict, cfg: TrainConfig) -> None:
    with writing(path, cfg), open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from, so steps never repeat, and lines torn
    by a full disk or a crash mid-append, so the log stays readable."""
    if not path.exists():
        return
    keep = [line for line in path.read_text(errors="replace").splitlines() if log_step(line) <= step]
    atomic_write(path, "".join(line + "\n" for line in keep).encode())


def log_step(line: str) -> float:
    """The step of a log line; infinity for a torn or foreign one, which `truncate_log` drops."""
    try:
        record = json.loads(line)
        return float(record["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf
