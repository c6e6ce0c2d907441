"""Video upscaling speed: frames per second of a 480x270 -> 1920x1080 clip, beside FFmpeg's bicubic scaler.

diffgen's side is the whole `upscale_video` at its defaults (decode, upscale each frame with the bundled x4
model, carry its detail along the motion, encode H.264 at the default CRF, copy the sound, join), as
`diffgen upscale clip.mp4` runs it without process start-up, and the same with `--no-stabilize`. The reference is FFmpeg doing the same job with its own bicubic scaler
(swscale, through PyAV's `VideoFrame.reformat`) and the same encoder settings: what a user would run
instead (`ffmpeg -vf scale=1920:1080:flags=bicubic`). Both run in this process, one after the other,
`--rounds` times in alternating order; the table gives medians. The clip is a smooth picture panning
sideways (benchmarks/video_memory.py makes it), so the encoder's cost is realistic rather than that of noise.

    pip install -e ".[bench]"
    python benchmarks/video_speed.py                   # 12 frames, 2 rounds, about 2 minutes on 2 cores
    python benchmarks/video_speed.py --frames 24 --rounds 3 --json video_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from video_memory import make_clip  # benchmarks/, beside this script

from diffgen.checkpoint import Task, with_precision
from diffgen.models import open_model
from diffgen.video.job import upscale_video

SIZE = (480, 270)
SCALE = 4


def ffmpeg_bicubic(src: Path, dst: Path, crf: int = 18) -> None:
    """The clip scaled x4 by FFmpeg's bicubic swscale and encoded with libx264 at the same CRF."""
    import av  # noqa: PLC0415 - the optional extra

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream_in = inp.streams.video[0]
        stream = out.add_stream("libx264", rate=stream_in.average_rate)
        stream.width, stream.height, stream.pix_fmt = SCALE * SIZE[0], SCALE * SIZE[1], "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in inp.decode(stream_in):
            big = frame.reformat(width=stream.width, height=stream.height, format="yuv420p", interpolation="BICUBIC")
            big.pts = None
            out.mux(stream.encode(big))
        out.mux(stream.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default=None, help="upscaling model [default: upscale-x4]")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    loaded = with_precision(open_model(args.model, Task.UPSCALE), "auto")  # as `diffgen upscale` samples
    times = {"diffgen": [], "diffgen --no-stabilize": [], "ffmpeg bicubic": []}
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        make_clip(clip, args.frames, SIZE)
        jobs = {"diffgen": lambda dst: upscale_video(clip, dst, loaded, overwrite=True),
                "diffgen --no-stabilize": lambda dst: upscale_video(clip, dst, loaded, overwrite=True, stabilize=False),
                "ffmpeg bicubic": lambda dst: ffmpeg_bicubic(clip, dst)}
        for r in range(args.rounds):
            for name in (list(jobs) if r % 2 == 0 else list(jobs)[::-1]):
                t0 = time.perf_counter()
                jobs[name](Path(tmp) / f"{name.replace(' ', '_')}-{r}.mp4")
                times[name].append(time.perf_counter() - t0)
    fps = {name: args.frames / statistics.median(t) for name, t in times.items()}
    print(f"{args.frames} frames of {SIZE[0]}x{SIZE[1]} -> {SCALE * SIZE[0]}x{SCALE * SIZE[1]}, "
          f"{args.rounds} rounds, {loaded.precision}")
    for name, value in fps.items():
        print(f"  {name:24s} {value:8.2f} frames/s  ({1 / value:.2f} s a frame)")
    print(f"  diffgen is {fps['ffmpeg bicubic'] / fps['diffgen']:.0f}x slower than FFmpeg's bicubic; stabilizing costs "
          f"{fps['diffgen --no-stabilize'] / fps['diffgen'] - 1:.0%} of the time without it")
    if args.json:
        Path(args.json).write_text(json.dumps({"frames": args.frames, "fps": fps}, indent=2))


if __name__ == "__main__":
    main()
