"""`diffgen generate`: numbering, remaking one image, grids, streaming to disk, memory and messages."""

from __future__ import annotations

import importlib
import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffgen.checkpoint import ModelSpec, load_model, save_model
from diffgen.cli import app
from diffgen.generate import Generated, class_index, grid_layout
from diffgen.schedule import Prediction
from diffgen.unet import UNet, UNetConfig

generate = importlib.import_module("diffgen.generate")  # diffgen.generate is the API's function (see diffgen/__init__.py)
runner = CliRunner()
CLASSES = ("cats", "dogs", "smileys-emotion")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A tiny 8-pixel class-conditional model with random weights everywhere: it samples in milliseconds."""
    model = random_model(0.05)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(path, model, ModelSpec(unet=model.cfg, image_size=8, class_names=CLASSES))
    return path


def random_model(std: float) -> UNet:
    """A tiny U-Net for CLASSES, every weight drawn from N(0, std²) with a fixed seed."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(),
                            norm_groups=4, num_classes=len(CLASSES)))
    for p in model.parameters():
        p.data.normal_(0, std)
    return model


def run(model_file, *args):
    return invoke("generate", "--model", model_file, "--steps", 2, "--device", "cpu", *args)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- numbering: a second run continues, --overwrite starts again, --start picks the first index ----------

def test_a_second_run_continues_the_numbering_with_new_images(model_file, tmp_path):
    out = tmp_path / "imgs"
    assert run(model_file, "--n", 2, "--out", out).exit_code == 0
    r = run(model_file, "--n", 2, "--out", out)
    assert r.exit_code == 0, r.output
    assert names(out) == [f"{i:05d}.png" for i in range(4)]
    assert "images 2-3" in r.output and "--overwrite" in r.output  # the note says how to start again at 0
    r = run(model_file, "--n", 4, "--out", tmp_path / "one-go")
    assert r.exit_code == 0, r.output
    for i in range(4):  # two runs of 2 are the run of 4: image i comes from its own seed
        assert np.array_equal(pixels(out / f"{i:05d}.png"), pixels(tmp_path / "one-go" / f"{i:05d}.png"))
    assert not np.array_equal(pixels(out / "00000.png"), pixels(out / "00002.png"))


def test_overwrite_starts_at_zero_and_replaces(model_file, tmp_path):
    assert run(model_file, "--n", 2, "--out", tmp_path, "--seed", 1).exit_code == 0
    before = pixels(tmp_path / "00000.png")
    r = run(model_file, "--n", 1, "--out", tmp_path, "--seed", 2, "--overwrite")
    assert r.exit_code == 0, r.output
    assert names(tmp_path) == ["00000.png", "00001.png"]
    assert not np.array_equal(pixels(tmp_path / "00000.png"), before)


def test_an_explicit_start_over_existing_files_is_refused_naming_the_fixes(model_file, tmp_path):
    assert run(model_file, "--n", 2, "--out", tmp_path).exit_code == 0
    before = (tmp_path / "00001.png").read_bytes()
    r = run(model_file, "--n", 2, "--out", tmp_path, "--start", 1)
    assert r.exit_code == 1 and "00001.png: already exists" in r.output
    assert "--overwrite" in r.output and "--start" in r.output and len(r.output.strip().splitlines()) == 1
    assert (tmp_path / "00001.png").read_bytes() == before
    assert run(model_file, "--n", 1, "--out", tmp_path, "--start", -1).exit_code == 2


# --- remaking one image from what its PNG records ----------------------------------------------------------

def test_each_png_records_the_command_that_remakes_it_exactly(model_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run(model_file, "--n", 6, "--out", "first", "--batch-size", 4, "--seed", 3, "--class", "dogs",
            "--class", "cats", "--sampler", "ddim", "--guidance", 1.5)
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "first" / "00005.png") as img:
        text = dict(img.text)
    assert text["index"] == "5" and text["class_name"] == "cats"  # the class cycle goes on by index
    argv = shlex.split(text["remake"])
    assert argv[:2] == ["diffgen", "generate"] and argv[argv.index("--start") + 1] == "5"
    assert argv[argv.index("--n") + 1] == "1" and "--out" not in argv
    r = invoke(*argv[1:])
    assert r.exit_code == 0, r.output
    assert names(tmp_path / "generated") == ["00005.png"]
    assert np.array_equal(pixels(tmp_path / "generated" / "00005.png"), pixels(tmp_path / "first" / "00005.png"))


def test_start_and_n_one_remake_one_image_of_a_run(model_file, tmp_path):
    assert run(model_file, "--n", 6, "--out", tmp_path / "all").exit_code == 0
    assert run(model_file, "--start", 5, "--n", 1, "--out", tmp_path / "one").exit_code == 0
    assert names(tmp_path / "one") == ["00005.png"]
    assert np.array_equal(pixels(tmp_path / "one" / "00005.png"), pixels(tmp_path / "all" / "00005.png"))


# --- guidance: a model's own default, and an interval of noise levels --------------------------------------

@pytest.fixture(scope="module")
def guided_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny x0-predicting model whose classes matter (an ε model's random outputs saturate every pixel), and
    the same with a default guidance of w = 2 at noise levels 0.3 to 1.1."""
    model = random_model(0.1)
    model.label_emb.weight.data.normal_(0, 3)
    spec = ModelSpec(unet=model.cfg, image_size=8, class_names=CLASSES, prediction=Prediction.X0)
    folder = tmp_path_factory.mktemp("guided")
    save_model(folder / "plain.safetensors", model, spec)
    save_model(folder / "guided.safetensors", model, replace(spec, guidance=2.0, guidance_interval=(0.3, 1.1)))
    return folder / "plain.safetensors", folder / "guided.safetensors"


def test_a_models_own_guidance_is_the_default_and_options_override_it(guided_pair, tmp_path):
    model_file, guided_model_file = guided_pair

    def made(model, *options):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        r = run(model, "--n", 3, "--steps", 10, "--out", out, *options)
        assert r.exit_code == 0, r.output
        return np.stack([pixels(out / f"{i:05d}.png") for i in range(3)])

    plain, default = made(model_file), made(guided_model_file)
    assert not np.array_equal(default, plain)  # 10 steps have noise levels inside 0.3..1.1
    assert np.array_equal(default, made(model_file, "--guidance", 2, "--guidance-interval", "0.3,1.1"))
    assert np.array_equal(made(guided_model_file, "--guidance", 0), plain)
    everywhere = made(guided_model_file, "--guidance-interval", "all")
    assert np.array_equal(everywhere, made(model_file, "--guidance", 2))
    assert not np.array_equal(everywhere, default)


def test_the_remake_command_states_the_guidance_a_model_defaults_to(guided_pair, tmp_path, monkeypatch):
    guided_model_file = guided_pair[1]
    monkeypatch.chdir(tmp_path)
    for options, stated in [((), ["--guidance", "2.0", "--guidance-interval", "0.3,1.1"]),
                            (("--guidance", 0), ["--guidance", "0.0"]),
                            (("--guidance-interval", "all"), ["--guidance", "2.0", "--guidance-interval", "all"])]:
        out = f"run{len(list(tmp_path.iterdir()))}"
        assert run(guided_model_file, "--n", 1, "--steps", 10, "--out", out, *options).exit_code == 0
        with Image.open(tmp_path / out / "00000.png") as img:
            argv = shlex.split(img.text["remake"])
        guidance = argv[argv.index("--guidance"):argv.index("--precision")]
        assert guidance == stated
        r = invoke(*argv[1:], "--out", f"{out}-again")
        assert r.exit_code == 0, r.output
        assert np.array_equal(pixels(tmp_path / f"{out}-again" / "00000.png"), pixels(tmp_path / out / "00000.png"))


def test_a_model_file_keeps_its_guidance_and_refuses_an_impossible_one(model_file, guided_pair):
    spec = load_model(guided_pair[1]).spec
    assert (spec.guidance, spec.guidance_interval) == (2.0, (0.3, 1.1))
    assert "guidance" not in load_model(model_file).spec.to_json()  # absent at the defaults: older readers load it
    loaded = load_model(model_file)
    for bad, message in [({"guidance_interval": (1.1, 0.3)}, "low end must be below"),
                         ({"guidance": -1.0}, "guidance -1"),
                         ({"guidance": 1.0, "class_names": (), "unet": replace(loaded.spec.unet, num_classes=0)},
                          "unconditional")]:
        with pytest.raises(ValueError, match=message):
            ModelSpec.from_json(replace(loaded.spec, **bad).to_json())


# --- grids ---------------------------------------------------------------------------------------------------

def made(labels):
    return [Generated(Image.new("L", (1, 1), i), i, i, label) for i, label in enumerate(labels)]


@pytest.mark.parametrize(("n", "ncols"), [(10, 4), (12, 4), (16, 4), (2, 2), (1, 1), (3, 2)])
def test_grids_are_near_square(n, ncols):
    labels = [i % 10 for i in range(n)]  # 10 classes in turn: one image of each is no reason for a row each
    assert grid_layout(made(labels))[1] == ncols
    assert grid_layout(made([None] * n))[1] == ncols


def test_grids_have_a_row_per_class_when_the_classes_fill_even_rows():
    images, ncols = grid_layout(made([0, 1, 2, 0, 1, 2]))
    assert ncols == 2 and [img.getpixel((0, 0)) for img in images] == [0, 3, 1, 4, 2, 5]
    assert grid_layout(made([0, 1] * 50))[1] == 10  # 2 rows of 50 would be a strip: near-square instead


def test_make_grid_tiles_row_by_row():
    from diffgen.images import make_grid

    grid = make_grid([Image.new("L", (4, 3), v) for v in (10, 20, 30)], 2, pad=1)
    assert grid.size == (2 * 5 + 1, 2 * 4 + 1)
    assert [grid.getpixel(xy) for xy in ((1, 1), (6, 1), (1, 5), (6, 5))] == [10, 20, 30, 255]


def test_a_grid_alone_writes_only_the_grid(model_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run(model_file, "--n", 10, "--grid", "only.png")
    assert r.exit_code == 0, r.output
    assert names(tmp_path) == ["only.png"]
    with Image.open(tmp_path / "only.png") as img:
        assert img.size == (4 * 10 + 2, 3 * 10 + 2)  # 4 x 3 tiles of 8 px with 2 px gaps
    r = run(model_file, "--n", 10, "--grid", "only.png")
    assert r.exit_code == 1 and "only.png: already exists" in r.output


# --- messages ---------------------------------------------------------------------------------------------------

def test_class_names_match_without_case_and_near_misses_get_a_suggestion():
    assert class_index(CLASSES, "Smileys-Emotion") == 2 and class_index(CLASSES, "1") == 1
    with pytest.raises(generate.OptionError, match="did you mean smileys-emotion"):
        class_index(CLASSES, "smileys")
    with pytest.raises(generate.OptionError, match="did you mean dogs"):
        class_index(CLASSES, "dgos")
    with pytest.raises(generate.OptionError, match="unconditional"):
        class_index((), "cats")


def test_the_summary_counts_in_words_and_names_the_device(model_file, tmp_path):
    r = run(model_file, "--n", 1, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    assert "1 image in" in r.output and "images" not in r.output.replace(str(tmp_path), "") and "cpu" in r.output


def test_device_defaults_to_auto():
    import inspect

    from diffgen.cli import generating

    assert inspect.signature(generating.generate).parameters["device"].default == "auto"


# --- writing as it goes, interrupts and unwritable folders --------------------------------------------------

def test_images_stream_batch_by_batch(model_file):
    loaded = load_model(model_file)
    first = next(generate.iter_images(loaded, 10**9, steps=1, batch_size=3))  # a billion images: lazily
    assert [g.index for g in first] == [0, 1, 2]


def test_ctrl_c_keeps_the_written_batches_and_says_how_to_continue(model_file, tmp_path, monkeypatch):
    real, calls = generate.sample_batch, []

    def interrupted_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "sample_batch", interrupted_third)
    out = tmp_path / "imgs"
    r = run(model_file, "--n", 7, "--out", out, "--batch-size", 2, "--seed", 4)
    assert r.exit_code == 130
    assert names(out) == [f"{i:05d}.png" for i in range(4)]
    assert "4 of 7 images" in r.output
    monkeypatch.setattr(generate, "sample_batch", real)
    argv = shlex.split(r.output[r.output.index("diffgen generate"):].split("\n")[0].strip())
    r = invoke(*argv[1:])
    assert r.exit_code == 0, r.output
    assert run(model_file, "--n", 7, "--out", tmp_path / "one-go", "--seed", 4).exit_code == 0
    assert names(out) == names(tmp_path / "one-go")
    for name in names(out):
        assert np.array_equal(pixels(out / name), pixels(tmp_path / "one-go" / name))


def test_an_image_written_just_as_ctrl_c_comes_counts_as_written(model_file, tmp_path, monkeypatch):
    real, calls = generate.save_image, []

    def interrupted_after_third(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(generate, "save_image", interrupted_after_third)
    r = run(model_file, "--n", 5, "--out", tmp_path)
    assert r.exit_code == 130 and "3 of 5 images" in r.output and "--start 3 --n 2" in r.output


def test_ctrl_c_in_a_grid_alone_says_nothing_was_written(model_file, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "sample_batch", interrupt)
    monkeypatch.chdir(tmp_path)
    r = run(model_file, "--n", 4, "--grid", "g.png")
    assert r.exit_code == 130 and "nothing was written" in r.output and names(tmp_path) == []


def test_a_grid_too_big_to_hold_is_refused_before_sampling(model_file, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFGEN_MAX_PIXELS", "5000")
    r = run(model_file, "--n", 50, "--grid", tmp_path / "g.png")
    assert r.exit_code == 2 and "--grid" in r.output and "5,000" in r.output and "--n" in r.output
    assert not (tmp_path / "g.png").exists()
    r = run(model_file, "--n", 40, "--grid", tmp_path / "g.png")  # 7 x 6 tiles of 10 px: 72 x 62 = 4,464 pixels
    assert r.exit_code == 0, r.output


def test_an_unwritable_output_folder_is_one_line_naming_it(model_file, tmp_path, monkeypatch):
    def refused(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refused)
    r = run(model_file, "--n", 1, "--out", tmp_path / "new")
    assert r.exit_code == 1 and "internal error" not in r.output and len(r.output.strip().splitlines()) == 1
    assert str(tmp_path / "new") in r.output and "permission" in r.output.lower() and "--out" in r.output
    monkeypatch.undo()
    (tmp_path / "file").write_text("x")
    r = run(model_file, "--n", 1, "--out", tmp_path / "file")
    assert r.exit_code == 1 and "not a folder" in r.output and "internal error" not in r.output


# --- memory ---------------------------------------------------------------------------------------------------

def test_a_batch_that_does_not_fit_is_capped_and_the_note_gives_the_estimate(model_file, tmp_path, monkeypatch):
    loaded = load_model(model_file)
    per_image = generate.image_bytes(loaded.spec)
    assert generate.image_bytes(loaded.spec, guided=True) == 2 * per_image
    monkeypatch.setattr(generate, "available_memory", lambda device: int(10.5 * per_image / generate.MEMORY_SHARE))
    r = run(model_file, "--n", 30, "--batch-size", 100000, "--out", tmp_path / "capped")
    assert r.exit_code == 0, r.output
    assert "--batch-size 100000" in r.output and "using --batch-size 10" in r.output and "free" in r.output
    assert len(names(tmp_path / "capped")) == 30


def test_a_model_too_big_for_one_image_is_refused_with_the_estimate(model_file, tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "available_memory", lambda device: 1000)
    r = run(model_file, "--n", 2, "--out", tmp_path / "o")
    assert r.exit_code == 1 and "needs about" in r.output and "free" in r.output
    assert not (tmp_path / "o").exists()


def test_the_estimate_grows_with_the_image_and_the_network(model_file):
    spec = load_model(model_file).spec
    from dataclasses import replace

    bigger = replace(spec, image_size=16)
    wider = replace(spec, unet=replace(spec.unet, base_channels=16))
    assert generate.image_bytes(bigger) == 4 * generate.image_bytes(spec)  # activations scale with pixels
    assert generate.image_bytes(wider) == 2 * generate.image_bytes(spec)  # and with width


def test_sigterm_keeps_the_written_batches_too(model_file, tmp_path, monkeypatch):
    import os
    import signal

    real, calls = generate.sample_batch, []

    def terminated_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # what `kill` or a job scheduler sends
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "sample_batch", terminated_second)
    r = run(model_file, "--n", 6, "--out", tmp_path / "imgs", "--batch-size", 2)
    assert r.exit_code == 143 and "2 of 6 images" in r.output and "continue with" in r.output
    assert names(tmp_path / "imgs") == ["00000.png", "00001.png"]


def test_a_remake_command_works_from_another_folder(model_file, tmp_path, monkeypatch):
    (tmp_path / "m.safetensors").write_bytes(model_file.read_bytes())
    monkeypatch.chdir(tmp_path)
    assert run(Path("m.safetensors"), "--n", 2, "--out", "imgs").exit_code == 0
    with Image.open(tmp_path / "imgs" / "00001.png") as img:
        argv = shlex.split(img.text["remake"])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    r = invoke(*argv[1:])
    assert r.exit_code == 0, r.output
    assert np.array_equal(pixels(tmp_path / "elsewhere" / "generated" / "00001.png"), pixels(tmp_path / "imgs" / "00001.png"))
