"""Peak memory of video upscaling does not grow with the clip's length: 100 frames beside 1,000.

Each clip (a tiny generated one: smooth moving pictures with sound) is upscaled by `upscale_video` in its
own child process, whose peak resident memory the kernel reports when it ends (`os.wait4`). Frames stream
(decode, upscale, encode one at a time; the join copies packet by packet), so the peaks should be equal up
to noise. Goal: the longer clip's peak within 5% of the shorter's.

    python benchmarks/video_memory.py                          # 100 and 1,000 frames of 32x24 at x4
    python benchmarks/video_memory.py --frames 20 200 --json memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

GOAL_GROWTH = 0.05


def make_clip(path: Path, frames: int, size: tuple[int, int]) -> None:
    """A 24 fps H.264 clip of a smooth picture drifting sideways, with AAC sound."""
    import av  # noqa: PLC0415 - the optional extra

    w, h = size
    rng = np.random.default_rng(0)
    scene = np.asarray(Image.fromarray(rng.integers(0, 255, (h // 4, w, 3), dtype=np.uint8)).resize(
        (4 * w, h), Image.Resampling.BICUBIC))
    with av.open(str(path), "w") as c:
        video = c.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        sound = c.add_stream("aac", rate=8000)
        for t in range(frames):
            x = t % (3 * w)
            c.mux(video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(scene[:, x : x + w]), format="rgb24")))
        c.mux(video.encode())
        for i in range(frames * 8000 // 24 // 1024 + 1):
            chunk = av.AudioFrame.from_ndarray(rng.normal(0, 0.1, (1, 1024)).astype(np.float32), format="fltp",
                                               layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = 8000, i * 1024, Fraction(1, 8000)
            c.mux(sound.encode(chunk))
        c.mux(sound.encode())


def upscale_in_child(src: Path, dst: Path, model: str | None) -> int:
    """Peak resident bytes of a child process that upscales `src` into `dst`."""
    command = [sys.executable, __file__, "--child", str(src), str(dst)] + (["--model", model] if model else [])
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"the upscale of {src} failed (status {status})")
    return usage.ru_maxrss * 1024  # kB on Linux


def child(src: str, dst: str, model: str | None) -> None:
    from diffgen.checkpoint import Task  # noqa: PLC0415
    from diffgen.models import open_model  # noqa: PLC0415
    from diffgen.video.job import upscale_video  # noqa: PLC0415

    upscale_video(Path(src), Path(dst), open_model(model, Task.UPSCALE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs=2, default=[100, 1000], metavar=("SHORT", "LONG"))
    parser.add_argument("--size", type=int, nargs=2, default=[32, 24], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--model", default=None, help="upscaling model [default: upscale-x4]")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.model)
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.frames:
            src = Path(tmp) / f"clip{n}.mp4"
            make_clip(src, n, tuple(args.size))
            peaks[n] = upscale_in_child(src, Path(tmp) / f"clip{n}_x4.mp4", args.model)
            print(f"{n} frames of {args.size[0]}x{args.size[1]}: peak memory {peaks[n] / 1e6:.0f} MB")
    short, long = args.frames
    growth = peaks[long] / peaks[short] - 1
    print(f"growth from {short} to {long} frames: {growth:+.1%} (goal: under {GOAL_GROWTH:.0%})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "peak_rss_bytes": peaks, "growth": growth, "goal": GOAL_GROWTH}, f, indent=1)


if __name__ == "__main__":
    main()
