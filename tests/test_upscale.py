"""Upscaling: tiling without seams, and every kind of image file in and out."""


import importlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, PngImagePlugin
from typer.testing import CliRunner

from diffgen.checkpoint import ModelSpec, Task, load_model, save_model
from diffgen.errors import OptionError
from diffgen.cli import app
from diffgen.images import pil_to_tensor, to_model_range
from diffgen.schedule import Prediction
from diffgen.unet import UNet, preset
from diffgen.upscale import (
    Sampling,
    plan_tiles,
    tile_starts,
    upscale_tensor,
    upscale_tiled,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny x4 upscaler with random (non-zero) weights: outputs depend on every input pixel."""
    torch.manual_seed(0)
    unet = preset("tiny", cond_channels=3, pixel_shuffle=4)
    model = UNet(unet)
    for p in model.parameters():
        p.data.normal_(0, 0.03)
    spec = ModelSpec(unet=unet, task=Task.UPSCALE, scale=4, image_size=32, channels=3, prediction=Prediction.X0,
                     residual_scale=0.25)  # a strong residual (std ~17 grey levels) to test tiling with
    path = tmp_path_factory.mktemp("sr") / "sr.safetensors"
    save_model(path, model, spec)
    return path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def smooth_image(w, h, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("length, tile, overlap", [(10, 64, 16), (64, 64, 16), (65, 64, 16), (300, 64, 16), (1000, 96, 8)])
def test_tiles_cover_the_image_with_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and min(length, starts[-1] + tile) == length
    for a, b in zip(starts, starts[1:]):
        assert a + tile - b >= overlap


def test_feathered_blending_is_exact_where_tiles_agree(tmp_path):
    """A fresh U-Net predicts a zero residual, so the result is bicubic: flat in, flat out, tiled or not."""
    unet = preset("tiny", cond_channels=3, pixel_shuffle=4)
    spec = ModelSpec(unet=unet, task=Task.UPSCALE, scale=4, image_size=32, channels=3, prediction=Prediction.X0)
    save_model(tmp_path / "zero.safetensors", UNet(unet), spec)
    loaded = load_model(tmp_path / "zero.safetensors")
    flat = torch.full((3, 40, 56), 0.2)
    assert plan_tiles(40, 56, 32).count == 4
    tiled = upscale_tiled(loaded, flat, tile=32, sampling=Sampling(steps=1))
    assert tiled.shape == (160, 224, 3)
    assert np.unique(tiled).tolist() == [round(1.2 * 127.5)]


def test_tiled_and_untiled_agree_and_show_no_seams(model_file):
    loaded = load_model(model_file)
    lr = to_model_range(pil_to_tensor(smooth_image(96, 64)))
    whole = upscale_tiled(loaded, lr, tile=128, sampling=Sampling(steps=2)).astype(np.float64)
    tiled = upscale_tiled(loaded, lr, tile=48, sampling=Sampling(steps=2)).astype(np.float64)
    mse = ((whole - tiled) ** 2).mean()
    assert 10 * np.log10(255**2 / mse) > 40
    # The difference does not concentrate on tile seams: no column or row is much worse than the typical one.
    for axis in ((0, 2), (1, 2)):
        profile = np.abs(whole - tiled).mean(axis=axis)
        assert profile.max() < 4 * np.median(profile)


def test_upscaling_in_bfloat16_stays_within_a_few_grey_levels_of_float32(model_file):
    """The bf16 path (weights cast once, channels-last) against the float32 reference, with tiles and two
    views: within 2 grey levels of 255 everywhere, 0.3 RMS (measured: 1 and 0.15)."""
    from diffgen.checkpoint import in_bfloat16

    loaded = load_model(model_file)
    lr = to_model_range(pil_to_tensor(smooth_image(40, 24)))
    sampling = Sampling(samples=2)
    exact = upscale_tiled(loaded, lr, tile=24, sampling=sampling).astype(float)
    fast = upscale_tiled(in_bfloat16(loaded), lr, tile=24, sampling=sampling).astype(float)
    assert not np.array_equal(exact, fast)
    assert np.abs(fast - exact).max() <= 2 and np.sqrt(((fast - exact) ** 2).mean()) <= 0.3


def test_averaging_all_eight_views_makes_even_a_lopsided_model_equivariant(model_file, monkeypatch):
    """Samples are upscales of flipped and turned inputs, turned back before they are averaged.

    A stand-in for the model adds ramps from left to right and from top to bottom (no photo model should
    prefer a side): one sample keeps them, two (the input and its mirror image) cancel the left-right one,
    all 8 views make the result commute with every flip and turn.
    """
    def lopsided(loaded, lr, sampling, seed):
        h, w = lr.shape[-2:]
        across, down = torch.linspace(-0.02, 0.02, 4 * w), torch.linspace(0, 0.01, 4 * h)
        return (across[None, :] + down[:, None]).expand(len(lr), lr.shape[1], -1, -1)

    monkeypatch.setattr(importlib.import_module("diffgen.upscale"), "sample_residual", lopsided)
    loaded = load_model(model_file)
    lr = to_model_range(pil_to_tensor(smooth_image(24, 16)))[None]
    up = lambda x, n: upscale_tensor(loaded, x, Sampling(samples=n))
    mirror = lambda x: x.flip(-1)
    assert not torch.allclose(up(mirror(lr), 1), mirror(up(lr, 1)), atol=1e-3)
    assert torch.allclose(up(mirror(lr), 2), mirror(up(lr, 2)), atol=1e-5)
    for turn in (lambda x: x.rot90(1, (-2, -1)), lambda x: x.transpose(-1, -2), lambda x: x.flip(-2).flip(-1)):
        assert not torch.allclose(up(turn(lr), 1), turn(up(lr, 1)), atol=1e-3)
        assert torch.allclose(up(turn(lr), 8), turn(up(lr, 8)), atol=1e-5)


@pytest.mark.parametrize("sampling", [Sampling(samples=8), Sampling(steps=3, eta=1.0, samples=3, seed=5)],
                         ids=["8 views", "3 views, η = 1"])
def test_views_sampled_in_pairs_are_the_views_sampled_one_at_a_time(model_file, monkeypatch, sampling):
    """Each view draws its noise (at η > 0, every step's) from its own seed, whatever it is batched with."""
    upscale_module = importlib.import_module("diffgen.upscale")
    loaded = load_model(model_file)
    lr = to_model_range(pil_to_tensor(smooth_image(24, 16)))[None]  # not square: views 4-7 are transposed
    paired = upscale_tensor(loaded, lr, sampling)
    monkeypatch.setattr(upscale_module, "VIEW_BATCH", 1)
    single = upscale_tensor(loaded, lr, sampling)
    assert torch.allclose(paired, single, atol=1e-5)
    monkeypatch.setattr(upscale_module, "VIEW_BATCH", 2)
    assert not torch.allclose(paired, upscale_tensor(loaded, lr, replace(sampling, seed=sampling.seed + 1)), atol=1e-3)


def test_a_grey_result_is_the_luma_of_the_colour_planes_at_8_and_16_bits():
    from diffgen.images import Planes, merge_planes

    pixels = np.array([[[200, 100, 50], [0, 255, 0], [30, 30, 30]]], dtype=np.uint8)  # channels disagree
    luma = pixels @ np.array([0.299, 0.587, 0.114])
    grey8 = np.asarray(merge_planes(pixels, Planes(None, None, True, 8, None)), dtype=float)
    grey16 = np.asarray(merge_planes(pixels.astype(np.uint16) * 257, Planes(None, None, True, 16, None)), dtype=float)
    assert np.abs(grey8 - luma).max() <= 0.5 + 1e-9
    assert np.abs(grey16 / 257 - luma).max() <= 0.5 / 257 + 1e-9


def test_upscale_keeps_each_kind_of_image(model_file, tmp_path):
    rgb = smooth_image(12, 8)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((12, 8)))
    pal = rgb.quantize(16)
    pal.info["transparency"] = 0
    grey16 = Image.fromarray((np.arange(96).reshape(8, 12) * 600).astype(np.uint16))
    cases = {
        "rgba.png": (rgba, "RGBA"), "palette.png": (pal, "RGBA"), "grey.png": (rgb.convert("L"), "L"),
        "grey16.png": (grey16, "I;16"), "la.png": (rgba.convert("LA"), "LA"), "cmyk.jpg": (rgb.convert("CMYK"), "RGB"),
    }
    for name, (img, _) in cases.items():
        img.save(tmp_path / name)
    r = invoke("upscale", *(tmp_path / n for n in cases), "--model", model_file, "--steps", 1, "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert "converted CMYK to RGB" in r.output
    for name, (_, mode) in cases.items():
        with Image.open(tmp_path / "out" / f"{name.split('.')[0]}_x4.png") as out:
            assert out.size == (48, 32), name
            assert out.mode == mode, name
    with Image.open(tmp_path / "out" / "grey16_x4.png") as out:
        assert np.asarray(out).max() > 255  # still 16-bit data
    with Image.open(tmp_path / "out" / "rgba_x4.png") as out:
        alpha = np.asarray(out.getchannel("A"))
        assert alpha[0].mean() < 60 and alpha[-1].mean() > 190  # the top-to-bottom gradient survived


def test_exif_orientation_icc_and_png_text_are_respected(model_file, tmp_path):
    img = smooth_image(16, 8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: the upright image is 8 wide and 16 tall
    img.save(tmp_path / "rotated.jpg", exif=exif)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "someone")
    img.save(tmp_path / "tagged.png", pnginfo=info, icc_profile=icc)
    r = invoke("upscale", tmp_path / "rotated.jpg", tmp_path / "tagged.png", "--model", model_file, "--steps", 1,
               "--samples", 8)
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "rotated_x4.png") as out:
        assert out.size == (32, 64)
    with Image.open(tmp_path / "tagged_x4.png") as out:
        assert out.info.get("icc_profile") == icc
        assert out.text["Author"] == "someone" and (out.text["steps"], out.text["samples"]) == ("1", "8")


def test_output_names_formats_and_overwrite_rules(model_file, tmp_path):
    smooth_image(8, 8).save(tmp_path / "a.png")
    base = ("upscale", tmp_path / "a.png", "--model", model_file, "--steps", 1)
    assert invoke(*base, "--format", "jpg", "--suffix", "-big").exit_code == 0
    with Image.open(tmp_path / "a-big.jpg") as out:
        assert (out.format, out.size) == ("JPEG", (32, 32))
    assert invoke(*base).exit_code == 0
    before = (tmp_path / "a_x4.png").read_bytes()
    r = invoke(*base, "--seed", 5)
    assert r.exit_code == 1 and "already exists" in r.output and "0 images upscaled on cpu, 0 skipped, 1 failed" in r.output
    assert (tmp_path / "a_x4.png").read_bytes() == before
    r = invoke(*base, "--skip-existing")
    assert r.exit_code == 0 and "0 images upscaled on cpu, 1 skipped" in r.output
    assert invoke(*base, "--seed", 5, "--overwrite").exit_code == 0
    assert invoke(*base, "--out", tmp_path / "named.webp", "--format", "webp").exit_code == 0
    assert (tmp_path / "named.webp").is_file()


def test_folders_globs_and_a_bad_file_in_a_batch(model_file, tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    smooth_image(8, 8).save(tmp_path / "in" / "one.png")
    smooth_image(8, 8).save(tmp_path / "in" / "sub" / "two.png")
    # Brackets in a name are text, not rich markup: the error must name the file as it is.
    (tmp_path / "in" / "broken[draft].png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    r = invoke("upscale", tmp_path / "in", "--recursive", "--model", model_file, "--steps", 1, "--out", tmp_path / "out")
    assert r.exit_code == 1
    assert "broken[draft].png" in r.output and "2 images upscaled on cpu, 0 skipped, 1 failed" in r.output
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png")) == ["one_x4.png", "sub/two_x4.png"]
    r = invoke("upscale", str(tmp_path / "in" / "*.png"), "--model", model_file, "--steps", 1, "--out", tmp_path / "g")
    assert "1 image upscaled" in r.output  # one.png; broken[draft].png fails
    r = invoke("upscale", str(tmp_path / "nothing*.png"), "--model", model_file)
    assert r.exit_code == 2 and "no files match" in r.output


def test_eval_upscale_prints_a_table_with_both_methods(model_file, tmp_path):
    smooth_image(48, 40).save(tmp_path / "a[v2].png")
    smooth_image(44, 36, seed=1).save(tmp_path / "b.png")
    r = invoke("eval-upscale", tmp_path, "--model", model_file, "--steps", 1)
    assert r.exit_code == 0, r.output
    for needle in ("a[v2].png", "b.png", "mean", "bicubic PSNR", "diffgen SSIM"):
        assert needle in r.output
    r = invoke("eval-upscale", tmp_path, "--model", model_file, "--steps", 1, "--samples", 9)
    assert r.exit_code == 2 and "--samples 9: must be between 1 and 8" in r.output


def test_eval_upscale_scores_a_degraded_input_and_refuses_an_unknown_condition(model_file, tmp_path):
    smooth_image(48, 40).save(tmp_path / "a.png")
    bicubic_psnr = {}
    for condition in ("clean", "jpeg:20"):
        r = invoke("eval-upscale", tmp_path, "--model", model_file, "--steps", 1, "--degrade", condition)
        assert r.exit_code == 0 and f"inputs {condition}" in " ".join(r.output.split()), r.output
        bicubic_psnr[condition] = float(next(line for line in r.output.splitlines() if "mean" in line).split("│")[2])
    assert bicubic_psnr["jpeg:20"] < bicubic_psnr["clean"]
    r = invoke("eval-upscale", tmp_path, "--model", model_file, "--degrade", "jpeg:100")
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "--degrade jpeg:100: use clean" in r.output


def test_a_final_width_or_height_keeps_the_aspect(model_file, tmp_path):
    from diffgen.models import open_model
    from diffgen.upscale import final_size, upscale_file

    assert final_size((30, 20), 4, None, None) == (120, 80)
    assert final_size((30, 20), 4, 100, None) == (100, 67)
    assert final_size((30, 20), 4, None, 50) == (75, 50)
    with pytest.raises(OptionError, match="--width and --height: give one"):
        final_size((30, 20), 4, 100, 50)
    smooth_image(30, 20).save(tmp_path / "in.png")
    loaded = open_model(str(model_file), Task.UPSCALE)
    fast = Sampling(steps=1, samples=1)
    full = upscale_file(loaded, tmp_path / "in.png", tmp_path / "x4.png", sampling=fast)
    wide = upscale_file(loaded, tmp_path / "in.png", tmp_path / "w.png", sampling=fast, width=90)
    assert full.size == Image.open(tmp_path / "x4.png").size == (120, 80)
    assert wide.size == Image.open(tmp_path / "w.png").size == (90, 60)
    lanczos = np.asarray(Image.open(tmp_path / "x4.png").resize((90, 60), Image.Resampling.LANCZOS), np.int16)
    assert np.abs(np.asarray(Image.open(tmp_path / "w.png"), np.int16) - lanczos).max() <= 1


def test_the_command_takes_a_final_size_and_a_detail_mode(model_file, tmp_path):
    smooth_image(30, 20).save(tmp_path / "in.png")
    r = invoke("upscale", tmp_path / "in.png", "--model", model_file, "--height", 50, "--detail")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "in_x4.png") as out:
        assert out.size == (75, 50)
        assert (out.text["steps"], out.text["eta"], out.text["samples"]) == ("20", "1.0", "1")  # upscale.DETAIL
    for args, message in ((("--width", 0), "--width 0: must be at least 1"),
                          (("--width", 90, "--height", 50), "--width and --height: give one"),
                          (("--detail", "--steps", 5), "--detail sets --steps, --eta and --samples")):
        r = invoke("upscale", tmp_path / "in.png", "--model", model_file, "--overwrite", *args)
        assert r.exit_code == 2 and message in r.output, (args, r.output)
