"""Build the photo training (and held-out) set for the x4 super-resolution model.

Two training sets (written flat to OUT as RGB PNGs), chosen with ``--set``:
  * ``v1`` (default, the bundled model's): 23 photographic wallpapers of the Debian packages
    ``plasma-workspace-wallpapers`` and ``mate-backgrounds`` (hand-picked below; the vector/abstract
    art is left out; Plasma ships several resolutions per wallpaper and the largest is used),
    each halved with a Lanczos filter to suppress its JPEG compression, and the 5 colour
    photographs of ``skimage.data``, saved as they are.
  * ``v2`` (default OUT data/photos-v2): v1 and 128 more real photographs from 11 more Debian
    packages (``V2_SOURCES``), 156 in all. Each source has its own downscale factor, enough to hide
    its JPEG compression (4x for the 6-20 MP wallpapers, 1.5-2.5x for JPEGs under 2 MP); a photo
    is shrunk less where the factor would take its short side under the source's ``min_side``
    (400 px but for Scratch's 480x360 backgrounds), and is left out below it. Every file taken is
    printed. ``kphotoalbum`` pulls in some 270 KDE packages; ``--unpacked DIR`` reads its files
    from ``apt-get download kphotoalbum && dpkg-deb -x kphotoalbum_*.deb DIR`` instead.

``--scales 1,0.7,0.5`` also writes each training photo shrunk by the other factors (antialiased), so
that the training set has the denser detail of smaller photos (scale augmentation).

Held-out set (``--heldout [DIR]``): scikit-learn's ``load_sample_images()``
(china, flower). They are never part of the training set. A second held-out set
(``--heldout-gray [DIR]``): scikit-image's grey photographs (camera, coins, moon and three
textures), which the training set leaves out too; scores are on Y, so grey photos count fully.
The images that ship with OpenCV, matplotlib and SciPy are kept for evaluation too: no source
below draws on them, nor on the classic test images (Lena, baboon, peppers, ...) that OpenCV ships.
"""

import argparse
import dataclasses
import math
import pathlib
import sys
from collections.abc import Callable

import numpy as np
from dataset_folder import DATA, prepare_out  # tools/, beside this script
from PIL import Image, ImageOps

MIN_SIDE = 400  # short side of a training photo after shrinking
MIN_SCALED_SIDE = 128  # a shrunk copy smaller than this is not written


def largest_variant(wallpaper: pathlib.Path) -> pathlib.Path | None:
    """Plasma names its files WIDTHxHEIGHT.ext; pick the one with most pixels."""
    files = (wallpaper / "contents" / "images").glob("*x*.*")
    pixels = {f: math.prod(map(int, f.stem.split("x"))) for f in files}
    return max(pixels, key=pixels.get, default=None)


@dataclasses.dataclass(frozen=True)
class Source:
    """Photographs that one Debian package installs into one folder, and how far to shrink them."""

    package: str  # Debian package that ships the files
    folder: str  # where it installs them
    names: tuple[str, ...]  # the photographs kept, relative to folder
    factor: float  # downscale that hides the source's JPEG compression
    prefix: str  # output file names are PREFIX-STEM.png
    min_side: int = MIN_SIDE  # shrink less rather than take the short side under this
    locate: Callable[[pathlib.Path], pathlib.Path | None] = lambda path: path  # name -> file

    def files(self, roots: list[pathlib.Path]) -> dict[str, pathlib.Path | None]:
        """{output name: file}, each looked for under each root in turn (None where missing)."""
        found = {}
        for name in self.names:
            paths = (self.locate(root / self.folder.lstrip("/") / name) for root in roots)
            found[f"{self.prefix}-{pathlib.PurePath(name).stem}"] = next(
                (path for path in paths if path and path.is_file()), None
            )
        return found


def jpgs(*stems: str, under: str = "") -> tuple[str, ...]:
    return tuple(f"{under}{stem}.jpg" for stem in stems)


# Photographs only. Skipped as non-photos: Altai, Autumn (painting), Canopee,
# Cascade, Cluster, Elarun, Flow, FlyingKonqui, Honeywave, IceCold, Kay, Kokkini,
# MilkyWay, Opal, PastelHills, Patak, SafeLanding, Shell, Volna.
PLASMA = Source(
    "plasma-workspace-wallpapers", "/usr/share/wallpapers",
    ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
     "Kite", "OneStandsOut", "Path", "summer_1am"),
    2, "plasma", locate=largest_variant,
)
# mate/abstract and mate/desktop are artwork (Elephants is a painting), logos or blurred gradients.
MATE = Source(
    "mate-backgrounds", "/usr/share/backgrounds/mate/nature",
    jpgs("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops",
         "Storm", "TwoWings", "Wood", "YellowFlower"),
    2, "mate",
)
V1_SOURCES = (PLASMA, MATE)

# Looked at and nothing kept: gnome-backgrounds (all renders and vector art), sway-backgrounds
# (logo on a colour), ukui-wallpapers (renders, illustrations), lomiri-wallpapers (2 renders),
# desktop-base, xfdesktop4-data, lxde-common, fluxbox, fvwm-crystal, cinnamon-desktop-data (renders,
# logos), tuxmath-data (space photos pasted on a moonscape), stellarium-data (panorama tiles with
# transparent skies), krita-data (generated patterns), gramps (portraits under 400 px),
# gimp-help-en (a few scenes, mostly before/after edits with dialogs), visp-images-data (grey
# frames of tracking videos), the astronomy photos of scribus-template and tuxmath-data.
V2_SOURCES = V1_SOURCES + (
    # Mostly 6-20 MP JPEGs (quality 70-99), so 4x (2.7 for the 1.5 MP Picture_1A, to keep 400 px).
    # Skipped: analogpattern (texture under a colour filter), umang (render).
    Source(
        "lomiri-wallpapers-16.04", "/usr/share/backgrounds",
        jpgs("Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
             "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi",
             "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich",
             "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi",
             "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi"),
        4, "lomiri",
    ),
    # Skipped: Fossa (render), Infinite-Sea (Milky Way montage), Painting-Colors (illustration).
    Source(
        "lomiri-wallpapers-20.04", "/usr/share/backgrounds", jpgs("Kleiber_by_Lukas_Baubkus"), 4, "lomiri"
    ),
    # 2-6 MP. Skipped: kde-plasma, lxqt-origami-green, origami-*, plasma-logo-*, plasma_arch,
    # simple_blue_widescreen, triangles*, waves-* (renders and logos).
    Source(
        "lxqt-themes", "/usr/share/lxqt/wallpapers",
        ("Butterfly-Kenneth-Wimer.jpg", "after-the-rain.jpg", "appleflower.png", "beam.png",
         "butterfly.png", "cloud.png", "drop.png", "flowers.png", "fog.jpg",
         "this-is-not-windows.jpg", "Valendas.png"),
        3, "lxqt",
    ),
    # The jigsaw puzzles, 0.7-2 MP at quality 80. Skipped: backgrounds/ (512 px tiles).
    Source(
        "palapeli-data", "/usr/share/palapeli/collection",
        jpgs("castle-maintenon", "cincinnati-bridge", "citrus-fruits", "european-honey-bee",
             "panther-chameleon-female"),
        2.5, "palapeli",
    ),
    # Colouring-book templates, 0.3-1 MP at quality 71-87. Skipped: mossy_bark (black bars);
    # starters/ are line drawings, or photos under 400 px.
    Source(
        "tuxpaint-data", "/usr/share/tuxpaint/templates",
        jpgs("burnt_bark", "cliff", "corn_maze", "jellyfish", "lighthouse", "mossy_log", "mudstone",
             "ocean_splash", "ocean_waves", "redwoods_above", "rocks", "sheep", "spiders_web",
             "sun_behind_clouds", "sun_behind_leaves", "trees_above", "trees_at_dusk",
             "wool_mill_machine"),
        2, "tuxpaint",
    ),
    # The demo album: people, pets, places; 800x533-600 at quality 80. Skipped: anne_helene
    # (400 px wide, so it could not be shrunk at all).
    Source(
        "kphotoalbum", "/usr/share/kphotoalbum/demo",
        jpgs("bar55", "bar55_2", "blackie", "cold_water", "donna", "donna_2", "grand_canyon_1",
             "grand_canyon_2", "grand_canyon_3", "jesper", "jesper_2", "new_wave_1", "new_wave_2",
             "pool", "pool_2", "qt-logo", "skagen", "skagen_2", "snow", "spiff", "spiff_2", "sunset",
             "wayne"),
        2, "kphotoalbum",
    ),
    # 12 MP. Skipped: the HTML themes' frames and cards, the 3D LUTs.
    Source("digikam-data", "/usr/share/digikam/about/images", jpgs("body-background"), 4, "digikam"),
    # Skipped: menu2/pizza (quality 49, blocky), the moon and eclipse photos (astronomy),
    # portraits and the mantis (under 400 px).
    Source("scribus-template", "/usr/share/scribus/templates/br2", jpgs("nature", "sunset"), 2, "scribus"),
    # Skipped: maldives.jpg (a screenshot of the login screen).
    Source("sddm-theme-maldives", "/usr/share/sddm/themes/maldives", jpgs("background"), 3, "maldives"),
    # Lossless PNGs. Skipped: the flower's JPEG and bit-depth variants (copies of the same photo),
    # raw.pixls (64 px crops), wide-gamut-tests (synthetic), the grayscale and alpha copies.
    Source("libjxl-testdata", "/usr/share/libjxl-testdata/jxl/flower", ("flower.png",), 2, "jxl"),
    Source(
        "libjxl-testdata", "/usr/share/libjxl-testdata/external/wesaturate/500px",
        ("cvo9xd_keong_macan_srgb8.png", "tmshre_riaphotographs_srgb8.png", "u76c0g_bliznaca_srgb8.png"),
        1, "jxl",
    ),
    # Scratch's stage backgrounds: 480x360 at quality 86-99, the only source of streets, buildings
    # and rooms. Shrunk 1.5x to 320x240 to hide the compression, below the 400 px of the others.
    # Skipped: the drawings (bedroom*, party-room, room1-3, spotlight-stage, woods-and-bench,
    # school*, brick-wall1, night-city*, train-tracks3, basketball-court2, desert, underwater,
    # woods, stars, xy-grid), flowers.gif (256 colours), boardwalk (composite), graffiti (blurred),
    # basketball-court1-a and -b (background blurred by editing).
    Source(
        "scratch", "/usr/share/scratch/Media/Backgrounds",
        jpgs("chalkboard", "clothing-store", "hall", "kitchen", "the-movies-inside", under="Indoors/")
        + jpgs(
            "beach-malibu", "canyon", "flower-bed", "forest", "garden-rock", "grand-canyon",
            "gravel-desert", "hill", "lake", "moon", "pathway", "tree", "water-and-rocks", "wave",
            under="Nature/",
        )
        + jpgs(
            "all-sports-mural", "atom-playground", "bench-with-view", "berkeley-mural",
            "brick-wall-and-stairs", "brick-wall2", "building-at-mit", "building-fireproof", "castle",
            "city-with-water", "city-with-water2", "driveway", "hallway_outdoors", "hay_field",
            "houses", "mansion", "mural-faro", "parking-ramp", "pool", "route66", "silos",
            "the-movies", "train-tracks1", "train-tracks2", "village", "wooden-house",
            under="Outdoors/",
        )
        + jpgs("baseball-field", "football-field", "playing-field", "tennis-backboard", under="Sports/"),
        1.5, "scratch", min_side=240,
    ),
)
SETS = {"v1": V1_SOURCES, "v2": V2_SOURCES}

# Colour photographs; gray, synthetic and microscopy/medical/astronomy images skipped.
SKIMAGE_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle"]
HELDOUT_NAMES = ("china", "flower")
HELDOUT_GRAY = ["camera", "coins", "moon", "grass", "gravel", "brick"]


def debian_files(
    sources: tuple[Source, ...], roots: list[pathlib.Path]
) -> dict[str, tuple[pathlib.Path, Source]]:
    """Return {output name: (file, source)}; exit with an install hint if any is missing."""
    found, missing = {}, {}
    for source in sources:
        for name, path in source.files(roots).items():
            if path is None:
                missing.setdefault(source.package, []).append(name)
            else:
                assert name not in found, f"two sources write {name}"
                found[name] = (path, source)
    if missing:
        names = [name for names in missing.values() for name in names]
        packages = " ".join(missing)
        sys.exit(
            f"missing {len(names)} photos ({', '.join(names[:3])}, ...) of {packages}.\n"
            f"Install them with: apt-get install -y {packages}\n"
            f"or unpack them without installing: apt-get download {packages}; "
            f"then dpkg-deb -x each .deb into DIR and pass --unpacked DIR"
        )
    return found


def downscale(image: Image.Image, factor: float) -> Image.Image:
    """Shrink by `factor` with an antialiasing filter; an integer factor crops to a multiple of it
    first, so that each output pixel covers exactly factor x factor input pixels."""
    if float(factor).is_integer():
        k = int(factor)
        width, height = image.width // k, image.height // k
        image = image.crop((0, 0, k * width, k * height))
    else:
        width, height = round(image.width / factor), round(image.height / factor)
    return image.resize((width, height), Image.LANCZOS)


def shrink_factor(size: tuple[int, int], source: Source) -> float | None:
    """The source's factor, or less where that would take the short side under its min_side;
    None if the photo is under min_side already."""
    most = min(size) / source.min_side
    return None if most < 1 else min(float(source.factor), most)


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


def debian_photo(path: pathlib.Path, source: Source) -> Image.Image | None:
    """The photo shrunk for training, or None if it is too small; prints which file it takes."""
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    factor = shrink_factor(image.size, source)
    if factor is None:
        print(f"note: skipping {path} ({image.width}x{image.height}, under {source.min_side} px)")
        return None
    shrunk = downscale(image, factor) if factor > 1 else image
    print(
        f"take {path} ({source.package}, {image.width}x{image.height}, "
        f"/{factor:.2f} -> {shrunk.width}x{shrunk.height})"
    )
    return shrunk


def build_training(out: pathlib.Path, files: dict, scales: list[float]) -> list[tuple[int, int]]:
    sizes = []
    for name, (path, source) in files.items():
        image = debian_photo(path, source)
        if image is not None:
            sizes += save_scaled(image, out, name, scales)
    for name in SKIMAGE_PHOTOS:
        print(f"take skimage.data.{name}() (scikit-image, as it is)")
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
    parser.add_argument(
        "--set", choices=SETS, default="v1",
        help="training set: v1, the bundled model's 28 photos, or v2, 156 photos (default v1)",
    )
    parser.add_argument(
        "--out", type=pathlib.Path,
        help="training set folder (default data/photos, or data/photos-v2 for --set v2)",
    )
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
        "--unpacked", type=pathlib.Path, metavar="DIR",
        help="also look for the packages' files in DIR, where .deb files were unpacked with "
        "dpkg-deb -x (default: installed files only)",
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
        roots = [pathlib.Path("/")] + ([args.unpacked] if args.unpacked else [])
        files = debian_files(SETS[args.set], roots)  # check before touching out
        out = args.out or DATA / ("photos" if args.set == "v1" else f"photos-{args.set}")
        kind, build = "training", lambda out: build_training(out, files, args.scales)
    prepare_out(out, args.force)
    sizes = build(out)
    sizes.sort(key=math.prod)
    print(
        f"wrote {len(sizes)} {kind} photos (PNG) to {out}; sizes from "
        f"{sizes[0][0]}x{sizes[0][1]} to {sizes[-1][0]}x{sizes[-1][1]}"
    )


if __name__ == "__main__":
    main()
