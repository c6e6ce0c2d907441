"""What happens to a photo between the scene and the file a user has: blur, resizing, noise and JPEG.

A clean training pair is (HR, bicubic downsampling of HR). The low-resolution files people upscale have
been through more: a soft lens or a resize with some other filter, sensor noise, and JPEG compression,
sometimes twice (a photo edited and saved again). An upscaler trained on clean pairs enlarges those
artefacts along with the detail. Training on inputs degraded at random teaches it to remove them instead.

`--degrade real` draws, for each training crop, a chain after Real-ESRGAN's "first-order" and
"second-order" degradation model (Wang et al. 2021, section 3): blur, resize with a random kernel, noise,
JPEG, and for some crops a second round of noise and JPEG. The ranges are narrower than Real-ESRGAN's,
and a share of crops stays clean: diffgen is scored by PSNR against the original photo, and training on
damage much worse than real files costs quality on clean inputs (docs/upscale.md gives each range's reason).

`Condition` is the other side: one fixed degradation of an evaluation's LR image (`eval-upscale
--degrade jpeg:75`), applied to PIL images exactly as a user's file would have it.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from diffgen.errors import OptionError


# The training chain's probabilities and ranges (docs/upscale.md explains each).
CLEAN_SHARE = 0.2  # crops left as clean bicubic pairs, so clean inputs stay as good as before
BLUR_P, ANISO_P = 0.5, 0.5  # blur the HR crop; of those, anisotropic (an ellipse at a random angle)
BLUR_SIGMA = (0.1, 0.6)  # Gaussian sigma in LR pixels (times the scale in HR pixels)
TWO_STEP_P, TWO_STEP_RANGE = 0.4, (0.7, 1.5)  # resize via an intermediate size this many times the LR's
NOISE_P, POISSON_P, GREY_NOISE_P = 0.5, 0.4, 0.4  # add noise; of it, Poisson rather than Gaussian; one for all channels
NOISE_SIGMA = (1.0, 12.0)  # standard deviation in 8-bit levels (Poisson: at mid-grey)
JPEG_P, JPEG_QUALITY = 0.6, (40, 95)
SECOND_P = 0.3  # a second round: the file saved again after editing
SECOND_NOISE_P, SECOND_NOISE_SIGMA = 0.5, (1.0, 6.0)
SECOND_JPEG_P, SECOND_JPEG_QUALITY = 0.7, (50, 95)
RESIZE_MODES = ("area", "bilinear", "bicubic")  # the kernels of common resizers


@dataclass(frozen=True)
class Chain:
    """The random degradation of each crop in a batch: one row per crop (tensors of shape (B,) or (B, 2))."""

    clean: Tensor  # bool: no degradation, a clean bicubic pair
    blur: Tensor  # bool
    sigma: Tensor  # (B, 2): blur sigmas along the ellipse's axes, in LR pixels
    angle: Tensor  # radians
    two_step: Tensor  # bool
    step_factor: Tensor  # intermediate size / LR size
    modes: Tensor  # (B, 2) int: resize kernels of the first and second resize
    noise: Tensor  # (B, 2) bool: noise in round 1, 2
    noise_sigma: Tensor  # (B, 2) in 8-bit levels
    poisson: Tensor  # (B, 2) bool
    grey_noise: Tensor  # (B, 2) bool
    jpeg: Tensor  # (B, 2) bool: JPEG in round 1, 2
    quality: Tensor  # (B, 2) int
    second: Tensor  # bool: round 2 happens
    normal: Tensor  # (B, 2, C, h, w): standard normal noise fields of rounds 1 and 2

    def __getitem__(self, s: slice) -> Chain:
        return Chain(**{name: getattr(self, name)[s] for name in self.__dataclass_fields__})


def draw_chain(n: int, channels: int, lr_size: tuple[int, int], g: torch.Generator) -> Chain:
    """Draw the degradations of n crops whose LR images are `lr_size`, noise fields included. The number
    of draws does not depend on their outcomes, so the generator's stream (and a resumed run) is the same
    whatever was drawn."""
    def u(*shape: int) -> Tensor:
        return torch.rand((n, *shape), generator=g)

    def between(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * u(*shape)

    def log_between(lo: float, hi: float) -> Tensor:
        return lo * (hi / lo) ** u()

    aniso = u() < ANISO_P
    sigma = between(*BLUR_SIGMA, 2)
    sigma[:, 1] = torch.where(aniso, sigma[:, 1], sigma[:, 0])
    second = u() < SECOND_P
    noise_sigma = torch.stack([between(*NOISE_SIGMA), between(*SECOND_NOISE_SIGMA)], 1)
    quality = torch.stack([between(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1), between(SECOND_JPEG_QUALITY[0], SECOND_JPEG_QUALITY[1] + 1)], 1)
    return Chain(
        clean=u() < CLEAN_SHARE, blur=u() < BLUR_P, sigma=sigma, angle=between(0, math.pi),
        two_step=u() < TWO_STEP_P, step_factor=log_between(*TWO_STEP_RANGE),
        modes=torch.randint(len(RESIZE_MODES), (n, 2), generator=g),
        noise=u(2) < torch.tensor([NOISE_P, SECOND_NOISE_P]), noise_sigma=noise_sigma,
        poisson=u(2) < POISSON_P, grey_noise=u(2) < GREY_NOISE_P,
        jpeg=(u(2) < torch.tensor([JPEG_P, SECOND_JPEG_P])) & torch.stack([torch.ones(n, dtype=torch.bool), second], 1),
        quality=quality.floor().long(), second=second,
        normal=torch.randn((n, 2, channels, *lr_size), generator=g),
    )


def degrade(hr: Tensor, scale: int, chain: Chain) -> Tensor:
    """The LR inputs, in [-1, 1] and on 8-bit levels, of HR crops (B, C, H, W) in [-1, 1] under `chain`."""
    lr_size = (hr.shape[-2] // scale, hr.shape[-1] // scale)
    out = []
    for i in range(hr.shape[0]):
        c = chain[i:i + 1]
        x = (hr[i:i + 1].float() + 1) / 2  # [0, 1]
        if bool(c.clean):
            out.append(to_levels(resize(x, lr_size, "bicubic")))
            continue
        if bool(c.blur):
            x = gaussian_blur(x, c.sigma[0] * scale, float(c.angle))
        if bool(c.two_step):
            mid = tuple(max(1, round(n * float(c.step_factor))) for n in lr_size)
            x = resize(x, mid, RESIZE_MODES[int(c.modes[0, 0])])
        x = resize(x, lr_size, RESIZE_MODES[int(c.modes[0, 1])])
        for r in range(1 + bool(c.second)):
            if bool(c.noise[0, r]):
                x = add_noise(x, float(c.noise_sigma[0, r]) / 255, bool(c.poisson[0, r]), bool(c.grey_noise[0, r]), c.normal[0, r])
            x = to_levels(x)
            if bool(c.jpeg[0, r]):
                x = jpeg_tensor(x, int(c.quality[0, r]))
        out.append(x)
    return torch.cat(out) * 2 - 1


def resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resize (1, C, H, W) with one of RESIZE_MODES, antialiased when shrinking."""
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)


def gaussian_kernel(sigma: Tensor, angle: float) -> Tensor:
    """A normalised 2-D Gaussian with standard deviations sigma = (s1, s2) along axes turned by `angle`."""
    s1, s2 = float(sigma[0]), float(sigma[1])
    radius = max(1, math.ceil(3 * max(s1, s2)))
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    y, x = torch.meshgrid(r, r, indexing="ij")
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = cos * x + sin * y, -sin * x + cos * y
    k = torch.exp(-0.5 * ((u / s1) ** 2 + (v / s2) ** 2))
    return k / k.sum()


def gaussian_blur(x: Tensor, sigma: Tensor, angle: float) -> Tensor:
    """Blur (1, C, H, W) with `gaussian_kernel`, reflecting at the borders."""
    k = gaussian_kernel(sigma, angle)
    pad = k.shape[-1] // 2
    channels = x.shape[1]
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect" if pad < min(x.shape[-2:]) else "replicate")
    return F.conv2d(padded, k.expand(channels, 1, *k.shape), groups=channels)


def add_noise(x: Tensor, sigma: float, poisson: bool, grey: bool, normal: Tensor) -> Tensor:
    """Sensor noise of standard deviation sigma (Poisson: sigma at mid-grey, growing with brightness).

    `normal` is standard normal noise of x's (C, H, W) shape; Poisson noise is approximated by it scaled
    by sqrt(brightness), which is Poisson's standard deviation (exact in the limit of many photons)."""
    z = normal[:1].expand_as(normal) if grey else normal
    if poisson:
        z = z * torch.sqrt(x.clamp(min=0) / 0.5)
    return x + sigma * z


def to_levels(x: Tensor) -> Tensor:
    """Round [0, 1] images to the 256 levels of an 8-bit file."""
    return (x * 255).round().clamp(0, 255) / 255


def jpeg_tensor(x: Tensor, quality: int) -> Tensor:
    """Save (1, C, H, W) in [0, 1] (on 8-bit levels) as a JPEG at `quality` and read it back."""
    array = (x[0] * 255).round().byte().permute(1, 2, 0).numpy()
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    back = np.asarray(jpeg_roundtrip(img, quality), dtype=np.float32) / 255
    back = back[..., None] if back.ndim == 2 else back
    return torch.from_numpy(back).permute(2, 0, 1)[None]


def jpeg_roundtrip(img: Image.Image, quality: int) -> Image.Image:
    """An image as a JPEG file at `quality` would give it back (Pillow's default 4:2:0 chroma subsampling)."""
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as back:
        return back.convert(img.mode)


@dataclass(frozen=True)
class Condition:
    """One fixed degradation of an evaluation's LR image: clean, JPEG at a quality, or Gaussian noise."""

    kind: str  # "clean", "jpeg" or "noise"
    amount: float = 0.0  # JPEG quality, or noise sigma in 8-bit levels

    def __str__(self) -> str:
        return self.kind if self.kind == "clean" else f"{self.kind}:{self.amount:g}"

    def apply(self, lr: Image.Image, seed: int = 0) -> Image.Image:
        """The LR image as a user's file would have it; noise is seeded, so scores are repeatable."""
        if self.kind == "jpeg":
            return jpeg_roundtrip(lr, int(self.amount))
        if self.kind == "noise":
            rng = np.random.default_rng(seed)
            array = np.asarray(lr, dtype=np.float64)
            noisy = array + rng.normal(0.0, self.amount, array.shape)
            return Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8), lr.mode)
        return lr


def parse_condition(text: str) -> Condition:
    """`clean`, `jpeg:Q` (quality 1-95) or `noise:S` (sigma in 8-bit levels, 0-100)."""
    m = re.fullmatch(r"\s*(clean|jpeg|noise)\s*(?::\s*([0-9.]+)\s*)?", text.lower())
    kind, amount = (m.group(1), m.group(2)) if m else (None, None)
    if kind == "clean" and amount is None:
        return Condition("clean")
    if kind == "jpeg" and amount and amount.isdigit() and 1 <= int(amount) <= 95:
        return Condition("jpeg", int(amount))
    if kind == "noise" and amount and _number(amount) is not None and 0 < _number(amount) <= 100:
        return Condition("noise", _number(amount))
    raise OptionError(f"--degrade {text}: use clean, jpeg:QUALITY (1 to 95, e.g. jpeg:75) or noise:SIGMA "
                      "(in 8-bit levels, e.g. noise:5)")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
