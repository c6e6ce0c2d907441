"""Choose `upscale --denoise`'s default: the PSNR-Y gain over bicubic of each blend of the clean upscaler
(strength 0) and the real-world one (strength 1), on clean, JPEG and noisy inputs.

The default is the strength with the best mean gain over the three conditions. Choose it on photos the
model was trained on (centre crops of a few), never on the held-out sets; then report it on them:

    python benchmarks/upscale_denoise.py data/photos-v2 --limit 12 --crop 256     # to choose
    python benchmarks/upscale_denoise.py data/heldout                              # to report
"""

import argparse
import tempfile
from pathlib import Path

from diffgen.checkpoint import Task
from diffgen.data import find_images
from diffgen.degrade import parse_condition
from diffgen.metrics import evaluate, mean_row
from diffgen.models import blend, open_model
from diffgen.upscale import Sampling, upscale_image

from upscale_detail import centre_crops

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
CONDITIONS = ("clean", "jpeg:75", "jpeg:50", "noise:5", "noise:10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--gentle", default="upscale-x4-clean", help="the model at strength 0")
    parser.add_argument("--strong", default="upscale-x4", help="the model at strength 1")
    parser.add_argument("--limit", type=int, default=None, help="use every k-th image so that at most this many are used")
    parser.add_argument("--crop", type=int, default=None, help="score the centre crop of this side (HR pixels)")
    args = parser.parse_args()
    gentle, strong = open_model(args.gentle, Task.UPSCALE), open_model(args.strong, Task.UPSCALE)
    paths, _, _ = find_images(args.folder)
    if args.limit and len(paths) > args.limit:
        paths = paths[:: -(-len(paths) // args.limit)]
    sampling = Sampling()  # the command's defaults
    with tempfile.TemporaryDirectory() as tmp:
        if args.crop:
            paths = centre_crops(paths, args.crop, Path(tmp))
        print(f"{len(paths)} images from {args.folder}: PSNR-Y gain over bicubic of the same input (dB)")
        print("strength " + "".join(f"{c:>10}" for c in CONDITIONS) + "      mean")
        for strength in STRENGTHS:
            loaded = blend(gentle, strong, strength)
            gains = []
            for condition in CONDITIONS:
                rows = evaluate(lambda lr: upscale_image(loaded, lr, sampling=sampling)[0], paths, loaded.spec.scale,
                                condition=parse_condition(condition))
                mean = mean_row(rows)
                gains.append(mean.model.psnr - mean.bicubic.psnr)
            print(f"{strength:8.2f} " + "".join(f"{g:+10.2f}" for g in gains) + f"{sum(gains) / len(gains):+10.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
