"""Make the README's side-by-side crops of an upscaled held-out photo: input | bicubic | diffgen | original.

    python tools/sr_figure.py data/heldout/flower.png docs/upscale-example.png --box 260 150 420 310
    python tools/sr_figure.py data/heldout/china.png docs/upscale-jpeg.png --degrade jpeg:75 --box ...
    python tools/sr_figure.py data/heldout/flower.png docs/upscale-detail.png --detail --box ...

`--degrade` damages the input first (as `eval-upscale --degrade` does); `--detail` adds a panel of the
`upscale --detail` setting. The model is the one `diffgen upscale` would pick for the input (`--denoise auto`
chooses between the bundled pair by how the input looks), in float32.
"""

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from diffgen.api import Upscalers, parse_denoise
from diffgen.degrade import parse_condition
from diffgen.images import open_image
from diffgen.metrics import bicubic_upscale, crop_to_multiple, make_lowres
from diffgen.upscale import DETAIL, Sampling, upscale_image


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
    parser.add_argument("--degrade", default="clean", help="clean, jpeg:QUALITY or noise:SIGMA")
    parser.add_argument("--detail", action="store_true", help="add a panel of the --detail setting")
    parser.add_argument("--denoise", default="auto", help="as upscale's (default: auto)")
    args = parser.parse_args()
    condition = parse_condition(args.degrade)
    upscalers = Upscalers(args.model, parse_denoise(args.denoise), "cpu", "fp32")
    s = upscalers.main.spec.scale
    hr = crop_to_multiple(open_image(args.hr).convert("RGB"), s)
    lr = condition.apply(make_lowres(hr, s))
    loaded, chose = upscalers.pick(lr)
    print(f"{args.hr}: {chose or 'the model as it is'}")
    sr, _ = upscale_image(loaded, lr, sampling=Sampling(steps=args.steps, samples=args.samples))
    box = tuple(v // s * s for v in args.box)
    small = tuple(v // s for v in box)
    zoom = 2  # show the crops larger, with nearest-neighbour so no filter hides anything
    panels = [
        (f"input{'' if condition.kind == 'clean' else f' ({condition})'} (nearest)", lr.crop(small).resize(((box[2] - box[0]), (box[3] - box[1])), Image.Resampling.NEAREST)),
        ("bicubic", bicubic_upscale(lr, s).crop(box)),
        (f"diffgen, {args.steps} step{'s' * (args.steps > 1)} x {args.samples} sample{'s' * (args.samples > 1)}", sr.crop(box)),
        ("original", hr.crop(box)),
    ]
    if args.detail:
        detailed, _ = upscale_image(loaded, lr, sampling=DETAIL)
        panels.insert(3, ("diffgen --detail", detailed.crop(box)))
    tiles = [labelled(p.resize((p.width * zoom, p.height * zoom), Image.Resampling.NEAREST), t) for t, p in panels]
    figure = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), tiles[0].height), "white")
    for i, t in enumerate(tiles):
        figure.paste(t, (i * (t.width + 4), 0))
    figure.save(args.dest)
    print(f"{args.dest}: {figure.width}x{figure.height}")


if __name__ == "__main__":
    main()
