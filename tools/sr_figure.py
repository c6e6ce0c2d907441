"""Make the README's side-by-side crop of an upscaled held-out photo: input | bicubic | diffgen | original.

    python tools/sr_figure.py data/heldout/flower.png docs/upscale-example.png --box 260 150 420 310
"""

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from diffgen.checkpoint import Task
from diffgen.images import open_image
from diffgen.metrics import bicubic_upscale, crop_to_multiple, make_lowres
from diffgen.models import open_model
from diffgen.upscale import Sampling, upscale_image


def labelled(img: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (img.width, img.height + 18), "white")
    out.paste(img, (0, 18))
    ImageDraw.Draw(out).text((4, 3), text, fill="black")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hr", type=Path, help="a high-resolution photo not used in training")
    parser.add_argument("dest", type=Path)
    parser.add_argument("--box", type=int, nargs=4, default=(0, 0, 160, 160), help="crop of the HR image: l t r b")
    parser.add_argument("--model", default=None)
    parser.add_argument("--steps", type=int, default=Sampling().steps)
    parser.add_argument("--samples", type=int, default=Sampling().samples)
    args = parser.parse_args()
    loaded = open_model(args.model, Task.UPSCALE)
    s = loaded.spec.scale
    hr = crop_to_multiple(open_image(args.hr).convert("RGB"), s)
    lr = make_lowres(hr, s)
    sr, _ = upscale_image(loaded, lr, sampling=Sampling(steps=args.steps, samples=args.samples))
    box = tuple(v // s * s for v in args.box)
    small = tuple(v // s for v in box)
    zoom = 2  # show the crops larger, with nearest-neighbour so no filter hides anything
    panels = [
        ("input (nearest)", lr.crop(small).resize(((box[2] - box[0]), (box[3] - box[1])), Image.Resampling.NEAREST)),
        ("bicubic", bicubic_upscale(lr, s).crop(box)),
        (f"diffgen, {args.steps} step{'s' * (args.steps > 1)} x {args.samples} sample{'s' * (args.samples > 1)}", sr.crop(box)),
        ("original", hr.crop(box)),
    ]
    tiles = [labelled(p.resize((p.width * zoom, p.height * zoom), Image.Resampling.NEAREST), t) for t, p in panels]
    figure = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), tiles[0].height), "white")
    for i, t in enumerate(tiles):
        figure.paste(t, (i * (t.width + 4), 0))
    figure.save(args.dest)
    print(f"{args.dest}: {figure.width}x{figure.height}")


if __name__ == "__main__":
    main()
