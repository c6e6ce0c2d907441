"""Sampling new images from a generation model, reproducibly image by image.

Image i of a run starts from noise drawn with its own seed, derived from the run's seed and i, so a
run of 4 images is a prefix of the same run with 16 (EDM's per-seed generators, Karras et al. 2022).
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from diffgen.checkpoint import LoadedModel
from diffgen.data import derived_seed
from diffgen.denoiser import make_denoiser
from diffgen.errors import ImageError, OptionError
from diffgen.images import FORMATS, make_grid, save_image, tensor_to_pil
from diffgen.samplers import Sampler, Spacing, randn_like, sample

Progress = Callable[[int, int], None]  # (images done, total)


@dataclass(frozen=True)
class Generated:
    image: Image.Image
    index: int  # position in the run
    seed: int  # the image's own seed
    label: int | None  # class index, None for an unconditional model


def image_seed(run_seed: int, index: int) -> int:
    """The seed of image `index` of a run: a hash, so neighbouring runs share no images."""
    return derived_seed(run_seed, index)


def class_index(class_names: tuple[str, ...], name: str) -> int:
    """A class given by name (in any case) or by index."""
    if name in class_names:
        return class_names.index(name)
    folded, wanted = [c.casefold() for c in class_names], name.casefold()
    if folded.count(wanted) == 1:
        return folded.index(wanted)
    if name.isdigit() and int(name) < len(class_names):
        return int(name)
    if not class_names:
        raise OptionError(f"--class {name}: the model is unconditional; leave out --class")
    near = [c for c in folded if c.startswith(wanted)] or difflib.get_close_matches(wanted, folded, n=1)
    hint = f"did you mean {class_names[folded.index(near[0])]}? " if near else ""
    raise OptionError(f"--class {name}: the model has no such class; {hint}choose from: {', '.join(class_names)}")


def sample_batch(
    loaded: LoadedModel,
    seeds: list[int],
    labels: list[int] | None,
    *,
    steps: int,
    sampler: Sampler = Sampler.DDIM,
    spacing: Spacing | None = None,
    guidance: float = 0.0,
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Sample one batch, image i from seeds[i] -> (B, C, H, W) in [-1, 1]."""
    spec, model = loaded.spec, loaded.model
    device = next(model.parameters()).device
    schedule = spec.make_schedule()
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    shape = (len(seeds), spec.channels, spec.image_size, spec.image_size)
    x = randn_like(torch.empty(shape, device=device), generators)
    y = None if labels is None else torch.tensor(labels, device=device)
    denoise = make_denoiser(
        model, schedule, spec.prediction, labels=y, guidance=guidance,
        null_label=spec.unet.num_classes, clip=1.0,
    )
    return sample(sampler, denoise, x, schedule, steps, spacing=spacing, generator=generators, callback=callback)


def generate_images(
    loaded: LoadedModel,
    n: int,
    *,
    classes: list[int] | None = None,
    seed: int = 0,
    steps: int = 10,
    sampler: Sampler = Sampler.UNIPC,
    spacing: Spacing | None = None,
    guidance: float = 0.0,
    batch_size: int = 16,
    callback: Progress | None = None,
) -> list[Generated]:
    """Sample n images. Classes cycle through `classes` (default: all of the model's classes)."""
    num_classes = len(loaded.spec.class_names)
    cycle = classes or list(range(num_classes))
    results = []
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        seeds = [image_seed(seed, i) for i in idx]
        labels = [cycle[i % len(cycle)] for i in idx] if num_classes else None
        batch = sample_batch(loaded, seeds, labels, steps=steps, sampler=sampler, spacing=spacing, guidance=guidance)
        for j, i in enumerate(idx):
            results.append(Generated(tensor_to_pil(batch[j]), i, seeds[j], labels[j] if labels else None))
        if callback:
            callback(len(results), n)
    return results


def output_paths(out_dir: Path, n: int, fmt: str) -> list[Path]:
    return [Path(out_dir) / f"{i:05d}.{fmt}" for i in range(n)]


def write_images(
    images: list[Generated],
    out_dir: Path,
    *,
    fmt: str = "png",
    info: dict[str, str],
    class_names: tuple[str, ...] = (),
    grid: Path | None = None,
) -> list[Path]:
    """Write numbered images (and optionally a grid) with the settings that made them in the PNG text."""
    if fmt not in FORMATS:
        raise OptionError(f"--format {fmt}: choose png, jpg or webp")
    paths = output_paths(out_dir, len(images), fmt)
    for g, path in zip(images, paths):
        text = {**info, "seed": str(g.seed), "index": str(g.index)}
        if g.label is not None:
            text |= {"class": str(g.label), "class_name": class_names[g.label] if class_names else str(g.label)}
        save_image(g.image, path, text=text)
    if grid is not None:
        save_image(make_grid(*grid_layout(images)), grid, text=info)
    return paths



MAX_GRID_ASPECT = 3  # a grid of a row per class may be this many times as long as wide, or as tall


def grid_layout(images: list[Generated]) -> tuple[list[Image.Image], int]:
    """The grid's images in order and its number of columns.

    A row per class when several classes have equally many images, two or more each, and those rows make a
    grid at most MAX_GRID_ASPECT times as long as wide; else a near-square grid in the order made."""
    counts = Counter(g.label for g in images)
    rows, per_row = len(counts), len(images) // len(counts)
    even = rows > 1 and None not in counts and len(set(counts.values())) == 1
    if even and per_row > 1 and max(rows, per_row) <= MAX_GRID_ASPECT * min(rows, per_row):
        by_class = sorted(images, key=lambda g: (g.label, g.index))
        return [g.image for g in by_class], per_row
    return [g.image for g in images], near_square_columns(len(images))


def near_square_columns(n: int) -> int:
    return math.isqrt(n - 1) + 1  # ceil(sqrt(n))


def check_outputs_free(out_dir: Path, n: int, fmt: str, grid: Path | None) -> None:
    """Refuse before sampling if any file the run would write already exists."""
    for path in output_paths(out_dir, n, fmt) + ([Path(grid)] if grid else []):
        if path.exists():
            raise ImageError(f"{path}: already exists; choose an empty --out folder")
