"""Peak memory of `diffgen upscale` on a large photo: the issue's 4000x3000 input at x4 (a 192 MP output).

The command runs as a user would run it, in a child process (decode, tiled upscale, encode, write), and
its peak resident memory is read from the kernel's accounting of finished children. Beside it stands the
size of the output's 8-bit canvas, the floor any upscaler that holds its result in memory pays. Goal:
under 3 GB.

    python benchmarks/upscale_memory.py                       # about 3 minutes on 2 cores
    python benchmarks/upscale_memory.py --size 2000 1500 --json memory.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

GOAL_BYTES = 3 * 10**9


def make_photo(width: int, height: int) -> Image.Image:
    """A photo of the requested size: scikit-image's astronaut, enlarged."""
    from skimage import data  # noqa: PLC0415 - only for the default picture

    return Image.fromarray(data.astronaut()).resize((width, height), Image.Resampling.BICUBIC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=[4000, 3000], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--model", default=None, help="upscaling model [default: upscale-x4]")
    parser.add_argument("--format", default="png", choices=["png", "jpg", "webp"], help="of the output file")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "large.png"
        make_photo(*args.size).save(src)
        command = [sys.executable, "-m", "diffgen", "upscale", str(src), "--format", args.format]
        if args.model:
            command += ["--model", args.model]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        Image.MAX_IMAGE_PIXELS = None  # our own output, only its header is read: not a decompression bomb
        with Image.open(next(Path(tmp).glob("large_x*"))) as out:
            output_size = out.size
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kB on Linux
    canvas = output_size[0] * output_size[1] * 3
    rows = {"input": args.size, "output": list(output_size), "peak_rss_bytes": peak, "canvas_bytes": canvas,
            "seconds": seconds, "goal_bytes": GOAL_BYTES}
    print(f"{args.size[0]}x{args.size[1]} -> {output_size[0]}x{output_size[1]} ({canvas / 3e6:.0f} MP) in {seconds:.0f} s")
    print(f"peak memory {peak / 1e9:.2f} GB (the 8-bit output canvas alone: {canvas / 1e9:.2f} GB; goal: under "
          f"{GOAL_BYTES / 1e9:.0f} GB)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
