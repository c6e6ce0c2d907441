"""Split a training state into files small enough for git, and join them back with every tensor and
all metadata as they were.

A run's `state.safetensors` holds four copies of the weights (live, EMA and AdamW's two moments): for
the 1.8 M-parameter upscaler that is 28 MB, over this repository's 20 MiB limit for one file. Split it
to commit it; join it to continue the run exactly where it stopped:

    python tools/state_parts.py split runs/sr/state.safetensors checkpoints/sr
    python tools/state_parts.py join checkpoints/sr runs/sr/state.safetensors
    diffgen train data/photos-ms --out runs/sr --resume

Each part (`state-K-of-N.safetensors`) holds whole tensors and all of the state's metadata; joining
checks that the N parts are there and come from one state.
"""

import argparse
import re
import sys
from pathlib import Path

from safetensors.torch import save as st_save

from diffgen.checkpoint import read_safetensors
from diffgen.errors import DiffgenError
from diffgen.files import atomic_write

PART = re.compile(r"state-(\d+)-of-(\d+)\.safetensors")


def split(state: Path, out_dir: Path, max_bytes: int) -> list[Path]:
    tensors, meta = read_safetensors(state)
    parts: list[dict] = []
    for name in sorted(tensors, key=lambda n: -tensors[n].nbytes):  # first fit, biggest first: few parts
        tensor = tensors[name]
        if tensor.nbytes > max_bytes:
            raise DiffgenError(f"{state}: tensor {name} alone is {tensor.nbytes / 2**20:.1f} MiB; raise --max-mib")
        part = next((p for p in parts if sum(t.nbytes for t in p.values()) + tensor.nbytes <= max_bytes), None)
        if part is None:
            part = {}
            parts.append(part)
        part[name] = tensor
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"state-{k}-of-{len(parts)}.safetensors" for k in range(1, len(parts) + 1)]
    for k, (path, part) in enumerate(zip(paths, parts), 1):
        atomic_write(path, st_save(part, metadata=meta | {"part": f"{k}/{len(parts)}"}))
    for old in set(out_dir.glob("state-*-of-*.safetensors")) - set(paths):  # an earlier split into more parts
        old.unlink()
    return paths


def join(parts_dir: Path, state: Path) -> None:
    found = sorted((int(m[1]), int(m[2]), p) for p in parts_dir.iterdir() if (m := PART.fullmatch(p.name)))
    count = found[-1][1] if found else 0
    if [(k, n) for k, n, _ in found] != [(k, count) for k in range(1, count + 1)]:
        raise DiffgenError(f"{parts_dir}: needs state-1-of-N ... state-N-of-N.safetensors, from one split; "
                           f"found {[p.name for _, _, p in found] or 'none'}")
    tensors, meta = {}, None
    for _, _, path in found:
        part, part_meta = read_safetensors(path)
        part_meta.pop("part", None)
        if meta is not None and part_meta != meta:
            raise DiffgenError(f"{path}: from another state than part 1 (another step or run); split it again")
        meta = part_meta
        tensors |= part
    state.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(state, st_save(tensors, metadata=meta), overwrite=False)
    except FileExistsError:
        raise DiffgenError(f"{state} exists (perhaps a newer state); remove it or join elsewhere") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("split", help="state.safetensors -> DIR/state-K-of-N.safetensors")
    s.add_argument("state", type=Path)
    s.add_argument("out_dir", type=Path)
    s.add_argument("--max-mib", type=float, default=19.0, help="largest part (default 19 MiB)")
    j = commands.add_parser("join", help="DIR/state-K-of-N.safetensors -> state.safetensors")
    j.add_argument("parts_dir", type=Path)
    j.add_argument("state", type=Path)
    args = parser.parse_args()
    try:
        if args.command == "split":
            for path in split(args.state, args.out_dir, int(args.max_mib * 2**20)):
                print(f"wrote {path}")
        else:
            join(args.parts_dir, args.state)
            print(f"wrote {args.state}")
    except DiffgenError as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        sys.exit(f"error: {e.filename}: {e.strerror}")


if __name__ == "__main__":
    main()
