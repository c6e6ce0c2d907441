"""Reading JPEG blocking and noise from pixels, and `--denoise auto`'s choice between the bundled upscalers."""
import io

import numpy as np
import pytest
from PIL import Image

from diffgen import damage


def smooth_photo(size: int = 256, seed: int = 0) -> np.ndarray:
    """A clean stand-in for a photo: random colours, bicubic-smooth over 8 pixels, (size, size, 3) float 0-255."""
    small = np.random.default_rng(seed).uniform(0, 255, (3, size // 8 + 3, size // 8 + 3))
    up = [np.asarray(Image.fromarray(c.astype(np.float32), "F").resize((c.shape[1] * 8, c.shape[0] * 8),
                                                                       Image.Resampling.BICUBIC)) for c in small]
    return np.stack(up, -1)[8 : size + 8, 8 : size + 8]


def image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def as_jpeg(img: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def test_jpeg_s_grid_is_seen_at_the_corner_or_four_pixels_in():
    clean = image(smooth_photo())
    assert 1 / damage.JPEG_BLOCKING < damage.measure(clean).blocking < damage.JPEG_BLOCKING
    for quality in (50, 75):
        jpeg = as_jpeg(clean, quality)
        assert damage.measure(jpeg).blocking >= damage.JPEG_BLOCKING, quality
        assert damage.measure(jpeg.crop((4, 4, 256, 256))).blocking <= 1 / damage.JPEG_BLOCKING, quality
        assert damage.measure(jpeg).signs() == ["JPEG blocks"]


@pytest.mark.parametrize("sigma", [2.0, 5.0, 10.0])
def test_noise_is_measured_on_the_flattest_patches(sigma):
    """Grey Gaussian noise on a flat picture: the flattest tenth of patches reads a little under its sigma; on
    a smooth photo the noise reads much the same, and the photo alone reads almost none."""
    rng = np.random.default_rng(1)
    flat = np.full((128, 128, 3), 128.0) + rng.normal(0, sigma, (128, 128, 1))
    assert 0.7 * sigma < damage.measure(image(flat)).noise < sigma
    photo = smooth_photo(seed=2)
    assert damage.measure(image(photo)).noise < 0.3
    assert 0.7 * sigma < damage.measure(image(photo + rng.normal(0, sigma, (256, 256, 1)))).noise < 1.1 * sigma


def test_strength_is_1_for_blocks_noise_or_too_little_to_tell_and_0_for_a_clean_photo():
    photo = smooth_photo()
    assert damage.strength(damage.measure(image(photo))) == 0.0
    assert damage.strength(damage.measure(as_jpeg(image(photo), 75))) == 1.0
    noisy = photo + np.random.default_rng(3).normal(0, 3, photo.shape)  # colour noise: luma about 2 levels
    assert damage.strength(damage.measure(image(noisy))) == 1.0
    small = damage.measure(image(photo[:40, :40]))  # under MIN_BLOCKS textured blocks
    assert small.blocking is None and damage.strength(small) == 1.0


def test_a_large_image_is_measured_on_its_centre():
    big = np.tile(smooth_photo(), (6, 6, 1))  # 1536 px: only the central 1024 are read
    big[256:-256, 256:-256] += np.random.default_rng(4).normal(0, 5, (1024, 1024, 1))  # there, and only there, noise
    assert damage.measure(image(big)).noise > 3.5  # the clean border, 56% of the image, would read under 0.3
