"""Upscaling speed: seconds per output megapixel of `diffgen upscale`'s default setting, beside PIL bicubic.

The job is the issue's target: a 512x512 photo (a crop of scikit-image's astronaut, or any image you
pass) to 2048x2048 with the bundled x4 model, through the same code path as the command
(`upscale_image`: tiling, blending, image handling). Goal: under 30 s on 2 CPU cores.

    python benchmarks/upscale_speed.py                    # default steps and samples, torch's default threads
    python benchmarks/upscale_speed.py --steps 1 2 4 --image photo.png --json speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from PIL import Image

from diffgen.checkpoint import Task, with_precision
from diffgen.models import open_model
from diffgen.upscale import Sampling, upscale_image


def test_image(path: str | None) -> Image.Image:
    if path:
        return Image.open(path).convert("RGB")
    from skimage import data  # noqa: PLC0415 - only for the default picture

    return Image.fromarray(data.astronaut()).resize((512, 512), Image.Resampling.LANCZOS)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="upscaling model [default: upscale-x4]")
    parser.add_argument("--image", default=None, help="input image [default: a 512x512 photo]")
    parser.add_argument("--steps", type=int, nargs="+", default=[Sampling().steps])
    parser.add_argument("--samples", type=int, default=Sampling().samples, help="as `diffgen upscale --samples`")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="as `diffgen upscale --precision` [default: auto]")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    loaded = with_precision(open_model(args.model, Task.UPSCALE), args.precision)
    img = test_image(args.image)
    s = loaded.spec.scale
    megapixels = img.width * s * img.height * s / 1e6
    bicubic = timed(lambda: img.resize((img.width * s, img.height * s), Image.Resampling.BICUBIC), 5)
    rows = {"input": list(img.size), "output_megapixels": megapixels, "threads": torch.get_num_threads(),
            "precision": loaded.precision, "samples": args.samples,
            "pil_bicubic_s": bicubic, "diffgen_s": {}}
    print(f"{img.width}x{img.height} -> {img.width * s}x{img.height * s} ({megapixels:.1f} MP), {torch.get_num_threads()} threads, "
          f"{loaded.precision}, {args.samples} sample(s)")
    print(f"{'method':<22}{'seconds':>9}{'s / MP':>9}")
    print(f"{'PIL bicubic':<22}{bicubic:>9.3f}{bicubic / megapixels:>9.3f}")
    for steps in args.steps:
        sampling = Sampling(steps=steps, samples=args.samples)
        seconds = timed(lambda: upscale_image(loaded, img, sampling=sampling), args.repeats)
        rows["diffgen_s"][steps] = seconds
        print(f"{f'diffgen, {steps} step' + 's' * (steps > 1):<22}{seconds:>9.2f}{seconds / megapixels:>9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
