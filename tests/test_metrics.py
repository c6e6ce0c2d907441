"""SR metrics: closed-form PSNR/SSIM facts, agreement with scikit-image, and the evaluation loop."""

import math

import numpy as np
import pytest
from PIL import Image

from diffgen.errors import ImageError
from diffgen.metrics import (
    EvalRow,
    Scores,
    bicubic_upscale,
    crop_to_multiple,
    evaluate,
    make_lowres,
    PSNR_CAP,
    mean_row,
    psnr,
    rgb_to_y,
    score,
    ssim,
)


def textured(h, w, seed=0):
    """A smooth gradient plus noise: structure for SSIM to see, not constant anywhere."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 120 + 80 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    return np.clip(base + rng.normal(0, 12, (h, w)), 0, 255)


def rgb_image(h, w, seed=0):
    arr = np.stack([textured(h, w, seed + c) for c in range(3)], axis=2)
    return Image.fromarray(arr.round().astype(np.uint8), "RGB")


def test_psnr_of_identical_arrays_is_capped_so_means_stay_finite():
    x = textured(16, 16)
    assert psnr(x, x) == PSNR_CAP == 100.0
    assert psnr(x, x + 1e-3) == PSNR_CAP  # above the cap too


@pytest.mark.parametrize("e", [1.0, 3.0, 10.0])
def test_psnr_of_constant_error(e):
    x = textured(16, 16)
    assert psnr(x, x + e) == pytest.approx(20 * math.log10(255 / e), abs=1e-9)


def test_ssim_of_identical_is_one():
    x = textured(32, 40)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)


def test_ssim_is_symmetric_and_below_one_for_different_images():
    a, b = textured(32, 32, seed=1), textured(32, 32, seed=2)
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-12)
    assert ssim(a, b) < 0.99


def test_ssim_refuses_images_smaller_than_its_window():
    with pytest.raises(ValueError):
        ssim(np.zeros((10, 20)), np.zeros((10, 20)))


@pytest.mark.parametrize("shape", [(11, 11), (24, 37), (40, 33)])
def test_metrics_match_scikit_image(shape):
    metrics = pytest.importorskip("skimage.metrics")
    a = textured(*shape, seed=3)
    b = np.clip(a + np.random.default_rng(4).normal(0, 15, shape), 0, 255)
    reference = metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False, data_range=255)
    assert ssim(a, b) == pytest.approx(reference, abs=1e-6)
    assert psnr(a, b) == pytest.approx(metrics.peak_signal_noise_ratio(a, b, data_range=255), abs=1e-3)


def test_y_of_white_and_black_and_grey():
    assert np.allclose(rgb_to_y(Image.new("RGB", (3, 2), (255, 255, 255))), 235)
    assert np.allclose(rgb_to_y(Image.new("RGB", (3, 2), (0, 0, 0))), 16)
    assert rgb_to_y(Image.new("RGB", (3, 2))).shape == (2, 3)
    # Grey counts as R = G = B; alpha is ignored.
    grey = rgb_to_y(Image.new("L", (3, 2), 100))
    assert np.allclose(grey, 16 + 219 * 100 / 255)
    assert np.allclose(rgb_to_y(Image.new("RGB", (3, 2), (100, 100, 100))), grey)
    rgba = Image.new("RGBA", (3, 2), (10, 200, 30, 0))
    assert np.allclose(rgb_to_y(rgba), rgb_to_y(Image.new("RGB", (3, 2), (10, 200, 30))))


def test_y_weights_each_channel():
    for colour, weight in [((255, 0, 0), 65.481), ((0, 255, 0), 128.553), ((0, 0, 255), 24.966)]:
        assert np.allclose(rgb_to_y(Image.new("RGB", (1, 1), colour)), 16 + weight)


@pytest.mark.parametrize("size", [(32, 32), (35, 38), (7, 4)])
def test_crop_and_lowres_sizes(size):
    w, h = size
    hr = crop_to_multiple(rgb_image(h, w), 4)
    assert hr.size == (w - w % 4, h - h % 4)
    lr = make_lowres(hr, 4)
    assert lr.size == (w // 4, h // 4)
    assert bicubic_upscale(lr, 4).size == hr.size


def test_crop_keeps_top_left():
    img = rgb_image(35, 38)
    assert np.array_equal(np.asarray(crop_to_multiple(img, 4)), np.asarray(img)[:32, :36])


def test_score_ignores_the_border():
    hr = rgb_image(32, 32)
    arr = np.asarray(hr).copy()
    arr[:4] = 255 - arr[:4]  # change only the top 4 rows, the border at x4
    arr[:, -4:] = 0  # and the right 4 columns
    inside = score(Image.fromarray(arr), hr, 4)
    assert inside.psnr == PSNR_CAP
    assert inside.ssim == pytest.approx(1.0, abs=1e-12)
    arr[4, 4] = 255 - arr[4, 4]  # one pixel just inside
    assert score(Image.fromarray(arr), hr, 4).psnr < PSNR_CAP


def test_score_refuses_mismatched_sizes():
    with pytest.raises(ValueError):
        score(rgb_image(32, 32), rgb_image(32, 28), 4)


@pytest.fixture
def hr_files(tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    rgb_image(34, 41, seed=5).save(paths[0])  # not a multiple of 4: evaluate crops it
    Image.fromarray(textured(28, 24, seed=6).astype(np.uint8), "L").save(paths[1])  # grey
    return paths


def test_evaluate_bicubic_model_equals_baseline(hr_files):
    calls = []
    rows = evaluate(lambda lr: bicubic_upscale(lr, 4), hr_files, 4, callback=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 2), (2, 2)]
    assert [r.name for r in rows] == ["a.png", "b.png"]
    for r in rows:
        assert r.model == r.bicubic
        assert 15 < r.bicubic.psnr < PSNR_CAP
        assert 0 < r.bicubic.ssim < 1
        assert r.seconds >= 0


def test_evaluate_scores_against_the_cropped_hr(hr_files):
    """An upscaler that happens to return the cropped HR scores perfectly."""
    hr = crop_to_multiple(Image.open(hr_files[0]).convert("RGB"), 4)
    rows = evaluate(lambda lr: hr, hr_files[:1], 4)
    assert rows[0].model.psnr == PSNR_CAP
    assert rows[0].model.ssim == pytest.approx(1.0, abs=1e-12)
    assert rows[0].bicubic.psnr < PSNR_CAP
    assert math.isfinite(mean_row(rows).model.psnr)


def test_evaluate_refuses_images_too_small_to_score(tmp_path):
    path = tmp_path / "tiny.png"
    rgb_image(16, 40).save(path)
    with pytest.raises(ImageError, match="too small"):
        evaluate(lambda lr: bicubic_upscale(lr, 4), [path], 4)


def test_evaluate_reports_a_bad_file_and_goes_on(hr_files, tmp_path):
    broken, tiny = tmp_path / "broken.png", tmp_path / "tiny.png"
    broken.write_bytes(b"not an image")
    rgb_image(16, 40).save(tiny)
    failures = []
    rows = evaluate(lambda lr: bicubic_upscale(lr, 4), [broken, hr_files[0], tiny, hr_files[1]], 4,
                    on_error=failures.append)
    assert [r.name for r in rows] == ["a.png", "b.png"]
    assert len(failures) == 2 and "broken.png" in str(failures[0]) and "too small" in str(failures[1])


def test_mean_row_averages_scores_and_sums_seconds():
    rows = [EvalRow("a", Scores(30.0, 0.8, 0.2), Scores(32.0, 0.9, 0.6), 1.5),
            EvalRow("b", Scores(20.0, 0.6, 0.4), Scores(26.0, 0.7, 1.0), 0.5)]
    mean = mean_row(rows)
    assert mean.name == "mean"
    assert (mean.bicubic.psnr, mean.bicubic.ssim) == pytest.approx((25.0, 0.7))
    assert (mean.model.psnr, mean.model.ssim) == pytest.approx((29.0, 0.8))
    assert (mean.bicubic.detail, mean.model.detail) == pytest.approx((0.3, 0.8))
    assert mean.seconds == pytest.approx(2.0)


def test_detail_is_the_share_of_the_originals_high_frequency_power():
    rng = np.random.default_rng(0)
    hr = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))  # white noise: half its power is high
    assert score(hr, hr, 4).detail == pytest.approx(1.0)
    bicubic = bicubic_upscale(make_lowres(hr, 4), 4)
    assert score(bicubic, hr, 4).detail < 0.1
    doubled = Image.fromarray(np.clip(128 + 2 * (np.asarray(hr, np.float64) - 128), 0, 255).astype(np.uint8))
    assert 1.5 < score(doubled, hr, 4).detail < 4.0  # twice the amplitude, clipped: up to 4x the power
