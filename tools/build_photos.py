"""Build the photo training (and held-out) set for the x4 super-resolution model.

Training sources (written flat to OUT as RGB PNGs):
  * Debian packages ``plasma-workspace-wallpapers`` and ``mate-backgrounds``:
    the photographic wallpapers only (hand-picked below; the vector/abstract art
    is left out). Plasma ships several resolutions per wallpaper; the largest is
    used. These are compressed JPEGs, so each is halved with a Lanczos filter to
    suppress compression artefacts before saving.
  * ``skimage.data``: the bundled colour photographs, saved as they are.

``--scales 1,0.7,0.5`` also writes each training photo shrunk by the other factors (antialiased), so
that the training set has the denser detail of smaller photos (scale augmentation).

Held-out set (``--heldout [DIR]``): scikit-learn's ``load_sample_images()``
(china, flower). They are never part of the training set. A second held-out set
(``--heldout-gray [DIR]``): scikit-image's grey photographs (camera, coins, moon and three
textures), which the training set leaves out too; scores are on Y, so grey photos count fully.
"""

import argparse
import math
import pathlib
import sys

import numpy as np
from dataset_folder import DATA, prepare_out  # tools/, beside this script
from PIL import Image

PLASMA_DIR = pathlib.Path("/usr/share/wallpapers")
MATE_DIR = pathlib.Path("/usr/share/backgrounds/mate")
APT_HINT = "sudo apt-get install -y plasma-workspace-wallpapers mate-backgrounds"

# Photographs only. Skipped as non-photos: Altai, Autumn (painting), Canopee,
# Cascade, Cluster, Elarun, Flow, FlyingKonqui, Honeywave, IceCold, Kay, Kokkini,
# MilkyWay, Opal, PastelHills, Patak, SafeLanding, Shell, Volna.
PLASMA_PHOTOS = ["BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite", "OneStandsOut", "Path", "summer_1am"]
# mate/abstract and mate/desktop are artwork, logos or blurred gradients.
MATE_PHOTOS = ["Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower"]
# Colour photographs; gray, synthetic and microscopy/medical/astronomy images skipped.
SKIMAGE_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle"]
HELDOUT_NAMES = ("china", "flower")
HELDOUT_GRAY = ["camera", "coins", "moon", "grass", "gravel", "brick"]
MIN_SIDE = 400  # after halving
MIN_SCALED_SIDE = 128  # a shrunk copy smaller than this is not written


def largest_variant(wallpaper: pathlib.Path) -> pathlib.Path | None:
    """Plasma names its files WIDTHxHEIGHT.ext; pick the one with most pixels."""
    files = (wallpaper / "contents" / "images").glob("*x*.*")
    pixels = {f: math.prod(map(int, f.stem.split("x"))) for f in files}
    return max(pixels, key=pixels.get, default=None)


def debian_sources() -> dict[str, pathlib.Path]:
    """Return {output name: source file}; exit with an install hint if missing."""
    sources = {f"plasma-{n}": largest_variant(PLASMA_DIR / n) for n in PLASMA_PHOTOS}
    sources |= {f"mate-{n}": MATE_DIR / "nature" / f"{n}.jpg" for n in MATE_PHOTOS}
    missing = [name for name, path in sources.items() if not (path and path.is_file())]
    if missing:
        sys.exit(
            f"missing {len(missing)} wallpapers ({', '.join(missing[:3])}, ...).\n"
            f"Install them with: {APT_HINT}"
        )
    return sources


def halve(image: Image.Image) -> Image.Image:
    """Crop to even size, then downscale by exactly 2 with an antialiasing filter."""
    width, height = image.width // 2, image.height // 2
    image = image.crop((0, 0, 2 * width, 2 * height))
    return image.resize((width, height), Image.LANCZOS)


def skimage_photo(name: str) -> Image.Image:
    import skimage.data

    array = getattr(skimage.data, name)()
    if isinstance(array, tuple):  # stereo pair: keep the left view
        array = array[0]
    assert array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8, name
    return Image.fromarray(array)


def save_scaled(image: Image.Image, out: pathlib.Path, name: str, scales: list[float]) -> list[tuple[int, int]]:
    """Save `image` once per scale (1 keeps it as it is); return the sizes written."""
    sizes = []
    for scale in scales:
        size = (round(image.width * scale), round(image.height * scale))
        if min(size) < MIN_SCALED_SIDE:
            continue
        scaled = image if scale == 1 else image.resize(size, Image.LANCZOS)
        scaled.save(out / (f"{name}.png" if scale == 1 else f"{name}-x{scale:g}.png"))
        sizes.append(size)
    return sizes


def build_training(out: pathlib.Path, sources: dict, scales: list[float]) -> list[tuple[int, int]]:
    sizes = []
    for name, path in sources.items():
        image = halve(Image.open(path).convert("RGB"))
        if min(image.size) < MIN_SIDE:
            print(f"note: skipping {path} (only {image.size} after halving)")
            continue
        sizes += save_scaled(image, out, name, scales)
    for name in SKIMAGE_PHOTOS:
        sizes += save_scaled(skimage_photo(name), out, f"skimage-{name}", scales)
    return sizes


def scale_list(text: str) -> list[float]:
    scales = [float(s) for s in text.split(",")]
    if not all(0 < s <= 1 for s in scales):
        raise argparse.ArgumentTypeError(f"{text}: scales must be in (0, 1], e.g. 1,0.7,0.5")
    return scales


def build_heldout(out: pathlib.Path) -> list[tuple[int, int]]:
    from sklearn.datasets import load_sample_images

    samples = load_sample_images()
    names = [pathlib.Path(f).stem for f in samples.filenames]
    assert sorted(names) == sorted(HELDOUT_NAMES), names
    for array, name in zip(samples.images, names, strict=True):
        Image.fromarray(array).save(out / f"{name}.png")
    return [(a.shape[1], a.shape[0]) for a in samples.images]


def build_heldout_gray(out: pathlib.Path) -> list[tuple[int, int]]:
    import skimage.data

    sizes = []
    for name in HELDOUT_GRAY:
        image = Image.fromarray(getattr(skimage.data, name)())
        image.save(out / f"{name}.png")
        sizes.append(image.size)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=DATA / "photos")
    for flag, folder, what in (("--heldout", "heldout", "held-out set"), ("--heldout-gray", "heldout-gray", "grey held-out set")):
        parser.add_argument(
            flag, type=pathlib.Path, nargs="?", metavar="DIR", const=DATA / folder,
            help=f"build only the {what}, into DIR (default data/{folder})",
        )
    parser.add_argument(
        "--scales",
        type=scale_list,
        default=[1.0],
        help="comma-separated factors in (0, 1]: write each training photo at each (default 1)",
    )
    parser.add_argument(
        "--force", action="store_true", help="delete and rebuild output"
    )
    args = parser.parse_args()

    if args.heldout:
        out, kind, build = args.heldout, "held-out", build_heldout
    elif args.heldout_gray:
        out, kind, build = args.heldout_gray, "grey held-out", build_heldout_gray
    else:
        sources = debian_sources()  # check before touching out
        out, kind, build = args.out, "training", lambda out: build_training(out, sources, args.scales)
    prepare_out(out, args.force)
    sizes = build(out)
    sizes.sort(key=math.prod)
    print(
        f"wrote {len(sizes)} {kind} photos (PNG) to {out}; sizes from "
        f"{sizes[0][0]}x{sizes[0][1]} to {sizes[-1][0]}x{sizes[-1][1]}"
    )


if __name__ == "__main__":
    main()
