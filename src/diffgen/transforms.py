"""Image transforms that training and inference share.

Bicubic down- and upsampling (how an LR image is made from an HR one, and the base the upscaler's
residual is added to), rounding to the 256 levels of an 8-bit file, and the 8 flips and quarter turns
(training augmentation, and the views `upscale --samples` averages). Tensors are (B, C, H, W) in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_flip(x: Tensor, flip: Tensor) -> Tensor:
    """Mirror the images of (B, C, H, W) where `flip` (B,) is true."""
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_dihedral(x: Tensor, k: Tensor) -> Tensor:
    """Apply one of the 8 flips and quarter turns to each square image of (B, C, H, W): k (B,) in 0..7."""
    x = torch.where((k & 1).bool()[:, None, None, None], x.flip(-1), x)
    x = torch.where((k & 2).bool()[:, None, None, None], x.flip(-2), x)
    return torch.where((k & 4).bool()[:, None, None, None], x.transpose(-1, -2), x)


def dihedral(x: Tensor, k: int) -> Tensor:
    """Flip and turn (..., H, W) as `random_dihedral` does for k: bit 0 mirrors, bit 1 flips, bit 2 transposes."""
    x = x.flip(-1) if k & 1 else x
    x = x.flip(-2) if k & 2 else x
    return x.transpose(-1, -2) if k & 4 else x


def undo_dihedral(x: Tensor, k: int) -> Tensor:
    """The inverse of `dihedral(x, k)`."""
    x = x.transpose(-1, -2) if k & 4 else x
    x = x.flip(-2) if k & 2 else x
    return x.flip(-1) if k & 1 else x


def quantize(x: Tensor) -> Tensor:
    """Round images in [-1, 1] to the 256 levels of an 8-bit file, as a real low-resolution input has."""
    return ((x + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1


def downsample(hr: Tensor, scale: int) -> Tensor:
    """Antialiased bicubic downsampling by an integer factor (the LR half of an SR pair)."""
    h, w = hr.shape[-2:]
    return F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)


def upsample(lr: Tensor, scale: int) -> Tensor:
    """Bicubic upsampling by an integer factor: the baseline an upscaler improves on."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
