"""Diffusion super-resolution: sample the detail that bicubic upsampling misses.

The model works at low resolution (see `unet.py`, `pixel_shuffle`) and denoises the residual
HR - bicubic(LR), scaled by the model's `residual_scale` (the residual formulation of SRDiff, Li et
al. 2022). The conditioning image is the LR input itself.

`--samples K` averages K upscales, each of another mirror image or turn of the input (the self-ensemble
of Timofte et al. 2016 and EDSR+): the model's errors differ between views, so the average is closer
to the truth.

Large images are cut into overlapping LR tiles; each tile's output is weighted by a feathered
(linear ramp) mask and the weighted sum is normalised. Rows of tiles are finished one band at a time
into an 8/16-bit canvas on the CPU, so memory stays bounded by the output size plus one band. That peak is
estimated from the file's header before it is decoded (`estimate_memory`); an image that cannot fit is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
import torch.nn.functional as F
from torch import Tensor

from diffgen.checkpoint import LoadedModel
from diffgen.denoiser import make_denoiser
from diffgen.errors import ImageError, OptionError
from diffgen.events import Advance
from diffgen.images import (
    DEEP_GREY,
    carried_metadata,
    has_alpha,
    make_folder,
    merge_planes,
    open_image,
    save_image,
    split_planes,
)
from diffgen.memory import available_memory
from diffgen.provenance import model_identity
from diffgen.samplers import Sampler, randn_like, sample_ddim, sampler_grid
from diffgen.seeds import derived_seed
from diffgen.transforms import dihedral, undo_dihedral, upsample

# One step (the model's MMSE estimate) averaged over two mirror images beats two steps of one view, at
# the same cost, in PSNR and SSIM on both held-out sets (README).
DEFAULT_STEPS = 1
DEFAULT_SAMPLES = 2
DEFAULT_TILE = 192  # LR pixels
OVERLAP = 16  # LR pixels shared by neighbouring tiles
# Views of one tile sampled in one batch (a divisor of 4, so a batch never mixes the shapes of views 0-3 and
# 4-7): on an Intel Xeon with AMX, a pair's forward pass takes 13% less time per view than one view's and the
# default upscale 7% less, for twice the activations.
VIEW_BATCH = 2


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad the bottom and right edges of (B, C, H, W) by reflection up to a multiple of `multiple`."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


@dataclass(frozen=True)
class Sampling:
    """How each image (or tile) is sampled."""

    steps: int = DEFAULT_STEPS
    eta: float = 0.0  # DDIM η
    samples: int = DEFAULT_SAMPLES  # upscales averaged, of views 0, 1, ... of the input (`data.dihedral`), 8 at most
    seed: int = 0


MAX_SAMPLES = 8  # one per flip and turn: beyond them only the noise would differ

# `upscale --detail`: sampled texture (fur, foliage) instead of the most faithful average. Chosen on crops of
# training photos by benchmarks/upscale_detail.py: the bundled model's high-frequency power rises from 6% of
# the original's at the default to 18%, at +0.75 dB over bicubic instead of +1.6 (docs/upscale.md).
DETAIL = Sampling(steps=20, eta=1.0, samples=1)


def upscale_tensor(loaded: LoadedModel, lowres: Tensor, sampling: Sampling = Sampling()) -> Tensor:
    """Upscale a (B, C, h, w) batch in [-1, 1] by the model's scale in one piece -> (B, C, s·h, s·w).

    Views 0-3 are mirror images, which keep the tile's shape; 4-7 are transposed. A single image's views
    go through the network VIEW_BATCH at a time.
    """
    spec = loaded.spec
    s = spec.scale
    device = next(loaded.model.parameters()).device
    h, w = lowres.shape[-2:]
    lr = pad_to_multiple(lowres.to(device, torch.float32), spec.unet.size_multiple // s)
    base = upsample(lr, s)
    residual = torch.zeros_like(base)
    views = range(sampling.samples)
    per_pass = VIEW_BATCH if len(lr) == 1 else 1
    for first in range(0, len(views), per_pass):
        group = views[first : first + per_pass]
        seeds = [sampling.seed if k == 0 else derived_seed(sampling.seed, k) for k in group]
        sampled = sample_residual(loaded, torch.cat([dihedral(lr, k) for k in group]), sampling, seeds)
        for k, view in zip(group, sampled.split(len(lr))):
            residual += undo_dihedral(view, k)
    out = base + residual / (sampling.samples * spec.residual_scale)
    return out[..., : s * h, : s * w].clamp(-1, 1).cpu()


def sample_residual(loaded: LoadedModel, lr: Tensor, sampling: Sampling, seeds: list[int]) -> Tensor:
    """Samples of the scaled residual HR - bicubic(LR) for a padded LR batch of len(seeds) equal parts.

    Each part draws its noise from its own seed, so a view samples the same alone or beside others.
    """
    spec = loaded.spec
    schedule = spec.make_schedule()
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    generator = generators[0] if len(generators) == 1 else generators  # a list: one per batch element
    b, c, h, w = lr.shape
    x = randn_like(lr.new_empty(b, c, spec.scale * h, spec.scale * w), generator)
    denoise = make_denoiser(loaded.model, schedule, spec.prediction, cond=lr)
    ts = sampler_grid(Sampler.DDIM, schedule, sampling.steps)
    return sample_ddim(denoise, x, schedule, ts, eta=sampling.eta, generator=generator)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length) with at least `overlap` shared."""
    if length <= tile:
        return [0]
    n = -(-(length - overlap) // (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def ramp(length: int, fade: int, at_start: bool, at_end: bool) -> Tensor:
    """1-D feathering weights: linear ramps of `fade` samples at inner edges, 1 elsewhere."""
    w = torch.ones(length)
    r = (torch.arange(fade) + 0.5) / fade
    if at_start:
        w[:fade] = r
    if at_end:
        w[-fade:] = r.flip(0)
    return w


@dataclass(frozen=True)
class Tiling:
    ys: list[int]  # LR tile rows
    xs: list[int]  # LR tile columns
    tile: int  # LR tile side
    overlap: int  # LR pixels shared by neighbours

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


def plan_tiles(h: int, w: int, tile: int | None) -> Tiling:
    tile = tile or DEFAULT_TILE
    overlap = min(OVERLAP, tile // 4)
    return Tiling(tile_starts(h, tile, overlap), tile_starts(w, tile, overlap), tile, overlap)


def upscale_tiled(
    loaded: LoadedModel,
    lowres: Tensor,
    *,
    tile: int | None = None,
    sampling: Sampling = Sampling(),
    bits: int = 8,
    callback: Advance | None = None,
) -> np.ndarray:
    """Upscale a (C, h, w) image in [-1, 1] tile by tile -> (s·h, s·w, C) uint8 (or uint16) array."""
    s = loaded.spec.scale
    c, h, w = lowres.shape
    plan = plan_tiles(h, w, tile)
    peak = 2**bits - 1
    out = np.empty((s * h, s * w, c), np.uint16 if bits == 16 else np.uint8)
    band_top, band, weight = 0, None, None  # the unfinished rows [band_top, band_top + len(band))
    done = 0
    for iy, y in enumerate(plan.ys):
        th = min(plan.tile, h - y)
        bottom = s * (y + th)
        band, weight = grow_band(band, weight, bottom - band_top, s * w, c)
        for ix, x in enumerate(plan.xs):
            tw = min(plan.tile, w - x)
            tile_sampling = replace(sampling, seed=derived_seed(sampling.seed, iy, ix))
            sr = upscale_tensor(loaded, lowres[None, :, y : y + th, x : x + tw], tile_sampling)[0]
            fade = s * plan.overlap
            wy = ramp(s * th, fade, iy > 0, iy < len(plan.ys) - 1)
            wx = ramp(s * tw, fade, ix > 0, ix < len(plan.xs) - 1)
            mask = wy[:, None] * wx[None, :]
            rows = slice(s * y - band_top, s * y - band_top + s * th)
            cols = slice(s * x, s * (x + tw))
            band[rows, cols] += (sr.permute(1, 2, 0) * mask[:, :, None]).numpy()
            weight[rows, cols] += mask.numpy()
            done += 1
            if callback:
                callback(done, plan.count)
        # Rows above the next tile row's start are final: move them to the output canvas.
        final = s * plan.ys[iy + 1] - band_top if iy + 1 < len(plan.ys) else len(band)
        finished = band[:final] / weight[:final, :, None]
        out[band_top : band_top + final] = np.round((finished.clip(-1, 1) + 1) * (peak / 2)).astype(out.dtype)
        band, weight, band_top = band[final:], weight[final:], band_top + final
    return out


def grow_band(band, weight, rows: int, width: int, channels: int):
    """Extend the unfinished band (and its weights) with zero rows up to `rows` rows."""
    new_band = np.zeros((rows, width, channels), np.float32)
    new_weight = np.zeros((rows, width), np.float32)
    if band is not None:
        new_band[: len(band)] = band
        new_weight[: len(weight)] = weight
    return new_band, new_weight


def upscale_image(
    loaded: LoadedModel,
    img: Image.Image,
    *,
    tile: int | None = None,
    sampling: Sampling = Sampling(),
    callback: Advance | None = None,
) -> tuple[Image.Image, str | None]:
    """Upscale a Pillow image of any mode into one of the same kind; also returns a conversion note."""
    planes = split_planes(img)
    pixels = upscale_tiled(loaded, planes.colour, tile=tile, sampling=sampling, bits=planes.bits, callback=callback)
    return merge_planes(pixels, planes), planes.note


@dataclass(frozen=True)
class Upscaled:
    src: Path
    dst: Path
    size: tuple[int, int]  # output width, height
    note: str | None  # a conversion the user should know about


def upscale_file(
    loaded: LoadedModel,
    src: Path,
    dst: Path,
    *,
    tile: int | None = None,
    sampling: Sampling = Sampling(),
    overwrite: bool = False,
    quality: int = 95,
    width: int | None = None,
    height: int | None = None,
    callback: Advance | None = None,
    remake: str | None = None,
) -> Upscaled:
    """Upscale one image file into `dst`, keeping its kind (grey, alpha, 16-bit), ICC profile and PNG text.

    With `width` or `height`, the model's output is resampled (Lanczos) to that size, the aspect kept. `remake`,
    the command that makes the file again, is recorded in its PNG text (`diffgen reproduce` runs it)."""
    make_folder(dst.parent)  # before the work: a folder that cannot be made fails in a moment, not after it
    check_final_size(width, height)
    check_memory(loaded, src, open_image(src, decode=False), tile)
    img = open_image(src)
    target = final_size(img.size, loaded.spec.scale, width, height)  # upright: after the EXIF orientation
    out, note = upscale_image(loaded, img, tile=tile, sampling=sampling, callback=callback)
    if out.size != target:
        out = out.resize(target, Image.Resampling.LANCZOS)
    keep = carried_metadata(img, out.mode)
    text = keep.pop("text") | {"diffgen": f"upscale x{loaded.spec.scale}", **model_identity(loaded.path),
                               "steps": str(sampling.steps), "eta": str(sampling.eta), "samples": str(sampling.samples),
                               "seed": str(sampling.seed), "precision": loaded.precision}
    text |= {"remake": remake} if remake else {}
    lost = save_image(out, dst, text=text, overwrite=overwrite, quality=quality, **keep)
    return Upscaled(src, dst, out.size, "; ".join(n for n in (note, lost) if n) or None)


def final_size(size: tuple[int, int], scale: int, width: int | None, height: int | None) -> tuple[int, int]:
    """The output size of a `size` image: `scale` times larger, or `width` or `height` wide with the aspect kept."""
    check_final_size(width, height)
    w, h = size
    if width is not None:
        return width, max(1, round(h * width / w))
    if height is not None:
        return max(1, round(w * height / h)), height
    return w * scale, h * scale


def check_final_size(width: int | None, height: int | None) -> None:
    for option, value in (("--width", width), ("--height", height)):
        if value is not None and value < 1:
            raise OptionError(f"{option} {value}: must be at least 1")
    if width is not None and height is not None:
        raise OptionError("--width and --height: give one; the other follows from the image's aspect ratio")


# Memory of one pass (VIEW_BATCH views of a tile) through the U-Net on the CPU, in proportion to the tile's
# area and the network's width: a bound for a DEFAULT_TILE tile and 64 channels (the small preset), where a
# pair measured 0.36 GB in float32 and one view 0.21 GB (torch 2.13).
ACTIVATION_BYTES = 0.6e9
MEMORY_ENV = "DIFFGEN_MEMORY_GB"


def estimate_memory(width: int, height: int, *, scale: int, tile: int | None, deep: bool, alpha: bool,
                    base_channels: int, on_cpu: bool) -> int:
    """Bytes an upscale of a width x height image adds at its peak, beside the loaded model.

    The input and its float copy stay all along; the peak is the larger of two moments: while tiles are
    sampled (output canvas, the unfinished band of rows, the U-Net's activations) and while the canvas
    becomes an image (canvas, Pillow's 4 bytes a pixel, twice while an alpha channel is put in).
    """
    tile = tile or DEFAULT_TILE
    out_pixels = scale * scale * width * height
    canvas = out_pixels * 3 * (2 if deep else 1)
    band = 2 * 16 * scale * min(tile, height) * scale * width  # float colour + weight, copied as it grows
    activations = ACTIVATION_BYTES * min(tile, height) * min(tile, width) / DEFAULT_TILE**2 * base_channels / 64
    sampling = canvas + band + (activations if on_cpu else 0)
    merging = canvas + out_pixels * (9 if alpha else 4)
    return int(16 * width * height + max(sampling, merging))


def memory_budget() -> int | None:
    """Bytes an upscale may take: DIFFGEN_MEMORY_GB if set, else what the system has available (None: unknown)."""
    given = os.environ.get(MEMORY_ENV)
    if given is not None:
        try:
            return int(float(given) * 1e9)
        except ValueError:
            raise OptionError(f"{MEMORY_ENV}={given}: give the gigabytes diffgen may use, e.g. 32") from None
    return available_memory()


def check_memory(loaded: LoadedModel, src: Path, header: Image.Image, tile: int | None) -> None:
    """Refuse, before decoding it, an image whose upscale would not fit in memory (the OOM killer would end it)."""
    budget = memory_budget()
    if budget is None:
        return
    weights = next(loaded.model.parameters())
    s = loaded.spec.scale
    need = estimate_memory(header.width, header.height, scale=s, tile=tile, deep=header.mode in DEEP_GREY,
                           alpha=has_alpha(header), base_channels=loaded.spec.unet.base_channels,
                           on_cpu=weights.device.type == "cpu")
    if need > budget:
        raise ImageError(f"{src}: upscaling {header.width}x{header.height} at x{s} needs about {need / 1e9:.1f} GB of "
                         f"memory and {budget / 1e9:.1f} GB is available; upscale a smaller image (or parts of it), "
                         f"or set {MEMORY_ENV} to the gigabytes diffgen may use to try anyway")
