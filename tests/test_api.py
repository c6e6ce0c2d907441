"""The Python API: `from diffgen import generate, upscale, load_model` gives what the commands write."""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import diffgen
from diffgen import generate, load_model, upscale
from diffgen.cli import generating, upscaling
from diffgen.checkpoint import LoadedModel, Task
from diffgen.errors import CheckpointError, OptionError
from test_hub import tiny_model
from test_upscale import invoke, model_file, smooth_image  # noqa: F401 - model_file is a fixture

SRC = str(Path(diffgen.__file__).parents[1])


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("gen"), "gen.safetensors")  # 16x16, classes red and blue


def pixels(image) -> np.ndarray:
    if isinstance(image, (str, Path)):
        with Image.open(image) as img:
            return np.asarray(img)
    return np.asarray(image)


def python(code: str) -> str:
    env = os.environ | {"PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_import_diffgen_and_help_do_not_import_torch():
    assert python("import sys, diffgen; print(diffgen.__version__, 'torch' in sys.modules)").split() == \
        [diffgen.__version__, "False"]
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom diffgen.cli import app\n"
            "print(CliRunner().invoke(app, ['--help']).exit_code, 'torch' in sys.modules)")
    assert python(code).split() == ["0", "False"]


def test_the_names_are_the_functions_whatever_was_imported_first():
    """diffgen.generate and diffgen.upscale are also modules: importing them first must not hide the functions."""
    code = ("import diffgen.generate, diffgen.upscale\nfrom diffgen import generate, upscale\n"
            "print(generate.__module__, upscale.__module__, diffgen.generate is generate)")
    assert python(code).split() == ["diffgen.api", "diffgen.api", "True"]
    assert generate.__module__ == upscale.__module__ == load_model.__module__ == "diffgen.api"


@pytest.mark.parametrize("options, settings", [
    ((), {}),  # the defaults: unipc, 10 steps, seed 0, every class in turn, device and precision auto
    (("--seed", 5, "--steps", 3, "--sampler", "ddim", "--class", "blue", "--start", 2, "--precision", "fp32"),
     {"seed": 5, "steps": 3, "sampler": "ddim", "classes": "blue", "start": 2, "precision": "fp32"}),
    (("--guidance", 1.5, "--class", "red", "--class", "1", "--batch-size", 2, "--spacing", "karras"),
     {"guidance": 1.5, "classes": ["red", 1], "batch_size": 2, "spacing": "karras"}),
    (("--guidance", 2, "--guidance-interval", "0.3,1.1"), {"guidance": 2, "guidance_interval": (0.3, 1.1)}),
])
def test_generate_equals_the_pngs_the_command_writes(generator, tmp_path, options, settings):
    r = invoke("generate", "--model", generator, "--n", 3, "--out", tmp_path, *options)
    assert r.exit_code == 0, r.output
    images = generate(3, str(generator), **settings)
    first = int(settings.get("start", 0))
    assert [im.size for im in images] == [(16, 16)] * 3
    for i, image in enumerate(images):
        assert np.array_equal(pixels(image), pixels(tmp_path / f"{first + i:05d}.png"))


def test_a_loaded_model_serves_many_calls(generator):
    model = load_model(generator, "generate", device="cpu", precision="fp32")
    assert isinstance(model, LoadedModel) and model.precision == "fp32"
    done = []
    images = generate(2, model, steps=2, callback=lambda i, n: done.append((i, n)))
    assert done == [(2, 2)]
    again = generate(2, str(generator), steps=2, device="cpu", precision="fp32")
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(images, again))


def test_upscale_equals_the_file_the_command_writes(model_file, tmp_path):
    smooth_image(40, 24).save(tmp_path / "low.png")
    r = invoke("upscale", tmp_path / "low.png", "--model", model_file, "--out", tmp_path / "big.png", "--tile", 32)
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "low.png") as low:
        from_image = upscale(low, model_file, tile=32)
    from_file = upscale(tmp_path / "low.png", model_file, tile=32, scale=4)
    assert from_image.size == (160, 96)
    assert np.array_equal(pixels(from_image), pixels(tmp_path / "big.png"))
    assert np.array_equal(pixels(from_file), pixels(tmp_path / "big.png"))


def test_upscale_takes_and_gives_tensors(model_file, tmp_path):
    low = smooth_image(40, 24)
    lowres = torch.from_numpy(np.array(low)).permute(2, 0, 1).float() / 127.5 - 1
    image = pixels(upscale(low, model_file, samples=1, precision="fp32"))
    one = upscale(lowres, model_file, samples=1, precision="fp32")
    batch = upscale(torch.stack([lowres, lowres.flip(-1)]), model_file, samples=1, precision="fp32")
    assert one.shape == (3, 96, 160) and batch.shape == (2, 3, 96, 160)
    # The same computation as the image's, kept to 16 bits instead of 8.
    assert np.abs((one.permute(1, 2, 0).numpy() + 1) * 127.5 - image).max() <= 0.51
    assert torch.equal(batch[0], one)


def test_errors_are_diffgens_and_nothing_is_printed(generator, model_file, capfd):
    cases = [
        (lambda: generate(0, generator), OptionError, "--n 0: must be at least 1"),
        (lambda: generate(1, generator, sampler="nope"), OptionError, "--sampler nope: choose one of"),
        (lambda: generate(1, generator, steps=1001), OptionError, "--steps 1001: this model has 1000 timesteps"),
        (lambda: generate(1, generator, classes="green"), OptionError, "--class green: the model has no such class"),
        (lambda: generate(1, model_file), CheckpointError, "is an upscale model"),
        (lambda: upscale(smooth_image(8, 8), generator), CheckpointError, "is a generate model"),
        (lambda: upscale(smooth_image(8, 8), model_file, scale=2), OptionError, "--scale 2: this model upscales x4"),
        (lambda: upscale(smooth_image(8, 8), model_file, samples=9), OptionError, "--samples 9"),
        (lambda: upscale(torch.zeros(1, 8, 8), model_file), OptionError, "image: a float tensor of shape"),
        (lambda: upscale(b"png bytes", model_file), OptionError, "image: a PIL image, a file name or a tensor"),
        (lambda: load_model(generator, task="train"), OptionError, "task train: choose one of generate, upscale"),
        (lambda: load_model(generator, precision="fp8"), OptionError, "--precision fp8"),
        (lambda: load_model("no/such/model.safetensors"), CheckpointError, "no such model file"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    assert capfd.readouterr() == ("", "")


def test_defaults_are_the_commands():
    """The API's defaults mirror the command's options (the CLI cannot import the core's: that imports torch)."""
    # --start's default is "after the images in --out"; the API writes no folder, so it starts at 0.
    for command, function, skip in ((generating.generate, generate, {"start"}), (upscaling.upscale, upscale, set())):
        options = inspect.signature(command).parameters
        for name, param in inspect.signature(function).parameters.items():
            if name in options and name not in skip | {"model"}:
                default = options[name].default
                assert param.default == getattr(default, "value", default), name


@pytest.mark.parametrize("scale", [4, 2])
def test_denoise_blends_the_bundled_upscaler_with_its_clean_partner(model_file, tmp_path, scale):
    from diffgen.api import upscaler_for

    real, clean = (load_model(name, precision="fp32").model.state_dict()
                   for name in (f"upscale-x{scale}", f"upscale-x{scale}-clean"))
    for strength, expected in ((0.0, clean), (1.0, real), (0.25, {k: 0.75 * clean[k] + 0.25 * real[k] for k in real})):
        blended = upscaler_for(None, strength, "cpu", "fp32", scale=scale)
        assert blended.spec.scale == scale
        assert all(torch.allclose(blended.model.state_dict()[k], expected[k], atol=1e-6) for k in real), strength
    with pytest.raises(OptionError, match="--denoise 1.5: must be between 0 and 1"):
        upscaler_for("upscale-x4", 1.5, "cpu", "fp32")
    smooth_image(16, 16).save(tmp_path / "in.png")
    r = invoke("upscale", tmp_path / "in.png", "--model", model_file, "--denoise", 0.5)
    assert r.exit_code == 2 and "--denoise: only for the bundled upscale-x4" in r.output


def test_denoise_auto_upscales_a_clean_image_with_the_clean_partner_and_a_jpeg_with_the_real_world_model(tmp_path):
    from test_damage import as_jpeg, image, smooth_photo

    clean = image(smooth_photo(96))
    clean.save(tmp_path / "clean.png")
    as_jpeg(clean, 75).save(tmp_path / "web.png")  # a JPEG's pixels, kept losslessly: its blocks tell, not its name
    r = invoke("upscale", tmp_path / "clean.png", tmp_path / "web.png")
    assert r.exit_code == 0, r.output
    assert "clean_x4.png (384x384; --denoise 0: looks clean)" in r.output
    assert "web_x4.png (384x384; --denoise 1: JPEG blocks)" in r.output
    for name, strength in (("clean", 0.0), ("web", 1.0)):
        with Image.open(tmp_path / f"{name}_x4.png") as out:
            assert f"--denoise {strength}" in out.text["remake"]  # `diffgen reproduce` makes it again
            np.testing.assert_array_equal(pixels(out), pixels(upscale(tmp_path / f"{name}.png", denoise=strength)))
            np.testing.assert_array_equal(pixels(out), pixels(upscale(tmp_path / f"{name}.png")))  # the API's auto
    assert not np.array_equal(pixels(upscale(clean, denoise=0)), pixels(upscale(clean, denoise=1)))
    (tmp_path / "hr").mkdir()
    clean.resize((384, 384), Image.Resampling.BICUBIC).save(tmp_path / "hr" / "photo.png")  # shrunk: near `clean`
    for condition, chose in (("clean", "--denoise 0"), ("jpeg:50", "--denoise 1")):
        r = invoke("eval-upscale", tmp_path / "hr", "--degrade", condition)
        assert r.exit_code == 0 and chose in next(line for line in r.output.splitlines() if "photo.png" in line)


def test_scale_without_a_model_picks_the_bundled_upscaler_of_that_factor(tmp_path):
    from diffgen.api import upscaler_for

    assert upscaler_for(None, None, "cpu", "fp32", scale=2).spec.scale == 2
    assert upscaler_for(None, None, "cpu", "fp32").spec.scale == 4
    assert upscale(smooth_image(12, 10), scale=2).size == (24, 20)
    with pytest.raises(OptionError, match=r"--scale 3: no bundled model upscales x3 \(bundled: x2, x4\)"):
        upscaler_for(None, None, "cpu", "fp32", scale=3)
    smooth_image(12, 10).save(tmp_path / "in.png")
    r = invoke("upscale", tmp_path / "in.png", "--scale", 2)
    assert r.exit_code == 0 and (tmp_path / "in_x2.png").is_file(), r.output
