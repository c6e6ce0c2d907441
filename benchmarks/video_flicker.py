"""Temporal stability of video upscaling: flicker of diffgen beside bicubic, and PSNR per frame.

The clip pans a crop across a held-out photo (scikit-learn's china), one low-resolution pixel a frame
(`--step`), so the true motion is known: frame t+1 is frame t moved left by one LR pixel (`scale` output
pixels). Flicker
is the mean absolute difference of luma (Y, 0-255) between consecutive frames after undoing that motion,
inside a margin that keeps edge effects out. A perfectly stable upscaler has the flicker of the ground
truth, 0; the clean input has 0 too. The second clip JPEG-compresses each LR frame (quality 50), as a
streamed video would be: the blocks stay put while the picture moves, so the input itself flickers.
With `--hr-step N` the crop moves N output pixels a frame and each LR frame is its HR frame shrunk, as a
camera at the low resolution records a scene moving by a fraction of its pixels: every LR frame is then
sampled afresh, and bicubic flickers too.

Frames go through `video.job.upscale_frame`, the function `upscale_video` calls for each frame (same
tiles, the same seed for every frame), without a video codec's own loss: each alone (`--no-stabilize`),
and through `video.temporal.Stabilizer`, as `upscale_video` runs them by default (one piece). Goal
(issue 20): diffgen's flicker at most bicubic's + 10%, and PSNR above bicubic's on every frame.

The settings of the stabilizer were chosen on pans of training photos, not on this one.

    python benchmarks/video_flicker.py                          # 24 frames of 256x192 at x4
    python benchmarks/video_flicker.py --hr-step 1              # a pan by a quarter of an input pixel a frame
    python benchmarks/video_flicker.py --frames 6 --size 128 96 --json flicker.json
    python benchmarks/video_flicker.py --photo data/photos-v2/some.png    # a training photo, to choose settings on
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from diffgen.checkpoint import Task, with_precision
from diffgen.metrics import bicubic_upscale, rgb_to_y, score
from diffgen.models import open_model
from diffgen.upscale import Sampling
from diffgen.video.job import upscale_frame
from diffgen.video.temporal import Stabilizer

MARGIN = 2  # LR pixels left out at each edge: bicubic and the tiles see past the crop there
GOAL_FLICKER = 1.10  # diffgen's flicker at most this times bicubic's


def china() -> Image.Image:
    from sklearn.datasets import load_sample_image  # noqa: PLC0415 - only for the default picture

    return Image.fromarray(load_sample_image("china.jpg"))


def panning_clip(photo: Image.Image, size: tuple[int, int], frames: int, scale: int, jpeg: int | None, step: int,
                 hr_step: int | None = None):
    """(LR frames, HR frames): crops moving right `step` LR pixels a frame; LR frames JPEG-compressed if asked.

    With `hr_step`, the crops move that many HR pixels a frame and each LR frame is its HR frame shrunk, as a
    camera at the low resolution samples a scene that moves by a fraction of its pixels."""
    w, h = size
    if hr_step is not None:
        need = w + hr_step * frames
        if need > photo.width or h > photo.height:
            raise SystemExit(f"the photo is {photo.width}x{photo.height}; {frames} frames of {w}x{h} need {need}x{h}")
        top = (photo.height - h) // 2
        hr = [photo.crop((hr_step * t, top, hr_step * t + w, top + h)) for t in range(frames)]
        lr = [f.resize((w // scale, h // scale), Image.Resampling.BICUBIC) for f in hr]
        return [jpeg_round_trip(f, jpeg) if jpeg else f for f in lr], hr
    need = w + scale * step * frames
    if need > photo.width or h > photo.height:
        raise SystemExit(f"the photo is {photo.width}x{photo.height}; {frames} frames of {w}x{h} need {need}x{h}")
    top = (photo.height - h) // 2 // scale * scale
    photo = photo.crop((0, 0, photo.width // scale * scale, photo.height // scale * scale))  # else LR is stretched
    lr_photo = photo.resize((photo.width // scale, photo.height // scale), Image.Resampling.BICUBIC)
    hr, lr = [], []
    for t in range(frames):
        x = step * t
        hr.append(photo.crop((scale * x, top, scale * x + w, top + h)))
        crop = lr_photo.crop((x, top // scale, x + w // scale, (top + h) // scale))
        lr.append(jpeg_round_trip(crop, jpeg) if jpeg else crop)
    return lr, hr


def jpeg_round_trip(img: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def flicker(frames: list[Image.Image], shift: int, margin: int) -> float:
    """Mean |Y(t+1) - Y(t) moved back by `shift` pixels|, inside `margin` pixels of every edge."""
    ys = [rgb_to_y(f) for f in frames]
    diffs = [np.abs(b[margin:-margin, margin:-margin - shift] - a[margin:-margin, margin + shift:-margin]).mean()
             for a, b in zip(ys, ys[1:])]
    return float(np.mean(diffs))


def measure(loaded, lr: list[Image.Image], hr: list[Image.Image], sampling: Sampling, hr_step: int) -> dict:
    s = loaded.spec.scale
    alone = [upscale_frame(loaded, np.asarray(f), tile=None, sampling=sampling) for f in lr]
    outputs = iter(alone)  # the same upscales, through the stabilizer
    stabilizer = Stabilizer(lambda frame: next(outputs))
    upscaled = {"diffgen": [Image.fromarray(stabilizer(np.asarray(f))) for f in lr],
                "diffgen per frame": [Image.fromarray(o) for o in alone],
                "bicubic": [bicubic_upscale(f, s) for f in lr]}
    psnr = {name: [score(o, h, s).psnr for o, h in zip(frames, hr)] for name, frames in upscaled.items()}
    moved = {"input (LR)": flicker(lr, hr_step // s, MARGIN)} if hr_step % s == 0 else {}  # whole LR pixels only
    return {"flicker": {**moved, "ground truth (HR)": flicker(hr, hr_step, s * MARGIN),
                        **{name: flicker(frames, hr_step, s * MARGIN) for name, frames in upscaled.items()}},
            "psnr_per_frame": psnr,
            "frames_above_bicubic": {name: sum(d > b for d, b in zip(psnr[name], psnr["bicubic"]))
                                     for name in ("diffgen", "diffgen per frame")}}


def report(name: str, row: dict, frames: int) -> None:
    f = row["flicker"]

    def ratio(k: str) -> float:  # both 0 (a pan by whole pixels, exactly repeated) is as stable as bicubic
        return f[k] / f["bicubic"] if f["bicubic"] else (1.0 if f[k] == 0 else float("inf"))

    print(f"{name}: flicker (mean |ΔY| after motion, grey levels) " +
          ", ".join(f"{k} {v:.3f}" for k, v in f.items()) +
          f"; diffgen/bicubic {ratio('diffgen'):.2f}, per frame {ratio('diffgen per frame'):.2f} "
          f"(goal ≤ {GOAL_FLICKER:.2f})")
    p, above = {k: np.mean(v) for k, v in row["psnr_per_frame"].items()}, row["frames_above_bicubic"]
    print(f"{name}: PSNR on Y, mean diffgen {p['diffgen']:.2f} dB, per frame {p['diffgen per frame']:.2f} dB, "
          f"bicubic {p['bicubic']:.2f} dB; above bicubic on {above['diffgen']} of {frames} frames "
          f"({above['diffgen per frame']} per frame)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="upscaling model [default: upscale-x4]")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, nargs=2, default=[256, 192], metavar=("WIDTH", "HEIGHT"),
                        help="of the output (HR) frames, multiples of the scale")
    parser.add_argument("--jpeg", type=int, default=50, help="JPEG quality of the compressed clip's LR frames")
    parser.add_argument("--step", type=int, default=1, help="LR pixels the crop moves a frame")
    parser.add_argument("--hr-step", type=int, default=None,
                        help="instead: HR pixels the crop moves a frame, each LR frame shrunk from its HR frame")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--photo", type=Path, default=None,
                        help="pan across this photo instead (a training photo, to choose settings on)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    loaded = with_precision(open_model(args.model, Task.UPSCALE), args.precision)
    photo = Image.open(args.photo).convert("RGB") if args.photo else china()
    rows = {}
    for name, jpeg in (("clean", None), (f"jpeg q{args.jpeg}", args.jpeg)):
        lr, hr = panning_clip(photo, tuple(args.size), args.frames, loaded.spec.scale, jpeg, args.step, args.hr_step)
        hr_step = args.hr_step if args.hr_step is not None else loaded.spec.scale * args.step
        rows[name] = measure(loaded, lr, hr, Sampling(), hr_step)
        report(name, rows[name], args.frames)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"frames": args.frames, "size": args.size, "step": args.step, "hr_step": args.hr_step, "precision": loaded.precision, **rows},
                      f, indent=1)


if __name__ == "__main__":
    main()
