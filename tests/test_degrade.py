"""The degradations that train and evaluate an upscaler for real-world inputs (degrade.py): each one's
effect measured on a generated image."""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffgen.transforms import downsample, quantize
from diffgen.degrade import (
    Chain, Condition, add_noise, degrade, draw_chain, gaussian_blur, gaussian_kernel, jpeg_roundtrip, jpeg_tensor,
    parse_condition,
)
from diffgen.errors import OptionError
from diffgen.metrics import evaluate_one


def textured(size: int = 64, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """(1, C, size, size) in [0, 1]: smooth shapes plus fine texture, like a photo's crop."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = 0.5 + 0.3 * torch.sin(6 * x + 3 * y)
    fine = 0.15 * (torch.rand(channels, size, size, generator=g) - 0.5)
    return (base + fine).clamp(0, 1)[None]


def high_frequency_power(x: torch.Tensor) -> float:
    """Power above half the Nyquist frequency (in either direction), summed over channels; a Hann window
    keeps the image's edges from leaking into every frequency."""
    h, w = x.shape[-2:]
    window = torch.hann_window(h, periodic=False)[:, None] * torch.hann_window(w, periodic=False)
    spectrum = torch.fft.fftshift(torch.fft.fft2((x - x.mean(dim=(-2, -1), keepdim=True)) * window), dim=(-2, -1)).abs() ** 2
    fy, fx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    high = (fy.abs() > h // 4) | (fx.abs() > w // 4)
    return float(spectrum[..., high].sum())


def test_blur_lowers_high_frequency_power_more_as_sigma_grows():
    x = textured()
    powers = [high_frequency_power(gaussian_blur(x, torch.tensor([s, s]), 0.0)) for s in (0.5, 1.0, 2.0)]
    assert high_frequency_power(x) > powers[0] > powers[1] > powers[2]
    assert powers[2] < 0.05 * high_frequency_power(x)


def test_blur_keeps_the_mean_and_an_anisotropic_kernel_blurs_along_its_long_axis():
    x = textured()
    assert gaussian_blur(x, torch.tensor([1.5, 1.5]), 0.0).mean() == pytest.approx(float(x.mean()), abs=1e-3)
    k = gaussian_kernel(torch.tensor([3.0, 0.5]), 0.0)  # long along x at angle 0
    assert k.sum() == pytest.approx(1.0)
    var_x = float((k.sum(0) * (torch.arange(k.shape[1]) - k.shape[1] // 2) ** 2).sum())
    var_y = float((k.sum(1) * (torch.arange(k.shape[0]) - k.shape[0] // 2) ** 2).sum())
    assert var_x == pytest.approx(9.0, rel=0.05) and var_y == pytest.approx(0.25, rel=0.2)  # sampled at 2 sigma per pixel
    turned = gaussian_kernel(torch.tensor([3.0, 0.5]), math.pi / 2)
    assert torch.allclose(turned, k.T, atol=1e-6)


def test_jpeg_round_trips_through_pillow():
    x = (textured() * 255).round() / 255
    back = jpeg_tensor(x, 75)
    array = (x[0] * 255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=75)
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype=np.float32) / 255
    assert torch.equal(back[0].permute(1, 2, 0), torch.from_numpy(expected))
    errors = [float((jpeg_tensor(x, q) - x).abs().mean()) for q in (95, 75, 30)]
    assert 0 < errors[0] < errors[1] < errors[2]


def test_jpeg_of_a_grey_image_stays_grey():
    x = (textured(channels=1) * 255).round() / 255
    assert jpeg_tensor(x, 50).shape == x.shape
    assert jpeg_roundtrip(Image.new("L", (16, 16), 100), 75).mode == "L"


@pytest.mark.parametrize("grey", [False, True])
def test_gaussian_noise_has_the_asked_sigma(grey):
    flat = torch.full((1, 3, 128, 128), 0.5)
    normal = torch.randn(3, 128, 128, generator=torch.Generator().manual_seed(1))
    noisy = add_noise(flat, 5 / 255, poisson=False, grey=grey, normal=normal)
    assert float((noisy - flat).std() * 255) == pytest.approx(5.0, rel=0.03)
    assert torch.equal(noisy[:, 0], noisy[:, 1]) == grey


def test_poisson_noise_grows_with_brightness():
    normal = torch.randn(3, 128, 128, generator=torch.Generator().manual_seed(2))
    sigmas = []
    for level in (0.125, 0.5):
        flat = torch.full((1, 3, 128, 128), level)
        sigmas.append(float((add_noise(flat, 8 / 255, poisson=True, grey=False, normal=normal) - flat).std() * 255))
    assert sigmas[1] == pytest.approx(8.0, rel=0.03)  # sigma is the one at mid-grey
    assert sigmas[0] == pytest.approx(4.0, rel=0.03)  # sqrt(0.125 / 0.5) = 1/2 of it


def clean_chain(n: int, channels: int, lr_size: tuple[int, int]) -> Chain:
    chain = draw_chain(n, channels, lr_size, torch.Generator().manual_seed(0))
    return Chain(**{**{f: getattr(chain, f) for f in chain.__dataclass_fields__}, "clean": torch.ones(n, dtype=torch.bool)})


def test_a_clean_chain_is_the_clean_training_pair():
    hr = textured(96) * 2 - 1
    lr = degrade(hr, 4, clean_chain(1, 3, (24, 24)))
    assert torch.allclose(lr, quantize(downsample(hr, 4)), atol=1e-5)


def test_degraded_inputs_have_the_lr_shape_8_bit_levels_and_vary():
    hr = (textured(96) * 2 - 1).repeat(32, 1, 1, 1)
    chain = draw_chain(32, 3, (24, 24), torch.Generator().manual_seed(3))
    lr = degrade(hr, 4, chain)
    assert lr.shape == (32, 3, 24, 24) and lr.min() >= -1 and lr.max() <= 1
    levels = (lr + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    clean = quantize(downsample(hr, 4))
    differs = (lr - clean).abs().flatten(1).mean(1) > 1e-3
    assert torch.equal(differs, ~chain.clean) or differs.sum() >= (~chain.clean).sum() - 2  # a mild chain may be ~clean
    assert 0 < int(chain.clean.sum()) < 32 and bool(chain.jpeg[:, 0].any()) and bool(chain.noise[:, 0].any())


def test_conditions_parse_and_apply():
    assert parse_condition("clean") == Condition("clean")
    assert parse_condition("JPEG:75") == Condition("jpeg", 75)
    assert parse_condition("noise:5") == Condition("noise", 5.0)
    assert str(parse_condition("noise:2.5")) == "noise:2.5"
    for bad in ("jpeg", "jpeg:0", "jpeg:100", "noise:-1", "blur:2", "clean:3", "noise:x"):
        with pytest.raises(OptionError, match="--degrade"):
            parse_condition(bad)
    lr = Image.fromarray((textured(64)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    noisy = Condition("noise", 5).apply(lr, seed=7)
    diff = np.asarray(noisy, dtype=np.float64) - np.asarray(lr, dtype=np.float64)
    assert diff.std() == pytest.approx(5.0, rel=0.05)  # rounding adds 1/12 of a level's variance
    assert noisy.tobytes() == Condition("noise", 5).apply(lr, seed=7).tobytes()
    assert Condition("jpeg", 75).apply(lr).tobytes() == jpeg_roundtrip(lr, 75).tobytes()


def test_evaluation_degrades_the_input_of_both_bicubic_and_the_model(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray((textured(64)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(path)
    seen = []

    def bicubic(lr):
        seen.append(lr.tobytes())
        return lr.resize((lr.width * 4, lr.height * 4), Image.Resampling.BICUBIC)

    clean = evaluate_one(bicubic, path, 4)
    jpeg = evaluate_one(bicubic, path, 4, Condition("jpeg", 30))
    assert seen[0] != seen[1]
    assert clean.model == clean.bicubic and jpeg.model == jpeg.bicubic  # the same degraded LR for both
    assert jpeg.bicubic.psnr < clean.bicubic.psnr


def test_training_with_real_degradations_differs_from_clean_and_is_refused_for_generation(photo_folder, tmp_path):
    from dataclasses import replace

    from safetensors.torch import load_file

    from diffgen.checkpoint import Task
    from diffgen.config import TrainConfig
    from diffgen.enums import Degrade
    from diffgen.train import train

    base = TrainConfig(data_dir=photo_folder, out_dir=tmp_path / "clean", task=Task.UPSCALE, image_size=32,
                       batch_size=2, max_steps=2, warmup_steps=1, save_every=100, sample_every=100, device="cpu")
    train(base)
    train(replace(base, out_dir=tmp_path / "real", degrade=Degrade.REAL))
    clean, real = (load_file(tmp_path / name / "model.safetensors") for name in ("clean", "real"))
    assert any(not torch.equal(clean[k], real[k]) for k in clean)
    with pytest.raises(OptionError, match="--degrade: only for --task upscale"):
        train(replace(base, out_dir=tmp_path / "gen", task=Task.GENERATE, degrade=Degrade.REAL))
