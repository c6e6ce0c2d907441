"""The choices diffgen's settings take, as enums that import nothing heavy.

The core and the command line share these: Typer takes them as option types directly, and `--help`
stays fast because this module does not import torch. A value is what files and the command line
spell (`Task.UPSCALE.value == "upscale"`); write `.value` in messages, as Python 3.11 formats a str
enum by its name.
"""

from __future__ import annotations

from enum import Enum


class Task(str, Enum):
    """What a model does."""

    GENERATE = "generate"
    UPSCALE = "upscale"


class Crop(str, Enum):
    """How a training image becomes a square: a centre crop once, or a random crop every time."""

    CENTER = "center"
    RANDOM = "random"


class Degrade(str, Enum):
    """What training does to an upscaler's low-resolution inputs (degrade.py)."""

    NONE = "none"  # clean bicubic downsamplings
    REAL = "real"  # random blur, resizing, noise and JPEG, as real photos have


class ScheduleKind(str, Enum):
    """The noise schedule (schedule.py)."""

    LINEAR = "linear"
    COSINE = "cosine"


class Prediction(str, Enum):
    """What the network outputs."""

    EPS = "eps"
    V = "v"
    X0 = "x0"


class Sampler(str, Enum):
    """Sampling methods (samplers.py)."""

    DDPM = "ddpm"
    DDIM = "ddim"
    DPMPP_2M = "dpm++2m"
    HEUN = "heun"
    UNIPC = "unipc"


class Spacing(str, Enum):
    """How a sampler's steps are spread over the timesteps (samplers.py)."""

    UNIFORM = "uniform"
    TRAILING = "trailing"
    KARRAS = "karras"
    LOGSNR = "logsnr"


class Precision(str, Enum):
    """The number format of the forward pass: auto picks bf16 where it is fast (checkpoint.with_precision)."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"


class ImageFormat(str, Enum):
    """Image formats by file suffix (images.FORMATS); options using it take any case (case_sensitive=False)."""

    PNG = "png"
    JPG = "jpg"
    JPEG = "jpeg"
    WEBP = "webp"
    TIFF = "tiff"
    TIF = "tif"
    BMP = "bmp"
