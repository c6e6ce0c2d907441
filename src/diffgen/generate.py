"""Sampling new images from a generation model, reproducibly image by image, and writing them as they come.

Image i of a run starts from noise drawn with its own seed, derived from the run's seed and i, and takes
the class at position i of the class cycle, so a run of 4 images is a prefix of the same run with 16, and
`--start 5 --n 1` remakes image 5 alone (EDM's per-seed generators, Karras et al. 2022). Images are
written batch by batch: an interrupted run keeps what it made, and a rerun continues the numbering.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from diffgen.checkpoint import LoadedModel, ModelSpec
from diffgen.denoiser import make_denoiser
from diffgen.errors import DiffgenError, ImageError, OptionError
from diffgen.events import Advance
from diffgen.images import FORMATS, make_folder, make_grid, max_pixels, save_image, tensor_to_pil
from diffgen.memory import available_memory
from diffgen.recipe import Recipe
from diffgen.samplers import Sampler, Spacing, randn_like, sample
from diffgen.seeds import derived_seed
from diffgen.text import size_text



@dataclass(frozen=True)
class Generated:
    image: Image.Image
    index: int  # position in the run
    seed: int  # the image's own seed
    label: int | None  # class index, None for an unconditional model


class GenerationInterrupted(DiffgenError):
    """Generation stopped on Ctrl-C; the message says what was written and the command that continues."""

    exit_code = 130


@dataclass(frozen=True)
class Share:
    """One process's share of a run under torchrun: every `world`-th batch, from batch `rank` on. A batch is
    made of the same images as in one process, so each image is computed, byte for byte, as one process does."""

    rank: int = 0
    world: int = 1

    def batches(self, start: int, n: int, batch_size: int) -> Iterator[list[int]]:
        firsts = range(start, start + n, batch_size)
        for first in firsts[self.rank :: self.world]:
            yield list(range(first, min(start + n, first + batch_size)))

    def size(self, start: int, n: int, batch_size: int) -> int:
        return sum(map(len, self.batches(start, n, batch_size)))


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


def guidance_of(
    spec: ModelSpec, guidance: float | None, interval: str | Sequence[float] | None,
) -> tuple[float, tuple[float, float] | None]:
    """The guidance weight and noise-level interval (None: all levels) a run uses: those given (--guidance,
    --guidance-interval LOW,HIGH or all), else the model's own."""
    weight = spec.guidance if guidance is None else guidance
    if interval is None:
        return weight, spec.guidance_interval
    return weight, parse_interval(interval)


def parse_interval(value: str | Sequence[float]) -> tuple[float, float] | None:
    """A --guidance-interval value, "LOW,HIGH" or (LOW, HIGH) noise levels, or "all" (None)."""
    if isinstance(value, str) and value.strip().casefold() == "all":
        return None
    try:
        low, high = (float(v) for v in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        low = high = math.nan
    if not (0 <= low < high):  # also refuses NaN
        shown = value if isinstance(value, str) else ",".join(map(str, value))
        raise OptionError(f"--guidance-interval {shown}: give two noise levels LOW,HIGH with 0 <= LOW < HIGH "
                          f"(e.g. 0.3,1.1), or all")
    return low, high


# --- sampling ---------------------------------------------------------------------------------------------

def sample_batch(
    loaded: LoadedModel,
    seeds: list[int],
    labels: list[int] | None,
    *,
    steps: int,
    sampler: Sampler = Sampler.DDIM,
    spacing: Spacing | None = None,
    guidance: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Sample one batch, image i from seeds[i] -> (B, C, H, W) in [-1, 1]; guidance only at noise levels σ in
    guidance_interval (None: at all)."""
    spec, model = loaded.spec, loaded.model
    device = next(model.parameters()).device
    schedule = spec.make_schedule()
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    shape = (len(seeds), spec.channels, spec.image_size, spec.image_size)
    x = randn_like(torch.empty(shape, device=device), generators)
    y = None if labels is None else torch.tensor(labels, device=device)
    denoise = make_denoiser(
        model, schedule, spec.prediction, labels=y, guidance=guidance, interval=guidance_interval,
        null_label=spec.unet.num_classes, clip=1.0,
    )
    return sample(sampler, denoise, x, schedule, steps, spacing=spacing, generator=generators, callback=callback)


def iter_images(
    loaded: LoadedModel,
    n: int,
    *,
    start: int = 0,
    classes: list[int] | None = None,
    seed: int = 0,
    steps: int = 10,
    sampler: Sampler = Sampler.UNIPC,
    spacing: Spacing | None = None,
    guidance: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    batch_size: int = 16,
    share: Share = Share(),
) -> Iterator[list[Generated]]:
    """Sample images start .. start+n-1 one batch at a time, so a long run never holds more than a batch.

    Classes cycle through `classes` (default: all of the model's classes) by image index. With a `share` of
    a torchrun job, only that process's batches."""
    num_classes = len(loaded.spec.class_names)
    cycle = classes or list(range(num_classes))
    for idx in share.batches(start, n, batch_size):
        seeds = [image_seed(seed, i) for i in idx]
        labels = [cycle[i % len(cycle)] for i in idx] if num_classes else None
        batch = sample_batch(loaded, seeds, labels, steps=steps, sampler=sampler, spacing=spacing, guidance=guidance,
                             guidance_interval=guidance_interval)
        yield [Generated(tensor_to_pil(x), i, s, labels[j] if labels else None)
               for j, (x, i, s) in enumerate(zip(batch, idx, seeds))]


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
    guidance_interval: tuple[float, float] | None = None,
    batch_size: int = 16,
    callback: Advance | None = None,
) -> list[Generated]:
    """Sample n images into memory. Classes cycle through `classes` (default: all of the model's classes)."""
    results = []
    for batch in iter_images(loaded, n, classes=classes, seed=seed, steps=steps, sampler=sampler, spacing=spacing,
                             guidance=guidance, guidance_interval=guidance_interval, batch_size=batch_size):
        results += batch
        if callback:
            callback(len(results), n)
    return results


# --- where a run writes ------------------------------------------------------------------------------------

IMAGE_NAME = re.compile(r"(\d{5,})\.(" + "|".join(FORMATS) + ")")


@dataclass(frozen=True)
class Outputs:
    """Where a run writes: images start .. start+n-1 as numbered files in `folder` (None: none), a grid."""

    folder: Path | None
    start: int
    n: int
    grid: Path | None = None
    overwrite: bool = False  # replace files that are there

    def image_path(self, index: int, fmt: str) -> Path:
        return Path(self.folder) / f"{index:05d}.{fmt}"


def next_index(folder: Path) -> int:
    """The number after the highest numbered image in `folder`, 0 for a new or empty one."""
    if not Path(folder).is_dir():
        return 0
    numbers = [int(m[1]) for name in os.listdir(folder) if (m := IMAGE_NAME.fullmatch(name))]
    return max(numbers, default=-1) + 1


def first_index(folder: Path | None, start: int | None, overwrite: bool) -> int:
    """Where the numbering starts: --start, else 0 with --overwrite, else after the images already there."""
    if start is not None:
        if start < 0:
            raise OptionError(f"--start {start}: must be 0 or more")
        return start
    return 0 if folder is None or overwrite else next_index(folder)


def check_outputs(outputs: Outputs, fmt: str, image_size: int) -> None:
    """Refuse before sampling if a file the run would write is there (unless replacing), a folder cannot be
    made, or the grid would be too big to hold."""
    if fmt not in FORMATS:
        raise OptionError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if outputs.grid is not None:
        check_grid_size(outputs, image_size)
        make_folder(Path(outputs.grid).parent, "--grid")
        if Path(outputs.grid).exists() and not outputs.overwrite:
            raise ImageError(f"{outputs.grid}: already exists; pass --overwrite to replace it or choose another --grid")
    if outputs.folder is None:
        return
    make_folder(outputs.folder, "--out")
    if outputs.overwrite:
        return
    there = set(os.listdir(outputs.folder))
    for index in range(outputs.start, outputs.start + outputs.n):
        if (path := outputs.image_path(index, fmt)).name in there:
            raise ImageError(f"{path}: already exists; pass --overwrite to replace it, choose another --out, or leave "
                             "out --start to number the new images after those there")


def check_grid_size(outputs: Outputs, image_size: int) -> None:
    """A grid over the pixel limit of images (DIFFGEN_MAX_PIXELS) would take gigabytes to hold and to write."""
    ncols = near_square_columns(outputs.n)
    side = image_size + GRID_PAD
    pixels = (ncols * side + GRID_PAD) * (-(-outputs.n // ncols) * side + GRID_PAD)
    if pixels > max_pixels():
        raise OptionError(f"--grid {outputs.grid}: {outputs.n} images of {image_size}x{image_size} make a grid of "
                          f"about {pixels:,} pixels, over the limit of {max_pixels():,}; use a smaller --n, leave "
                          "out --grid, or raise DIFFGEN_MAX_PIXELS")


# --- writing a run -----------------------------------------------------------------------------------------

def write_run(
    loaded: LoadedModel, recipe: Recipe, outputs: Outputs, *, batch_size: int = 16, callback: Advance | None = None,
    share: Share = Share(),
) -> int:
    """Sample a run (or this process's `share` of it) and write each batch as it is done, then the grid; returns
    the number of images made.

    On Ctrl-C what is written stays, and GenerationInterrupted says how many and the command that continues."""
    done, kept, total = 0, [], share.size(outputs.start, outputs.n, batch_size)
    try:
        for batch in iter_images(loaded, outputs.n, start=outputs.start, batch_size=batch_size, share=share,
                                 **recipe.sampling()):
            for g in batch:
                if outputs.folder is not None:  # else a grid alone
                    save_image(g.image, outputs.image_path(g.index, recipe.fmt), text=image_text(recipe, g),
                               overwrite=outputs.overwrite)
                done += 1  # one by one: a continued run must start right after the last image written
            kept += batch if outputs.grid is not None else []
            if callback:
                callback(done, total)
    except KeyboardInterrupt as e:  # Ctrl-C, or a signal the caller turned into one (its exit_code: 143 for SIGTERM)
        if share.world > 1:  # the processes' images are interleaved: rerunning the command redoes them all
            raise GenerationInterrupted(f"interrupted: the images written stay in {outputs.folder}; run the same "
                                        "command with --overwrite to make them all again") from None
        stopped = GenerationInterrupted(interrupted(recipe, outputs, written(outputs, recipe.fmt, done)))
        stopped.exit_code = getattr(e, "exit_code", GenerationInterrupted.exit_code)
        raise stopped from None
    if outputs.grid is not None:
        grid_text = recipe.text() | {"remake": recipe.command(outputs.start, outputs.n, "--grid", outputs.grid.name)}
        grid_image = make_grid(*grid_layout(kept), pad=GRID_PAD)
        save_image(grid_image, outputs.grid, text=grid_text, overwrite=outputs.overwrite)
    return done


def written(outputs: Outputs, fmt: str, done: int) -> int:
    """How many images an interrupted run wrote: `done`, and one more if Ctrl-C came just as it was linked into
    place (without --overwrite the run checked that these names were free, so a file there is its own)."""
    if outputs.folder is None or outputs.overwrite:
        return done
    while done < outputs.n and outputs.image_path(outputs.start + done, fmt).exists():
        done += 1
    return done


def image_text(recipe: Recipe, g: Generated) -> dict[str, str]:
    """What a PNG records: the run's settings, the image's seed, index and class, and the command that remakes it."""
    text = {**recipe.text(), "seed": str(g.seed), "index": str(g.index)}
    if g.label is not None:
        text |= {"class": str(g.label), "class_name": recipe.class_names[g.label]}
    return text | {"remake": recipe.command(g.index, 1)}


def interrupted(recipe: Recipe, outputs: Outputs, done: int) -> str:
    """What an interrupted run says: what it kept and how to go on."""
    if outputs.folder is None:
        return "interrupted before the grid was written, which happens at the end; nothing was written"
    kept = f" ({index_span(outputs.start, done)})" if done else ""
    no_grid = "; the grid, written at the end, was not" if outputs.grid is not None else ""
    extra = ["--out", str(outputs.folder)] + (["--overwrite"] if outputs.overwrite else [])
    go_on = recipe.command(outputs.start + done, outputs.n - done, *extra)
    return (f"interrupted: {done} of {outputs.n} images written{kept} in {outputs.folder}{no_grid}; "
            f"continue with: {go_on}")


def index_span(start: int, n: int) -> str:
    """'image 5' or 'images 16-31'."""
    return f"image {start}" if n == 1 else f"images {start}-{start + n - 1}"


GRID_PAD = 2  # pixels between the images of a grid and around them
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


# --- memory ------------------------------------------------------------------------------------------------

MEMORY_SHARE = 0.8  # of the free memory one batch may take: the rest is allocator slack and everything else
WORKING_COPIES = 4  # tensors the size of a block's input plus output alive at once (about 3.5 measured on a CPU)


def image_bytes(spec: ModelSpec, *, guided: bool = False) -> int:
    """Estimated peak memory of one image in one denoising pass, from the U-Net's shape.

    The skip tensors the down path keeps for the up path, plus the working tensors of the largest block,
    in float32 (an upper bound under bf16 autocast). Guidance runs each image twice."""
    cfg = spec.unet
    side = spec.image_size // cfg.pixel_shuffle
    widths = [cfg.base_channels * m for m in cfg.channel_mults]
    areas = [(side >> level) ** 2 for level in range(len(widths))]
    skips = (widths[0] * areas[0] + sum(cfg.num_res_blocks * w * a for w, a in zip(widths, areas))
             + sum(w * a for w, a in zip(widths[:-1], areas[1:])))  # conv_in, res blocks, downsamples
    # An up block takes the level below's output joined with a skip and gives its own level's width.
    below = widths[1:] + widths[-1:]
    block = max((b + 2 * w) * a for w, b, a in zip(widths, below, areas))
    return 4 * (skips + WORKING_COPIES * block) * (2 if guided else 1)


def fit_batch_size(loaded: LoadedModel, batch_size: int, n: int, *, guided: bool) -> tuple[int, str | None]:
    """The batch size to sample with, and a note when it is fewer images than asked because a batch would not fit
    in free memory. Refuses when not even one image fits."""
    device = next(loaded.model.parameters()).device
    batch, free = min(batch_size, n), available_memory(device)
    per_image = image_bytes(loaded.spec, guided=guided)
    if free is None or per_image * batch <= free * MEMORY_SHARE:
        return batch, None
    fits = int(free * MEMORY_SHARE // per_image)
    if fits < 1:
        raise DiffgenError(f"one image of this model needs about {size_text(per_image)} of memory and "
                           f"{size_text(free)} is free on {device}; free some memory or use a machine with more")
    return fits, (f"--batch-size {batch_size}: a batch would need about {size_text(per_image * batch)} and "
                  f"{size_text(free)} is free on {device}; using --batch-size {fits}")
