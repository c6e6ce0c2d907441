"""How damaged an image looks, from its pixels alone: JPEG blocking and noise, to choose `upscale --denoise`.

The bundled real-world upscaler removes JPEG blocks and noise; on a clean input it also removes faint texture
that it takes for noise, and the clean upscaler it descends from is better there (docs/upscale.md). So by
default `upscale` looks at each input first and blends the two (`--denoise auto`).

- **JPEG.** A JPEG file is stored as 8x8 blocks of DCT coefficients, each rounded to a multiple of a step;
  at the usual qualities most of the fine ones become 0. Decoded, the image's blocks on that grid still have
  those zeros, while blocks cut 4 pixels off the grid mix four blocks and have few. `blocking` compares the
  two: the share of near-zero fine coefficients on the grid over the share off it, in textured blocks only
  (flat blocks are near zero on any grid). Clean images score about 1 either way; JPEGs of quality 90 or
  lower 1.4 and more, whatever their content (at 95, often less: such a file is nearly clean anyway). It finds the grid at the image's corner, where a JPEG that was
  not cropped or resized since has it, or 4 pixels in (then the ratio is as far below 1).
- **Noise.** Immerkær's estimator (1996): a 3x3 second-difference mask cancels smooth content, and the mean
  of its absolute response, scaled, is the noise's standard deviation. Texture answers it too, so it is
  taken over the flattest tenth of 8x8 patches, where mostly noise is left.

`strength` turns that into `--denoise`: 1 (the real-world upscaler) for an image with JPEG's grid or noise,
or one too small to tell, else 0 (its clean partner). The thresholds were chosen on the training photos
(`data/photos-v2`, 78 of them, each shrunk x4 and then left clean, saved as JPEG at quality 90, 75 and 50, or
given Gaussian noise of 2, 3, 5 and 10 levels): upscaled with whichever model the rule picks, the mean gain
over bicubic was +0.87 dB over all 8 conditions against +0.82 with the real-world model for all (clean
+1.38 against +1.09; the clean model for all: +1.39 on clean, +0.48 over all). docs/upscale.md has the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from diffgen.images import to_mode

BLOCK = 8  # JPEG's block side
SAMPLE = 1024  # side of the central part of a large image that is measured
TEXTURED = 4.0  # RMS of a block's AC coefficients (8-bit levels) above which it counts for `blocking`
MIN_BLOCKS = 32  # textured blocks needed on each grid to tell; fewer: `blocking` is None
FLATTEST = 0.1  # share of patches, the flattest, that the noise is estimated on
JPEG_BLOCKING = 1.5  # `blocking` from which an image counts as a JPEG: clean photos 0.8-1.8 (median 1.0), JPEGs 1.4-12
NOISY = 1.3  # noise (8-bit levels) from which an image counts as noisy: clean photos median 0.5, sigma 2 median 1.4


@dataclass(frozen=True)
class Damage:
    """What an image's pixels say of its history."""

    blocking: float | None  # near-zero DCT coefficients on the 8x8 grid over off it: about 1 clean; None: can't tell
    noise: float  # standard deviation of noise, in 8-bit levels

    def signs(self) -> list[str]:
        """What in it calls for the real-world upscaler, in words; none: it looks clean."""
        return [text for shows, text in ((self.blocking is None, "too small or flat to tell"),
                                         (self.blocking is not None and max(self.blocking, 1 / self.blocking) >= JPEG_BLOCKING,
                                          "JPEG blocks"),
                                         (self.noise >= NOISY, f"noise of about {self.noise:.1f} levels")) if shows]


def luma(image: Image.Image) -> np.ndarray:
    """The image's brightness (BT.601, as JPEG stores it) as float64, 0-255; deep images scaled to 8 bits."""
    rgb = np.asarray(to_mode(image, 3), dtype=np.float64)
    return rgb @ np.array([0.299, 0.587, 0.114])


def dct_basis(n: int = BLOCK) -> np.ndarray:
    """The orthonormal DCT-II matrix: coefficients = D @ block @ D.T."""
    k = np.arange(n)
    d = np.sqrt(2 / n) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    d[0] /= np.sqrt(2)
    return d


def zero_share(y: np.ndarray, offset: int) -> float | None:
    """Share of near-zero AC coefficients in the textured 8x8 blocks of a grid starting at (offset, offset)."""
    y = y[offset:, offset:]
    h, w = y.shape[0] // BLOCK * BLOCK, y.shape[1] // BLOCK * BLOCK
    blocks = y[:h, :w].reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).swapaxes(1, 2)
    d = dct_basis()
    ac = (d @ blocks @ d.T).reshape(-1, BLOCK * BLOCK)[:, 1:]
    textured = ac[np.sqrt((ac**2).mean(axis=1)) >= TEXTURED]
    if len(textured) < MIN_BLOCKS:
        return None
    return float((np.abs(textured) < 0.5).mean())


def blocking(y: np.ndarray) -> float | None:
    """How much more the 8x8 grid at the corner has JPEG's zeroed coefficients than a grid 4 pixels off it."""
    on, off = zero_share(y, 0), zero_share(y, BLOCK // 2)
    return None if on is None or off is None else (on + 0.01) / (off + 0.01)


def noise_sigma(y: np.ndarray) -> float:
    """Noise standard deviation in 8-bit levels (Immerkær 1996) over the flattest patches."""
    # The mask [[1,-2,1],[-2,4,-2],[1,-2,1]] is the outer product of [1,-2,1] with itself.
    across = y[:, :-2] - 2 * y[:, 1:-1] + y[:, 2:]
    response = np.abs(across[:-2] - 2 * across[1:-1] + across[2:])
    h, w = response.shape[0] // BLOCK * BLOCK, response.shape[1] // BLOCK * BLOCK
    if h == 0 or w == 0:
        return 0.0
    patches = response[:h, :w].reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).mean(axis=(1, 3))
    return math.sqrt(math.pi / 2) / 6 * float(np.quantile(patches, FLATTEST))


def measure(image: Image.Image) -> Damage:
    """JPEG blocking and noise of an image as it was decoded (before any turn by its EXIF orientation, which
    would move JPEG's grid), over at most its central SAMPLE x SAMPLE pixels (on the 8x8 grid)."""
    w, h = image.size
    left, top = (w - min(w, SAMPLE)) // 2 // BLOCK * BLOCK, (h - min(h, SAMPLE)) // 2 // BLOCK * BLOCK
    y = luma(image.crop((left, top, left + min(w, SAMPLE), top + min(h, SAMPLE))))
    return Damage(blocking=blocking(y), noise=noise_sigma(y))


def strength(damage: Damage) -> float:
    """`--denoise` for an image with this damage: 1 if it shows JPEG's grid or noise, or cannot tell, else 0."""
    return 1.0 if damage.signs() else 0.0
