"""Training data: a folder of images, where sub-folders are classes.

Small data sets are decoded once into memory. `ImageFolder` holds the decoded images; `batches`
draws shuffled batches for generation models and `upscale_pairs` makes (HR crop, LR) pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from diffgen.errors import DataError, ImageError
from diffgen.images import IMAGE_SUFFIXES, channels_of, open_image, pil_to_tensor, to_mode

Warn = Callable[[str], None]


@dataclass(frozen=True)
class ImageFolder:
    images: list[Tensor]  # uint8 (C, H, W) each
    labels: Tensor  # (N,) long; all zero for an unconditional set
    class_names: tuple[str, ...]  # empty for an unconditional set
    skipped: tuple[str, ...]  # files that could not be read, with the reason

    @property
    def channels(self) -> int:
        return self.images[0].shape[0]


def find_images(root: Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """Image files under `root` with their class index; classes are the sub-folders (sorted)."""
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
    loose = [p for p in root.iterdir() if is_image(p)]
    if loose:
        raise DataError(f"{loose[0]}: images beside class folders; move them into a class folder")
    return files, labels, tuple(d.name for d in class_dirs)


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Scale the shorter side to `size` (antialiased), then take the centre square."""
    scale = size / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=3.0) if (w, h) != img.size else img
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_folder(
    root: Path, *, channels: int | None = None, image_size: int | None = None, warn: Warn | None = None
) -> ImageFolder:
    """Decode every image under `root`. With `image_size`, each is resized and centre-cropped to it.

    Unreadable files are skipped and reported through `warn`; channels default to what the first
    readable image has.
    """
    files, labels, class_names = find_images(root)
    images, kept, skipped = [], [], []
    for path, label in zip(files, labels):
        try:
            img = open_image(path)
        except ImageError as e:
            skipped.append(str(e))
            if warn:
                warn(f"skipping {e}")
            continue
        channels = channels or channels_of(img)
        img = to_mode(img, channels)
        if image_size:
            img = resize_center_crop(img, image_size)
        images.append(pil_to_tensor(img))
        kept.append(label)
    if not images:
        raise DataError(f"{root}: none of the {len(files)} files could be read as an image")
    missing = sorted(set(range(len(class_names))) - set(kept))
    if missing:
        raise DataError(f"{Path(root) / class_names[missing[0]]}: no readable images in this class folder")
    return ImageFolder(images, torch.tensor(kept), class_names, tuple(skipped))


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image of a (B, C, H, W) batch left-right with probability 1/2."""
    flip = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def downsample(hr: Tensor, scale: int) -> Tensor:
    """Antialiased bicubic downsampling by an integer factor (the LR half of an SR pair)."""
    h, w = hr.shape[-2:]
    return F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)


def upsample(lr: Tensor, scale: int) -> Tensor:
    """Bicubic upsampling by an integer factor: the baseline an upscaler improves on."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)


def random_crops(images: list[Tensor], index: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """One random size x size crop from each chosen image -> uint8 (B, C, size, size)."""
    crops = []
    for i in index.tolist():
        img = images[i]
        h, w = img.shape[-2:]
        top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
        crops.append(img[:, top : top + size, left : left + size])
    return torch.stack(crops)
