"""Which files an upscale reads and writes, planned before any work: inputs from files, folders and glob
patterns; each output beside its input, or under --out with the input folders mirrored; two inputs that would
write one file, or an output that would replace an input, refused."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from diffgen.errors import OptionError
from diffgen.images import IMAGE_SUFFIXES, SUFFIX_OF, WRITABLE, format_of
from diffgen.text import count_of
from diffgen.video import CONTAINERS, VIDEO_SUFFIXES, is_partial, is_video, output_name

SCANNED = IMAGE_SUFFIXES | VIDEO_SUFFIXES  # what a folder or pattern input takes


@dataclass(frozen=True)
class Source:
    path: Path  # an image file
    folder: Path  # where it lies below the folder (or pattern) it was found in: mirrored under --out


def collect_inputs(inputs: list[str], *, recursive: bool, suffix: str) -> list[Source]:
    """Expand files, folders and glob patterns into image and video files, in order, without duplicates. Folders and
    patterns leave out earlier outputs (names ending in `suffix`), so a rerun does not upscale them again."""
    found: dict[Path, Source] = {}
    is_output = lambda p: (bool(suffix) and p.stem.endswith(suffix)) or is_partial(p)
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(
                p for p in path.glob(pattern)
                if p.is_file() and p.suffix.lower() in SCANNED and not is_output(p)
            )
            sources = [Source(p, p.parent.relative_to(path)) for p in files]
        elif path.exists() or not glob.has_magic(item):
            sources = [Source(path, Path())]  # a missing file is reported when it is opened
        else:
            matches = sorted(p for p in map(Path, glob.glob(item, recursive=recursive)) if p.is_file() and not is_output(p))
            if not matches:
                raise OptionError(f"{item}: no files match this pattern")
            root = pattern_root(item)
            sources = [Source(p, p.parent.relative_to(root)) for p in matches]
        for source in sources:
            found.setdefault(source.path, source)
    return list(found.values())


def pattern_root(pattern: str) -> Path:
    """The folder a glob pattern starts from: its parts before the first one with a wildcard."""
    parts = Path(pattern).parts
    literal = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return Path(*parts[:literal]) if literal else Path()


def out_is_file(out: Path | None) -> bool:
    """--out names one file when it has an image or video suffix and is no existing folder ("v1.2" is a folder)."""
    return out is not None and out.suffix.lower() in IMAGE_SUFFIXES | CONTAINERS.keys() and not out.is_dir()


def out_is_video(out: Path | None) -> bool:
    return out is not None and out.suffix.lower() in CONTAINERS and not out.is_dir()


def output_format(out: Path | None, fmt: str | None) -> str:
    """Pillow's format of the outputs: an --out file's suffix sets it, else --format, else PNG."""
    asked = format_of(fmt) if fmt else None
    if not out_is_file(out):
        return asked or "PNG"
    own = format_of(out.suffix)
    if own is None:
        raise OptionError(f"--out {out}: diffgen cannot write {out.suffix} files; use {WRITABLE}")
    if asked and asked != own:
        raise OptionError(f"--out {out} and --format {fmt} disagree; leave out --format (the suffix sets the "
                          "format) or change the suffix")
    return own


def plan_outputs(sources: list[Source], out: Path | None, *, suffix: str, fmt: str | None = None) -> list[tuple[Path, Path]]:
    """(input, output) pairs: beside each input, mirrored under an --out folder, or the one --out file.

    Refuses, before any work, two inputs that would write one output and an output that would replace its input.
    """
    videos = {s.path for s in sources if is_video(s.path)}
    fmt = output_format(None if out_is_video(out) else out, fmt)
    if out_is_video(out) and len(sources) == 1 and not videos:
        raise OptionError(f"--out {out}: a video name, for the image {sources[0].path}; give an image name or a folder")
    if out_is_file(out):
        if len(sources) > 1:
            raise OptionError(f"--out {out}: names one file, for {count_of(len(sources), 'image')}; give a folder "
                              "(a name without an image suffix)")
        plan = [(s.path, out) for s in sources]
    else:
        names = [output_name(s.path, suffix) if s.path in videos else f"{s.path.stem}{suffix}.{SUFFIX_OF[fmt]}"
                 for s in sources]
        plan = [(s.path, (s.path.parent if out is None else out / s.folder) / name) for s, name in zip(sources, names)]
    check_distinct(plan)
    return plan


def check_distinct(plan: list[tuple[Path, Path]]) -> None:
    inputs = {src.resolve(): src for src, _ in plan}
    written_by: dict[Path, Path] = {}
    for src, dst in plan:
        key = dst.resolve()
        if key == src.resolve():
            raise OptionError(f"{src}: its output would replace its own input; pass another --suffix or --out")
        if key in inputs:
            raise OptionError(f"{src}: its output {dst} would replace the input {inputs[key]}; pass another --suffix "
                              "or --out")
        if key in written_by:
            raise OptionError(f"{written_by[key]} and {src} would both be written to {dst}; rename one, or "
                              "upscale them into different --out folders")
        written_by[key] = src
