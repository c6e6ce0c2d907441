"""The Hugging Face Hub: models by repo id, exporting and pushing them, and saying what a model file is.

`--model user/name[@revision]` fetches the repo's `model.safetensors` with huggingface_hub, through its
cache (`HF_HOME`, `HF_HUB_CACHE`) and honouring `HF_HUB_OFFLINE=1`; a local path of the same name wins.
`export_run` turns a run folder or model file into a folder ready for `hf upload`: the model file byte
for byte, `config.json`, a model card (`README.md`) and the newest sample grid. `describe` (for
`diffgen info`) and `model_identity` (for the text stored in generated PNGs) say where a file came from.

huggingface_hub is imported inside the functions that talk to the Hub: it adds half a second to every
start-up, and most runs never need it.
"""

from __future__ import annotations

import errno
import glob
import importlib
import json
import os
import re
import shlex
import shutil
import socket
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from diffgen.checkpoint import ModelSpec, Task, read_header
from diffgen.errors import CheckpointError, DiffgenError, OptionError
from diffgen.files import atomic_write, fsync_dir, umask, write_fix
from diffgen.runs import MODEL, find_model, newest_sample

# A user or repo name as the Hub allows it: letters, digits, `_`, `-` and `.`, starting and ending with
# a letter, digit or `_`, with no `--` or `..` (the cache uses `--` to join user and name).
NAME = re.compile(r"(?!.*(--|\.\.))[A-Za-z0-9_]([A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")
COLOURS = {1: "greyscale", 3: "RGB", 4: "RGBA"}
SHORT_COLOURS = {1: "grey", 3: "RGB", 4: "RGBA"}


def is_repo_id(text: str) -> bool:
    """Whether a `--model` value names a Hub repo: `user/name[@revision]`, and not a local path.

    `runs/digts` is a typo in a local run folder, not a repo, when the folder `runs` exists here:
    treating it as a repo would make the user wait for the network to say no.
    """
    return looks_like_repo_id(text) and not Path(text).exists() and not Path(text.split("/")[0]).is_dir()


def looks_like_repo_id(text: str) -> bool:
    repo, at, revision = text.partition("@")
    parts = repo.split("/")
    return (
        len(parts) == 2
        and all(NAME.fullmatch(part) for part in parts)
        and not repo.endswith((".safetensors", ".git"))  # a mistyped file path, not a repo
        and (revision.strip() != "" or not at)
    )


def parse_repo(text: str) -> tuple[str, str | None]:
    """`user/name@revision` -> ("user/name", "revision"); the revision is None when not given."""
    if not looks_like_repo_id(text):
        raise OptionError(f"{text}: not a Hub repo id; write it as user/name or user/name@revision")
    repo_id, _, revision = text.partition("@")
    return repo_id, revision or None


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as it is set now (huggingface_hub reads it once, when imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's endpoint opens within `timeout` seconds.

    Without it, huggingface_hub retries a dead connection for about 25 s, logging every attempt. Behind a
    proxy a direct connection says nothing, so then the answer is yes and the library finds out itself.
    """
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError:
        return False
    return True


def hub_cache() -> Path | None:
    """The Hub cache the environment names now, in huggingface_hub's order; None leaves it to the library."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    return Path(os.environ["HF_HOME"]).expanduser() / "hub" if os.environ.get("HF_HOME") else None


def hub_model_file(repo_id: str, revision: str | None = None) -> Path:
    """The local path of a repo's model.safetensors: found in the Hub cache, or downloaded into it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, HfHubHTTPError

    from diffgen import __version__

    unreachable = not hub_offline() and not hub_reachable()
    try:
        # Unreachable is treated like offline: the cache still answers, at once and without retries.
        path = hf_hub_download(
            repo_id, MODEL, revision=revision, cache_dir=hub_cache(),
            local_files_only=hub_offline() or unreachable, library_name="diffgen", library_version=__version__,
        )
    except (EntryNotFoundError, HfHubHTTPError, *connection_errors()) as e:
        raise download_error(e, repo_id, revision) from None
    except (OSError, UnicodeDecodeError) as e:
        raise cache_error(e, repo_id) from None
    return Path(path)


def cache_error(e: OSError | UnicodeDecodeError, repo_id: str) -> CheckpointError:
    """What a failed read or write of the Hub cache means: a full or read-only cache, or a damaged one."""
    from huggingface_hub import constants

    folder = (hub_cache() or Path(constants.HF_HUB_CACHE)) / ("models--" + repo_id.replace("/", "--"))
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointError(f"{repo_id}: no space left in the Hugging Face cache ({folder.parent}); free some "
                               "space or point HF_HOME at a bigger disk")
    if getattr(e, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CheckpointError(f"{repo_id}: cannot write the Hugging Face cache ({folder.parent}: "
                               f"{e.strerror}); check its permissions or point HF_HOME elsewhere")
    return CheckpointError(f"{repo_id}: its entry in the Hugging Face cache is damaged ({first_line(e)}); "
                           f"delete {folder} and run again to download it afresh")


def download_error(e: Exception, repo_id: str, revision: str | None) -> CheckpointError:
    """Why a download failed, and what to do about it."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = f"{repo_id}@{revision}" if revision else repo_id
    download = "`" + shlex.join(["hf", "download", repo_id, MODEL] + (["--revision", revision] if revision else [])) + "`"
    if isinstance(e, LocalEntryNotFoundError):
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hub cannot be reached"
        return CheckpointError(
            f"{name}: no such local path, and not in the Hugging Face cache while {why}; "
            f"run once online, or download it with {download}"
        )
    if isinstance(e, RepositoryNotFoundError):
        return CheckpointError(
            f"{name}: no such local path, and no such model repo on the Hub; check the name "
            "(a private repo needs `hf auth login`)"
        )
    if isinstance(e, RevisionNotFoundError):
        return CheckpointError(f"{name}: the repo has no revision '{revision}'; pass a branch, tag or commit it has")
    if isinstance(e, EntryNotFoundError):
        return CheckpointError(f"{name}: the repo has no {MODEL}, so it is not a diffgen model")
    return CheckpointError(f"{name}: download failed ({first_line(e)}); check your connection and try again")


def connection_errors() -> tuple[type[BaseException], ...]:
    """What a failed connection raises: the HTTP client, and so its errors, depend on huggingface_hub's version."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]  # OfflineModeIsEnabled is a ConnectionError
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def read_model_file(path: Path) -> tuple[ModelSpec, dict[str, str], int]:
    """A model file's spec, metadata and parameter count, checked, without reading the weights."""
    return read_header(path)


EXPORT_FILES = ("config.json", MODEL, "sample_grid.png", "README.md")  # in the order they are put in place
PARTIAL = ".diffgen-export"  # suffix of the hidden folder an export is built in
STALE_BUILD_S = 600  # a build folder this old is from a killed export, not one still running


def export_run(run_or_model: Path, out_dir: Path, *, repo_id: str | None = None, license: str = "mit") -> Path:
    """Write a folder ready for `hf upload`: the model file (byte for byte), config.json, README.md, samples.

    `repo_id` is the repo the folder is meant for, used in the card's commands (default: a USER/NAME
    placeholder). The files are built in a hidden folder beside `out_dir`, then renamed into place: the
    folder itself when it is new, else file by file with the card last, so a kill or a full disk never
    leaves what looks like a finished export. Refuses a folder that is not empty, unless it is what an
    interrupted export left (a diffgen config.json and export files, without the card).
    """
    source, out_dir = find_model(run_or_model), Path(out_dir)
    spec, metadata, params = read_model_file(source)
    check_export_folder(out_dir)
    place = Path(os.path.abspath(out_dir))  # "." has a name and a parent too
    try:
        place.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_builds(place)
        tmp = Path(tempfile.mkdtemp(prefix=f".{place.name}.", suffix=PARTIAL, dir=place.parent))
        try:
            os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes a private folder; the export is an ordinary one
            write_export(tmp, source, run_or_model, spec, metadata, params, repo_id=repo_id, license=license)
            if place.is_dir():
                move_into(tmp, place)  # the folder stays: its permissions, and a shell that is in it
            else:
                os.replace(tmp, place)
            fsync_dir(place.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        raise DiffgenError(f"{out_dir}: cannot write the export ({e.strerror or e}); {write_fix(e)}, then run it "
                           "again") from None
    return out_dir


def check_export_folder(out_dir: Path) -> None:
    """Refuse an export folder holding anything but what an interrupted export left."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    if out_dir.is_dir() and is_half_export(out_dir):
        return
    raise OptionError(f"{out_dir}: not an empty folder; export into a new or empty one")


def is_half_export(folder: Path) -> bool:
    """Export files without the card, config.json (put in place first) saying it is diffgen's: a user's own
    config.json is never taken for one."""
    names = {p.name for p in folder.iterdir()}
    if "config.json" not in names or not names <= set(EXPORT_FILES[:-1]):
        return False
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("format") == "diffgen"
    except (OSError, ValueError, AttributeError):
        return False


def move_into(built: Path, folder: Path) -> None:
    """Put an export built in `built` into the existing `folder`, the card last; what an interrupted export
    left there and this one lacks is removed first."""
    for stale in set(EXPORT_FILES) - {p.name for p in built.iterdir()}:
        (folder / stale).unlink(missing_ok=True)
    for name in EXPORT_FILES:
        if (built / name).exists():
            os.replace(built / name, folder / name)
    fsync_dir(folder)


def remove_stale_builds(place: Path) -> None:
    """Remove build folders that killed exports to `place` left; a running export's is younger."""
    for left in place.parent.glob(f".{glob.escape(place.name)}.*{PARTIAL}"):
        try:
            if time.time() - left.stat().st_mtime > STALE_BUILD_S:
                shutil.rmtree(left, ignore_errors=True)
        except OSError:
            pass


def write_export(folder: Path, source: Path, run_or_model: Path, spec: ModelSpec, metadata: dict[str, str],
                 params: int, *, repo_id: str | None, license: str) -> None:
    """The export's files, each flushed to disk."""
    copy_durably(source, folder / MODEL)
    config = {"format": metadata["format"], "format_version": int(metadata["format_version"]),
              "diffgen_version": metadata.get("diffgen_version"), "spec": json.loads(spec.to_json())}
    atomic_write(folder / "config.json", (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    grid = newest_sample(run_or_model)
    if grid is not None:
        copy_durably(grid, folder / "sample_grid.png")
    card = model_card(spec, params, repo_id or "USER/NAME", license=license, grid=grid)
    atomic_write(folder / "README.md", card.encode("utf-8"))


def copy_durably(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    with open(target, "rb+") as f:
        os.fsync(f.fileno())


def card_metadata(spec: ModelSpec, license: str) -> str:
    """The model card's YAML front matter, which the Hub reads for its search filters and widgets."""
    from huggingface_hub import ModelCardData

    if spec.task is Task.UPSCALE:
        pipeline, kind = "image-to-image", "super-resolution"
    else:
        pipeline = "unconditional-image-generation"
        kind = "class-conditional" if spec.class_names else pipeline
    tags = ["diffgen", "diffusion", kind]
    data = ModelCardData(library_name="diffgen", license=license, pipeline_tag=pipeline, tags=tags)
    return f"---\n{data.to_yaml()}\n---\n"


def model_card(spec: ModelSpec, params: int, repo_id: str, *, license: str, grid: Path | None) -> str:
    """README.md for the Hub: what the model does, how it was trained, samples, and how to use it."""
    lines = [card_metadata(spec, license), f"# {repo_id}", "", summary(spec), "", "| | |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in facts(spec, params).items()]
    lines += training_lines(spec.extra) + metrics_lines(spec.extra.get("metrics"))
    if grid is not None:
        lines += ["", "## Samples", "", f"![Samples after {int(grid.stem[5:])} training steps](sample_grid.png)"]
    lines += ["", "## Usage", "", "With diffgen installed:", "", "```sh", usage(spec, repo_id), "```", ""]
    return "\n".join(lines)


def training_lines(extra: dict) -> list[str]:
    """The card's training section, from the provenance `diffgen train` stores in the spec."""
    if not (extra.get("data") or extra.get("command")):
        return []
    lines = ["", "## Training"]
    if extra.get("data"):
        count = f" ({extra['images']} images)" if "images" in extra else ""
        lines += ["", f"Data: `{extra['data']}`{count}."]
    if extra.get("command"):
        lines += ["", "Command:", "", "```sh", str(extra["command"]), "```"]
    return lines


def metrics_lines(metrics) -> list[str]:
    """The card's metrics section: a table of a dict of metrics, or the text as it is."""
    if not metrics:
        return []
    if not isinstance(metrics, dict):
        return ["", "## Metrics", "", str(metrics)]
    rows = [f"| {name} | {value} |" for name, value in metrics.items()]
    return ["", "## Metrics", "", "| metric | value |", "| --- | --- |", *rows]


def summary(spec: ModelSpec) -> str:
    colour = COLOURS.get(spec.channels, f"{spec.channels}-channel")
    if spec.task is Task.UPSCALE:
        return (f"A diffgen diffusion model that upscales {colour} images "
                f"x{spec.scale} (super-resolution), trained on {spec.image_size}×{spec.image_size} crops.")
    of = f" of {len(spec.class_names)} classes" if spec.class_names else ""
    return f"A diffgen diffusion model that generates {spec.image_size}×{spec.image_size} {colour} images{of}."


def image_kind(spec: ModelSpec) -> str:
    """What images a model makes, in a few words: "28×28 grey"; an upscaler takes any size."""
    colour = SHORT_COLOURS.get(spec.channels, f"{spec.channels}-channel")
    return f"any size, {colour}" if spec.task is Task.UPSCALE else f"{spec.image_size}×{spec.image_size} {colour}"


def facts(spec: ModelSpec, params: int) -> dict[str, str]:
    """The card's table: what a user needs to know to pick the model."""
    task = f"upscale x{spec.scale}" if spec.task is Task.UPSCALE else "generate"
    channels = f"{spec.channels} channel" + ("s" if spec.channels > 1 else "")
    colour = f"{COLOURS[spec.channels]} ({channels})" if spec.channels in COLOURS else channels
    table = {"task": task, "image size": f"{spec.image_size}×{spec.image_size}, {colour}"}
    if spec.class_names:
        table["classes"] = ", ".join(f"`{name}`" for name in spec.class_names)
    table["parameters"] = f"{params:,}"
    table["training steps"] = f"{spec.train_steps:,}"
    table["diffusion"] = f"{spec.schedule.value} schedule, {spec.num_timesteps} steps, predicts {spec.prediction.value}"
    return table


def usage(spec: ModelSpec, model: str) -> str:
    """The command that uses the model named `model` (a --model value)."""
    model = shlex.quote(model)
    if spec.task is Task.UPSCALE:
        return f"diffgen upscale photo.png --model {model}"
    one_class = f" --class {shlex.quote(spec.class_names[0])}" if spec.class_names else ""
    return f"diffgen generate --model {model} --n 16{one_class} --out generated/"


def push(
    run_or_model: Path, repo_id: str, *, token: str | None = None, private: bool = False, license: str = "mit"
) -> str:
    """Export a run or model file and upload it to a Hub model repo, made if need be; returns the repo's URL."""
    repo_id, revision = parse_repo(repo_id)
    if revision:
        raise OptionError(f"{repo_id}@{revision}: push to a repo id without @revision")
    if hub_offline():
        raise DiffgenError(f"{repo_id}: cannot push while HF_HUB_OFFLINE is set; unset it and try again")
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError, LocalTokenNotFoundError

    with tempfile.TemporaryDirectory(prefix="diffgen-push-") as tmp:
        folder = export_run(run_or_model, Path(tmp) / "export", repo_id=repo_id, license=license)
        api = HfApi(token=token)
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload diffgen model")
        except LocalTokenNotFoundError:
            raise DiffgenError(f"{repo_id}: not logged in to the Hub; run `hf auth login` or pass a token") from None
        except HfHubHTTPError as e:
            fix = "check the repo name and that your token may write to it"
            raise DiffgenError(f"{repo_id}: the Hub refused the upload ({first_line(e)}); {fix}") from None
        except connection_errors() as e:
            fix = "check your connection and try again"
            raise DiffgenError(f"{repo_id}: cannot reach the Hugging Face Hub ({first_line(e)}); {fix}") from None
    return str(url)
