"""Training data: a folder of images, where sub-folders are classes.

Every batch is a pure function of (seed, batch number): `DataOrder` gives the image indices of each
batch (a fresh permutation per epoch) and `batch_generator` the randomness of its crops, flips and
noise. So resuming needs only the step, data-loader workers can run ahead safely, and every rank of a
distributed run draws the same global batch and takes its own slice.

Small data sets are decoded once and kept in memory (`Dataset.images`); large ones are decoded on the
fly by DataLoader workers (`FileImages`). Both go through `prepare` and `shrunk_crop`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from diffgen.enums import Crop
from diffgen.errors import DataError, ImageError
from diffgen.images import IMAGE_SUFFIXES, channels_of, open_image, pil_to_tensor, to_mode
from diffgen.seeds import derived_seed

Warn = Callable[[str], None]


@dataclass(frozen=True)
class Prep:
    """How a file becomes a training image."""

    channels: int  # 1, 3 or 4
    size: int  # side of the square training crop
    crop: Crop  # centre crop once, or a random crop each time
    resize: bool  # scale the shorter side to `size` first (generation); off for upscaling (HR crops)


def find_images(root: Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """Image files under `root` (recursively) with their class index; classes are the sub-folders."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; pass a folder of images")
    is_image = lambda p: p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        files = sorted(p for p in root.rglob("*") if is_image(p))
        if not files:
            raise DataError(f"{root}: no images found; put .png/.jpg/.webp files (or one sub-folder per class) in it")
        return files, [0] * len(files), ()
    files, labels = [], []
    for i, d in enumerate(class_dirs):
        found = sorted(p for p in d.rglob("*") if is_image(p))
        if not found:
            raise DataError(f"{d}: class folder with no images; add images or remove the folder")
        files += found
        labels += [i] * len(found)
    loose = sorted(p for p in root.iterdir() if is_image(p))
    if loose:
        raise DataError(f"{loose[0]}: images beside class folders; move them into a class folder")
    return files, labels, tuple(d.name for d in class_dirs)


def resize_short_side(img: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is `size` (antialiased)."""
    scale = size / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    return img if (w, h) == img.size else img.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=3.0)


def prepare(path: Path, prep: Prep) -> Tensor:
    """Decode a file into the uint8 (C, H, W) tensor that crops are taken from."""
    img = to_mode(open_image(path), prep.channels)
    if prep.resize:
        img = resize_short_side(img, prep.size)
    elif min(img.size) < prep.size:
        raise ImageError(f"{path}: {img.width}x{img.height} is smaller than --image-size {prep.size}")
    x = pil_to_tensor(img)
    if prep.crop is Crop.CENTER:
        top, left = (x.shape[1] - prep.size) // 2, (x.shape[2] - prep.size) // 2
        x = x[:, top : top + prep.size, left : left + prep.size]
    return x


def decoded_bytes(width: int, height: int, prep: Prep) -> int:
    """Memory that `prepare` will use for an image of this size."""
    if prep.crop is Crop.CENTER:
        return prep.channels * prep.size**2
    scale = prep.size / min(width, height) if prep.resize else 1.0
    return prep.channels * round(width * scale) * round(height * scale)


def crop_at(x: Tensor, uy: float, ux: float, size: int) -> Tensor:
    """The size x size crop of (C, H, W) at relative position (uy, ux) in [0, 1)."""
    h, w = x.shape[-2:]
    top, left = int(uy * (h - size + 1)), int(ux * (w - size + 1))
    return x[:, top : top + size, left : left + size]


def shrunk_crop(x: Tensor, uy: float, ux: float, size: int, factor: float) -> Tensor:
    """The size x size crop of uint8 (C, H, W) at (uy, ux), as it would be in the image shrunk by `factor`
    (at most 1): a larger crop, shrunk with antialiased bicubic resampling and rounded back to 8 bits."""
    side = min(round(size / factor), *x.shape[-2:])
    crop = crop_at(x, uy, ux, side)
    if side == size:
        return crop
    small = F.interpolate(crop[None].float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return small[0].round().clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class Dataset:
    files: list[Path]
    labels: Tensor  # (N,) long; all zero for an unconditional set
    class_names: tuple[str, ...]  # empty for an unconditional set
    prep: Prep
    images: list[Tensor] | None  # decoded images when kept in memory, else None (streamed)
    skipped: tuple[str, ...]  # unreadable files, with the reason

    def __len__(self) -> int:
        return len(self.files)


def open_dataset(
    root: Path,
    *,
    size: int,
    channels: int | None = None,
    crop: Crop = Crop.CENTER,
    resize: bool = True,
    memory_limit: int = 2 << 30,
    warn: Warn | None = None,
) -> Dataset:
    """Index a folder, check every file, and decode it into memory if it fits in `memory_limit` bytes.

    Unreadable files are skipped and reported through `warn`; channels default to the most common count.
    """
    files, labels, class_names = find_images(root)
    skipped: list[str] = []

    def skip(e: ImageError) -> None:
        skipped.append(str(e))
        if warn:
            warn(f"skipping {e}")

    headers = []  # (path, label, width, height, channels)
    for path, label in zip(files, labels):
        try:
            img = open_image(path, decode=False)
        except ImageError as e:
            skip(e)
            continue
        headers.append((path, label, img.width, img.height, channels_of(img)))
    if not headers:
        raise DataError(f"{root}: none of the {len(files)} files could be read as an image")
    prep = Prep(channels or common_channels([h[4] for h in headers], warn), size, crop, resize)
    checked = [(path, label) for path, label, *_ in headers]
    images = None
    if sum(decoded_bytes(w, h, prep) for _, _, w, h, _ in headers) <= memory_limit:
        images, decoded = [], []
        for path, label in checked:
            try:
                images.append(prepare(path, prep))
                decoded.append((path, label))
            except ImageError as e:
                skip(e)
        checked = decoded
    missing = sorted(set(range(len(class_names))) - {label for _, label in checked})
    if missing:
        raise DataError(f"{Path(root) / class_names[missing[0]]}: no readable images in this class folder")
    paths = [p for p, _ in checked]
    return Dataset(paths, torch.tensor([lab for _, lab in checked]), class_names, prep, images, tuple(skipped))


CHANNEL_NAMES = {1: "grey", 3: "colour", 4: "colour with transparency"}


def common_channels(counts: list[int], warn: Warn | None) -> int:
    """The channel count most images have (the larger one on a tie), so that a grey first file does not
    turn a colour data set grey; when the images disagree, `warn` says what was chosen."""
    tally = Counter(counts)
    chosen = max(tally, key=lambda c: (tally[c], c))
    others = len(counts) - tally[chosen]
    if others and warn:
        converted = ", ".join(f"{n} {CHANNEL_NAMES[c]} image{'s' * (n > 1)}" for c, n in sorted(tally.items()) if c != chosen)
        warn(f"{chosen} channels ({CHANNEL_NAMES[chosen]}), as {tally[chosen]} of the {len(counts)} images have; "
             f"{converted} {'is' if others == 1 else 'are'} converted; pass --channels to choose")
    return chosen


class DataOrder:
    """Which images make up global micro-batch k: the data in a fresh random order every epoch.

    The epochs' permutations are laid end to end and cut into batches, so a batch may span two epochs
    (or several, when there are fewer images than a batch, as upscaling crops allow).
    """

    def __init__(self, n: int, batch: int, seed: int):
        self.n, self.batch, self.seed = n, batch, seed
        self._perms: dict[int, Tensor] = {}

    def perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(derived_seed(self.seed, epoch, 0))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, k: int) -> Tensor:
        start, stop = k * self.batch, (k + 1) * self.batch
        parts = []
        for epoch in range(start // self.n, (stop - 1) // self.n + 1):
            lo, hi = max(start, epoch * self.n), min(stop, (epoch + 1) * self.n)
            parts.append(self.perm(epoch)[lo - epoch * self.n : hi - epoch * self.n])
        return torch.cat(parts)


class FileImages(torch.utils.data.Dataset):
    """Decode-on-demand images for DataLoader workers: an item (index, uy, ux, shrink factor) gives
    (uint8 crop, or None when no file could be decoded; the messages of the files that failed)."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: tuple[int, float, float, float]) -> tuple[Tensor | None, list[str]]:
        i, uy, ux, factor = item
        failed = []
        for attempt in range(len(self.data)):
            path = self.data.files[(i + attempt) % len(self.data)]
            try:
                return shrunk_crop(prepare(path, self.data.prep), uy, ux, self.data.prep.size, factor), failed
            except ImageError as e:
                # Headers were checked up front; a file that fails to decode now is replaced by the next.
                # The workers cannot report it: the training process does, once per file.
                failed.append(str(e))
        return None, failed


def collate_crops(items: list[tuple[Tensor | None, list[str]]]) -> tuple[Tensor | None, list[str]]:
    """A DataLoader batch of `FileImages` items: (stacked crops, or None if any is missing; all failures)."""
    crops = [crop for crop, _ in items]
    failed = [message for _, messages in items for message in messages]
    return (None if any(c is None for c in crops) else torch.stack(crops)), failed
