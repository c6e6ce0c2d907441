"""How much sampled texture each sampling setting of the upscaler buys, and at what PSNR.

For each (steps, η) setting: mean PSNR-Y gain over bicubic and `detail` (high-frequency power of the
output as a share of the original's; bicubic is far below 1, the original is 1) on a folder of photos.
`--detail` is the setting closest to detail 1 that stays above bicubic in PSNR; choose it on photos the
model was trained on (cut to a few crops), never on the held-out sets, then report it on them:

    python benchmarks/upscale_detail.py data/photos-v2 --limit 12 --crop 256      # to choose
    python benchmarks/upscale_detail.py data/heldout                               # to report
"""

import argparse
import tempfile
from pathlib import Path

from PIL import Image

from diffgen.checkpoint import Task
from diffgen.data import find_images
from diffgen.metrics import evaluate, mean_row
from diffgen.models import open_model
from diffgen.upscale import Sampling, upscale_image

SETTINGS = [(1, 0.0), (2, 0.0), (4, 0.0), (4, 1.0), (10, 0.0), (10, 1.0), (20, 1.0), (50, 1.0)]


def centre_crops(paths: list[Path], side: int, folder: Path) -> list[Path]:
    """The centre `side` x `side` of each image, saved as PNG in `folder` (cheap to upscale many times)."""
    out = []
    for path in paths:
        with Image.open(path) as img:
            w, h = img.size
            s = min(side, w, h)
            crop = img.convert("RGB").crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2))
        crop.save(folder / f"{path.stem}.png")
        out.append(folder / f"{path.stem}.png")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", default=None)
    parser.add_argument("--limit", type=int, default=None, help="use every k-th image so that at most this many are used")
    parser.add_argument("--crop", type=int, default=None, help="score the centre crop of this side (HR pixels)")
    parser.add_argument("--samples", type=int, default=1)
    args = parser.parse_args()
    loaded = open_model(args.model, Task.UPSCALE)
    paths, _, _ = find_images(args.folder)
    if args.limit and len(paths) > args.limit:
        paths = paths[:: -(-len(paths) // args.limit)]
    with tempfile.TemporaryDirectory() as tmp:
        if args.crop:
            paths = centre_crops(paths, args.crop, Path(tmp))
        print(f"{len(paths)} images from {args.folder}; detail = high-frequency power / the original's")
        print("steps   eta   gain (dB)   detail   bicubic detail")
        for steps, eta in SETTINGS:
            sampling = Sampling(steps=steps, eta=eta, samples=args.samples)
            rows = evaluate(lambda lr: upscale_image(loaded, lr, sampling=sampling)[0], paths, loaded.spec.scale)
            mean = mean_row(rows)
            print(f"{steps:5d} {eta:5.1f} {mean.model.psnr - mean.bicubic.psnr:+10.2f} {mean.model.detail:8.2f} "
                  f"{mean.bicubic.detail:8.2f}", flush=True)


if __name__ == "__main__":
    main()
