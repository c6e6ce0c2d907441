"""Scoring x4 (or any x s) super-resolution against ground truth, the way SR papers do.

The convention (SRCNN, Dong et al. 2014; EDSR, Lim et al. 2017; and the MATLAB scripts behind them):

- The HR image is cropped, top-left anchored, to a multiple of the scale.
- LR is PIL's antialiased bicubic downsampling of that HR; the baseline is PIL's bicubic upsampling
  of LR back to HR size. For real-world inputs the LR may then be degraded (saved as a JPEG, or given
  noise: `degrade.Condition`) before both the baseline and the model upscale it.
- PSNR and SSIM are measured on the Y channel of ITU-R BT.601 YCbCr as MATLAB's `rgb2ycbcr` defines
  it (Y in [16, 235], not rounded), with `scale` pixels cropped from every side, data range 255.
- SSIM is Wang et al. 2004: an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, 'valid'
  filtering (no padding), averaged over the map.
- PSNR is capped at 100 dB (`PSNR_CAP`): a perfect match would be infinite and make every mean infinite.

PSNR rewards the average of all plausible details, which is smooth. `Scores.detail` says how much fine
detail an output has: its Y channel's power above half the Nyquist frequency (Hann-windowed, same border
crop) as a share of the original's. Bicubic upsampling scores far below 1, the original 1.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from diffgen.degrade import Condition
from diffgen.errors import DiffgenError, ImageError
from diffgen.events import Advance
from diffgen.images import open_image, to_mode

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
PSNR_CAP = 100.0  # dB; an error of 0.003 grey levels (RMS) at data range 255



def rgb_to_y(img: Image.Image) -> np.ndarray:
    """BT.601 luma of an image as MATLAB's rgb2ycbcr: float64 (H, W) in [16, 235].

    Grey images count as R = G = B; alpha is ignored.
    """
    rgb = np.asarray(to_mode(img, 3), dtype=np.float64) / 255
    return 16 + rgb @ np.array([65.481, 128.553, 24.966])


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB, at most `PSNR_CAP` (identical arrays)."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, float(10 * np.log10(data_range**2 / mse)))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """A normalised 1-D Gaussian of `size` taps."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of (H, W) by g along both axes -> (H-k+1, W-k+1)."""
    x = sliding_window_view(x, len(g), axis=1) @ g
    return sliding_window_view(x, len(g), axis=0) @ g


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean structural similarity of two (H, W) arrays (Wang et al. 2004, eq. 13), no padding."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2 or min(a.shape) < SSIM_WINDOW:
        raise ValueError(f"ssim needs two equal (H, W) arrays of at least {SSIM_WINDOW}x{SSIM_WINDOW}; "
                         f"got {a.shape} and {b.shape}")
    g = gaussian_window()
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = filter_valid(a, g), filter_valid(b, g)
    var_a = filter_valid(a * a, g) - mu_a**2
    var_b = filter_valid(b * b, g) - mu_b**2
    cov = filter_valid(a * b, g) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def crop_to_multiple(img: Image.Image, scale: int) -> Image.Image:
    """Crop the right and bottom edges so both sides are multiples of `scale`."""
    w, h = img.size
    return img.crop((0, 0, w - w % scale, h - h % scale))


def make_lowres(hr: Image.Image, scale: int) -> Image.Image:
    """The LR input: antialiased bicubic downsampling of an HR image (crop it to a multiple first)."""
    w, h = hr.size
    return hr.resize((w // scale, h // scale), Image.Resampling.BICUBIC)


def bicubic_upscale(lr: Image.Image, scale: int) -> Image.Image:
    """The baseline: bicubic upsampling of LR by `scale`."""
    w, h = lr.size
    return lr.resize((w * scale, h * scale), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class Scores:
    psnr: float  # dB on Y, border cropped
    ssim: float  # on Y, border cropped
    detail: float  # high-frequency power of Y over the original's


def score(sr: Image.Image, hr: Image.Image, scale: int) -> Scores:
    """PSNR and SSIM of an upscaled image against ground truth, on Y with `scale` pixels of border cropped."""
    if sr.size != hr.size:
        raise ValueError(f"cannot score a {sr.size[0]}x{sr.size[1]} output against a {hr.size[0]}x{hr.size[1]} image")
    b = scale
    y_sr, y_hr = rgb_to_y(sr)[b:-b, b:-b], rgb_to_y(hr)[b:-b, b:-b]
    return Scores(psnr(y_sr, y_hr), ssim(y_sr, y_hr), high_frequency_power(y_sr) / max(high_frequency_power(y_hr), 1e-12))


def high_frequency_power(y: np.ndarray) -> float:
    """Mean power of a (H, W) array's spectrum above half the Nyquist frequency along either axis, after
    a Hann window (so the image's edges do not leak into every frequency)."""
    h, w = y.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2((y - y.mean()) * window)) ** 2
    fy, fx = np.abs(np.fft.fftfreq(h))[:, None], np.abs(np.fft.fftfreq(w))[None, :]
    return float(power[(fy > 0.25) | (fx > 0.25)].mean())


@dataclass(frozen=True)
class EvalRow:
    name: str  # file name, or "mean"
    bicubic: Scores  # the bicubic baseline
    model: Scores  # the upscaler under test
    seconds: float  # time spent in the upscaler
    note: str | None = None  # what the upscaler says of its output (its PIL info "note"), e.g. the model it chose


def evaluate(
    upscale: Callable[[Image.Image], Image.Image],
    hr_paths: list[Path],
    scale: int,
    callback: Advance | None = None,
    on_error: Callable[[DiffgenError], None] | None = None,
    condition: Condition = Condition("clean"),
) -> list[EvalRow]:
    """Score `upscale` and the bicubic baseline on LR versions of the given ground-truth images, each
    degraded by `condition` (e.g. saved as a JPEG) before both upscale it.

    A file that cannot be scored raises, or with `on_error` is passed to it and left out of the rows.
    """
    rows = []
    for i, path in enumerate(hr_paths):
        try:
            rows.append(evaluate_one(upscale, path, scale, condition))
        except DiffgenError as e:
            if on_error is None:
                raise
            on_error(e)
        if callback is not None:
            callback(i + 1, len(hr_paths))
    return rows


def evaluate_one(upscale: Callable[[Image.Image], Image.Image], path: Path, scale: int,
                 condition: Condition = Condition("clean")) -> EvalRow:
    hr = crop_to_multiple(to_mode(open_image(path), 3), scale)  # RGB; 16-bit grey scaled, not clipped
    smallest = SSIM_WINDOW + 2 * scale  # an SSIM window must fit inside the cropped border
    if min(hr.size) < smallest:
        raise ImageError(f"{path}: {hr.width}x{hr.height} is too small to score at x{scale}; "
                         f"use images of at least {smallest}x{smallest} pixels")
    lr = condition.apply(make_lowres(hr, scale), seed=zlib.crc32(Path(path).name.encode()))
    start = time.perf_counter()
    sr = upscale(lr)
    seconds = time.perf_counter() - start
    return EvalRow(Path(path).name, score(bicubic_upscale(lr, scale), hr, scale), score(sr, hr, scale), seconds,
                   sr.info.get("note"))


def mean_scores(scores: list[Scores]) -> Scores:
    return Scores(*(float(np.mean([getattr(s, f) for s in scores])) for f in ("psnr", "ssim", "detail")))


def mean_row(rows: list[EvalRow]) -> EvalRow:
    """A row named "mean": PSNR and SSIM averaged over images, seconds summed."""
    if not rows:
        raise ValueError("mean_row needs at least one row")
    return EvalRow("mean", mean_scores([r.bicubic for r in rows]), mean_scores([r.model for r in rows]),
                   sum(r.seconds for r in rows))
