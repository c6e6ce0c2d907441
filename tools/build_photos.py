"""Build the photo training (and held-out) set for the x4 super-resolution model.

Training sources (written flat to OUT as RGB PNGs):
  * Debian packages ``plasma-workspace-wallpapers`` and ``mate-backgrounds``:
    the photographic wallpapers only (hand-picked below; the vector/abstract art
    is left out). Plasma ships several resolutions per wallpaper; the largest is
    used. These are compressed JPEGs, so each is halved with a Lanczos filter to
    suppress compression artefacts before saving.
  * ``skimage.data``: the bundled colour photographs, saved as they are.

Held-out set (``--heldout [DIR]``): scikit-learn's ``load_sample_images()``
(china, flower). They are never part of the training set.
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
MIN_SIDE = 400  # after halving


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


def build_training(out: pathlib.Path, sources: dict) -> list[tuple[int, int]]:
    sizes = []
    for name, path in sources.items():
        image = halve(Image.open(path).convert("RGB"))
        if min(image.size) < MIN_SIDE:
            print(f"note: skipping {path} (only {image.size} after halving)")
            continue
        image.save(out / f"{name}.png")
        sizes.append(image.size)
    for name in SKIMAGE_PHOTOS:
        image = skimage_photo(name)
        image.save(out / f"skimage-{name}.png")
        sizes.append(image.size)
    return sizes


def build_heldout(out: pathlib.Path) -> list[tuple[int, int]]:
    from sklearn.datasets import load_sample_images

    samples = load_sample_images()
    names = [pathlib.Path(f).stem for f in samples.filenames]
    assert sorted(names) == sorted(HELDOUT_NAMES), names
    for array, name in zip(samples.images, names, strict=True):
        Image.fromarray(array).save(out / f"{name}.png")
    return [(a.shape[1], a.shape[0]) for a in samples.images]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=DATA / "photos")
    parser.add_argument(
        "--heldout",
        type=pathlib.Path,
        nargs="?",
        metavar="DIR",
        const=DATA / "heldout",
        help="build only the held-out set, into DIR (default data/heldout)",
    )
    parser.add_argument(
        "--force", action="store_true", help="delete and rebuild output"
    )
    args = parser.parse_args()

    out = args.heldout or args.out
    sources = None if args.heldout else debian_sources()  # check before touching out
    prepare_out(out, args.force)
    sizes = build_heldout(out) if args.heldout else build_training(out, sources)
    kind = "held-out" if args.heldout else "training"
    sizes.sort(key=math.prod)
    print(
        f"wrote {len(sizes)} {kind} photos (RGB PNG) to {out}; sizes from "
        f"{sizes[0][0]}x{sizes[0][1]} to {sizes[-1][0]}x{sizes[-1][1]}"
    )


if __name__ == "__main__":
    main()
