"""The command line, end to end: train, generate, train an upscaler, upscale."""

import importlib
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from diffgen.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def generator_run(class_folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "gen"
    r = invoke("train", class_folder, "--out", run, "--image-size", 16, "--max-steps", 3, "--batch-size", 4,
               "--sample-every", 3, "--device", "cpu")
    assert r.exit_code == 0, r.output
    return run


@pytest.fixture(scope="module")
def upscaler_run(photo_folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "sr"
    r = invoke("train", photo_folder, "--out", run, "--task", "upscale", "--scale", 4, "--image-size", 32,
               "--max-steps", 2, "--batch-size", 2, "--sample-every", 2, "--device", "cpu")
    assert r.exit_code == 0, r.output
    return run


def test_train_writes_model_state_log_and_samples(generator_run):
    assert (generator_run / "model.safetensors").is_file()
    assert (generator_run / "state.safetensors").is_file()
    assert (generator_run / "samples" / "step_000003.png").is_file()


def test_generate_writes_numbered_pngs_and_a_grid(generator_run, tmp_path):
    out = tmp_path / "imgs"
    r = invoke("generate", "--model", generator_run, "--n", 5, "--out", out, "--steps", 3, "--batch-size", 2,
               "--class", "red", "--grid", tmp_path / "grid.png")
    assert r.exit_code == 0, r.output
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(5)]
    for f in files:
        with Image.open(f) as img:
            assert (img.mode, img.size) == ("RGB", (16, 16))
            assert img.text["class"] == "1"  # "red" sorts after "blue"
    assert (tmp_path / "grid.png").is_file()


def test_generate_never_replaces_without_overwrite(generator_run, tmp_path):
    args = ("generate", "--model", generator_run, "--n", 1, "--out", tmp_path, "--steps", 1)
    assert invoke(*args).exit_code == 0
    before = (tmp_path / "00000.png").read_bytes()
    r = invoke(*args)
    assert r.exit_code == 0 and "images up to 0" in r.output  # a second run numbers after the first
    assert (tmp_path / "00000.png").read_bytes() == before and (tmp_path / "00001.png").is_file()
    r = invoke(*args, "--start", 0)
    assert r.exit_code == 1 and "already exists" in r.output
    assert (tmp_path / "00000.png").read_bytes() == before


def test_upscale_writes_beside_the_input(upscaler_run, tmp_path):
    src = tmp_path / "low.png"
    Image.new("RGB", (12, 10), (120, 40, 200)).save(src)
    r = invoke("upscale", src, "--model", upscaler_run, "--steps", 2)
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "low_x4.png") as img:
        assert (img.mode, img.size) == ("RGB", (48, 40))


def test_upscale_keeps_grey_and_alpha(upscaler_run, tmp_path):
    Image.new("L", (8, 8), 100).save(tmp_path / "grey.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 128)).save(tmp_path / "alpha.png")
    r = invoke("upscale", tmp_path / "grey.png", tmp_path / "alpha.png", "--model", upscaler_run, "--steps", 1,
               "--out", tmp_path / "big")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "big" / "grey_x4.png") as img:
        assert (img.mode, img.size) == ("L", (32, 32))
    with Image.open(tmp_path / "big" / "alpha_x4.png") as img:
        assert (img.mode, img.size) == ("RGBA", (32, 32))
        assert img.getchannel("A").getextrema() == (128, 128)


def test_models_of_the_wrong_task_are_refused(generator_run, upscaler_run, tmp_path):
    r = invoke("generate", "--model", upscaler_run, "--out", tmp_path)
    assert r.exit_code == 1 and "upscale model" in r.output and "Traceback" not in r.output
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    r = invoke("upscale", tmp_path / "x.png", "--model", generator_run)
    assert r.exit_code == 1 and "generate model" in r.output


def test_bad_options_exit_2_with_one_line(generator_run, tmp_path):
    for args, needle in [
        (("--n", 0), "--n 0"),
        (("--steps", 0), "--steps 0"),
        (("--steps", 5000), "--steps 5000"),
        (("--guidance", -1), "--guidance"),
        (("--guidance-interval", "1,0.3"), "--guidance-interval"),
        (("--class", "green"), "--class green"),
    ]:
        r = invoke("generate", "--model", generator_run, "--out", tmp_path / "o", *args)
        assert r.exit_code == 2, (args, r.output)
        assert needle in r.output and len(r.output.strip().splitlines()) == 1


def test_upscaling_runs_default_to_the_bundled_upscalers_recipe(generator_run, upscaler_run, photo_folder, tmp_path):
    from diffgen.checkpoint import load_model
    from diffgen.state import load_config

    gen, sr = load_config(generator_run / "state.safetensors"), load_config(upscaler_run / "state.safetensors")
    assert (gen.prediction.value, gen.min_snr_gamma, gen.pure_noise_share, gen.image_size) == ("v", 5.0, 0.0, 16)
    assert gen.num_res_blocks is None  # the preset's
    # upscaler_run gives only --image-size
    assert (sr.prediction.value, sr.min_snr_gamma, sr.pure_noise_share, sr.num_res_blocks) == ("x0", 0.0, 0.5, 2)
    assert load_model(upscaler_run / "model.safetensors").spec.unet.num_res_blocks == 2
    r = invoke("train", photo_folder, "--out", tmp_path / "sr", "--task", "upscale", "--max-steps", 1)
    assert r.exit_code == 1 and "smaller than --image-size 96" in r.output  # the photos are 48 px


def test_train_refuses_an_existing_run_without_resume(generator_run, class_folder):
    r = invoke("train", class_folder, "--out", generator_run, "--image-size", 16)
    assert r.exit_code == 2 and "--resume" in r.output
    r = invoke("train", class_folder, "--out", generator_run, "--resume", "--init-from", generator_run)
    assert r.exit_code == 2 and "--init-from (the run's: none) would change the run's own settings" in r.output


def test_a_run_another_trainer_holds_is_refused(generator_run, class_folder):
    import fcntl

    with open(generator_run / ".lock", "w") as held:  # as a running `diffgen train` holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = (generator_run / "state.safetensors").read_bytes()
        r = invoke("train", class_folder, "--out", generator_run, "--resume", "--max-steps", 100)
    assert r.exit_code == 2 and "another diffgen train is writing to this run" in r.output
    assert (generator_run / "state.safetensors").read_bytes() == before
    fresh = generator_run.parent / "fresh"
    fresh.mkdir()
    (fresh / ".lock").touch()  # left by a run that failed or finished: not a run, and not locked
    assert invoke("train", class_folder, "--out", fresh, "--image-size", 16, "--batch-size", 4, "--max-steps", 1).exit_code == 0


def test_train_reports_bad_data(tmp_path):
    (tmp_path / "data").mkdir()
    r = invoke("train", tmp_path / "data", "--out", tmp_path / "run")
    assert r.exit_code == 1 and "no images found" in r.output
    assert not (tmp_path / "run").exists()


def test_help_is_quick_and_lists_commands():
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("train", "generate", "upscale"):
        assert cmd in r.output


def test_info_export_and_push_commands(generator_run, tmp_path, monkeypatch):
    r = invoke("info", generator_run)
    assert r.exit_code == 0, r.output
    for needle in ("parameters", "use it", "diffgen generate"):
        assert needle in r.output
    r = invoke("info", generator_run, "--json")
    assert r.exit_code == 0, r.output
    assert {"parameters", "train_steps", "usage"} <= json.loads(r.output).keys()
    r = invoke("export", generator_run, tmp_path / "hub", "--repo-id", "me/tiny")
    assert r.exit_code == 0, r.output
    assert {p.name for p in (tmp_path / "hub").iterdir()} >= {"model.safetensors", "config.json", "README.md"}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = invoke("push", generator_run, "me/tiny")
    assert r.exit_code == 1 and "offline" in r.output.lower() and "Traceback" not in r.output


def test_generated_pngs_record_the_model_and_settings(generator_run, tmp_path):
    r = invoke("generate", "--model", generator_run, "--n", 1, "--out", tmp_path, "--steps", 2, "--sampler", "dpm++2m",
               "--precision", "bf16")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "00000.png") as img:
        text = img.text
    assert text["model"] == "model.safetensors" and len(text["sha256"]) == 12
    assert (text["sampler"], text["steps"], text["class_name"], text["precision"]) == ("dpm++2m", "2", "blue", "bf16")


def test_internal_errors_are_one_line_with_a_debug_hint(generator_run, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(importlib.import_module("diffgen.generate"), "write_run", broken)
    r = invoke("generate", "--model", generator_run, "--out", tmp_path / "o")
    assert r.exit_code == 1 and "internal error: RuntimeError: boom" in r.output and "--debug" in r.output
    assert "Traceback" not in r.output
    r = invoke("--debug", "generate", "--model", generator_run, "--out", tmp_path / "o")
    assert isinstance(r.exception, RuntimeError)


def test_train_refuses_an_image_size_the_unet_cannot_take(class_folder, tmp_path):
    r = invoke("train", class_folder, "--out", tmp_path / "r", "--image-size", 18, "--batch-size", 4)
    assert r.exit_code == 2 and "--image-size 18" in r.output and "multiple of 4" in r.output


def test_train_takes_an_explicit_unet_shape(class_folder, tmp_path):
    run = tmp_path / "r"
    r = invoke("train", class_folder, "--out", run, "--image-size", 16, "--batch-size", 4, "--max-steps", 1,
               "--base-channels", 16, "--channel-mults", "1,2", "--res-blocks", 1, "--attention-levels", "")
    assert r.exit_code == 0, r.output
    from diffgen.checkpoint import load_model

    unet = load_model(run / "model.safetensors").spec.unet
    assert (unet.base_channels, unet.channel_mults, unet.num_res_blocks, unet.attention_levels) == (16, (1, 2), 1, ())
    r = invoke("train", class_folder, "--out", tmp_path / "bad", "--channel-mults", "1,x")
    assert r.exit_code == 2 and "--channel-mults 1,x" in r.output
    r = invoke("train", class_folder, "--out", tmp_path / "bad", "--image-size", 16, "--batch-size", 4, "--attention-levels", "5")
    assert r.exit_code == 2 and "--attention-levels" in r.output
    for shape in (["--base-channels", 12], ["--base-channels", 12, "--channel-mults", "2,4"]):  # 12 itself is a width
        r = invoke("train", class_folder, "--out", tmp_path / "bad", "--image-size", 16, "--batch-size", 4, *shape)
        assert r.exit_code == 2 and "multiple of 8" in r.output, shape


def test_a_short_run_is_a_prefix_of_a_longer_one(generator_run, tmp_path):
    import numpy as np

    for n in (2, 5):
        r = invoke("generate", "--model", generator_run, "--n", n, "--out", tmp_path / str(n), "--steps", 3, "--seed", 7)
        assert r.exit_code == 0, r.output
    for i in range(2):
        with Image.open(tmp_path / "2" / f"{i:05d}.png") as a, Image.open(tmp_path / "5" / f"{i:05d}.png") as b:
            assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1  # batch size may round


def test_a_moved_run_resumes_where_it_now_is(class_folder, tmp_path):
    first = tmp_path / "first"
    assert invoke("train", class_folder, "--out", first, "--image-size", 16, "--batch-size", 4, "--max-steps", 2).exit_code == 0
    moved = tmp_path / "moved"
    first.rename(moved)
    r = invoke("train", class_folder, "--out", moved, "--resume", "--max-steps", 3)
    assert r.exit_code == 0, r.output
    assert not first.exists()
    from diffgen.checkpoint import load_model

    assert load_model(moved / "model.safetensors").spec.train_steps == 3


def test_resume_keeps_the_runs_precision_unless_told_to_move_it(class_folder, tmp_path):
    from diffgen.state import load_config

    run = tmp_path / "r"
    # Each resume repeats the first command's options, of every kind: the same values are no change.
    args = ("train", class_folder, "--out", run, "--image-size", 16, "--batch-size", 4, "--no-flip",
            "--schedule", "linear", "--channel-mults", "1,1,2", "--lr", "2e-4")
    assert invoke(*args, "--max-steps", 1, "--precision", "bf16", "--device", "cpu").exit_code == 0

    def saved():
        return load_config(run / "state.safetensors")

    r = invoke(*args, "--resume", "--max-steps", 2)
    assert r.exit_code == 0, r.output
    assert (saved().precision, saved().device) == ("bf16", "cpu")
    r = invoke(*args, "--resume", "--max-steps", 3, "--precision", "fp32", "--device", "auto", "--save-every", 7)
    assert r.exit_code == 0, r.output
    assert (saved().precision, saved().device, saved().max_steps, saved().save_every) == ("fp32", "auto", 3, 7)


def test_a_run_of_epochs_resumes_to_the_steps_asked_for(class_folder, tmp_path):
    args = ("train", class_folder, "--out", tmp_path / "r", "--image-size", 16, "--batch-size", 4)
    assert invoke(*args, "--epochs", 1).exit_code == 0  # 12 images: 3 steps
    r = invoke(*args, "--resume", "--max-steps", 5)
    assert r.exit_code == 0, r.output
    from diffgen.checkpoint import load_model

    assert load_model(tmp_path / "r" / "model.safetensors").spec.train_steps == 5


def test_resume_refuses_options_that_would_change_the_run(generator_run, class_folder):
    before = (generator_run / "state.safetensors").read_bytes()
    r = invoke("train", class_folder, "--out", generator_run, "--resume", "--lr", 1e-3, "--batch-size", 8,
               "--no-flip", "--image-size", 16, "--max-steps", 5)  # the image size is the run's own: no change
    assert r.exit_code == 2
    assert ("--no-flip (the run's: --flip), --batch-size (the run's: 4), --lr (the run's: 0.0002) "
            "would change the run's own settings") in r.output
    assert f"--init-from {generator_run}" in r.output
    r = invoke("train", class_folder, "--out", generator_run, "--resume", "--max-steps", 0)
    assert r.exit_code == 2 and "--max-steps 0: must be at least 1" in r.output
    assert (generator_run / "state.safetensors").read_bytes() == before


@pytest.mark.parametrize("args, needle", [
    (["generate", "--sampler", "foo"], "'foo' is not one of"),
    (["generate", "--nn", "3"], "No such option: --nn"),
    (["upscale"], "Missing argument"),
])
def test_the_console_script_reports_usage_errors_in_one_line(args, needle):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "diffgen", *args], capture_output=True, text=True)
    assert done.returncode == 2
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_train_finishes_but_exits_3_when_it_skipped_files(tmp_path):
    from conftest import write_blobs

    write_blobs(tmp_path / "data", 4, 16, (200, 0, 0), seed=5)
    (tmp_path / "data" / "zz_broken.png").write_bytes(b"not a png")
    r = invoke("train", tmp_path / "data", "--out", tmp_path / "run", "--image-size", 16, "--batch-size", 4, "--max-steps", 1)
    assert r.exit_code == 3, r.output
    assert "zz_broken.png" in r.output and "1 unreadable file(s) skipped" in r.output
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_option_defaults_mirror_the_core():
    """The CLI (cli/generating.py, cli/upscaling.py) repeats the core's sampling defaults (importing them would import torch); they must agree."""
    import inspect
    import typing

    from diffgen import models
    from diffgen.checkpoint import Task
    from diffgen.cli import generating, training, upscaling
    from diffgen.config import UPSCALE_DEFAULTS, TrainConfig

    generate, upscale = (importlib.import_module(f"diffgen.{name}") for name in ("generate", "upscale"))  # the modules, not the API

    core, cli_generate = inspect.signature(generate.generate_images).parameters, inspect.signature(generating.generate).parameters
    assert cli_generate["steps"].default == core["steps"].default
    assert cli_generate["sampler"].default.value == core["sampler"].default.value
    for command in (upscaling.upscale, upscaling.eval_upscale):
        params = inspect.signature(command).parameters
        assert params["steps"].default == upscale.Sampling().steps
        assert params["eta"].default == upscale.Sampling().eta
        assert params["samples"].default == upscale.Sampling().samples
    for command, task in ((generating.generate, Task.GENERATE), (upscaling.upscale, Task.UPSCALE), (upscaling.eval_upscale, Task.UPSCALE)):
        option = typing.get_type_hints(command, include_extras=True)["model"].__metadata__[0]
        assert option.show_default == models.default_model(task)
    def shown(value) -> str:  # as --help writes it: 0 for 0.0, x0 for Prediction.X0, None: the preset's
        return "the preset's" if value is None else str(getattr(value, "value", value)).removesuffix(".0")

    train_options = typing.get_type_hints(training.train, include_extras=True)
    for name, value in UPSCALE_DEFAULTS.items():  # shown as "generation default; upscale: value"
        generation, upscaling = train_options[name].__metadata__[0].show_default.split("; upscale: ")
        assert (generation, upscaling) == (shown(getattr(TrainConfig, name)), shown(value))


@pytest.mark.parametrize(("command", "default"), [("upscale", "upscale-x4"), ("eval-upscale", "automatic"),
                                                  ("train", "the preset's"), ("generate", "the sampler's")])
def test_help_shows_defaults_written_as_words(command, default):
    """A default in words must reach --help; rich markup once swallowed '[default: ...]' written into help text."""
    r = runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"})
    assert r.exit_code == 0
    assert f"[default: ({default})]" in r.output



SPY_ON_TORCH_IMPORT = """
import os, sys
seen = []
class Spy:  # records the OpenMP settings when torch is first imported, which is when OpenMP reads them
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append((os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT")))
sys.meta_path.insert(0, Spy())
sys.argv = ["diffgen", *sys.argv[1:]]
from diffgen.cli import main
try:
    main()
except SystemExit:
    pass
print("OpenMP at torch import:", seen)
"""


@pytest.mark.parametrize("command, given, expected", [
    ("upscale", {}, (None, "1000")),
    ("upscale", {"OMP_WAIT_POLICY": "ACTIVE"}, ("ACTIVE", None)),
    ("upscale", {"GOMP_SPINCOUNT": "0"}, (None, "0")),
    ("generate", {}, (None, None)),
])
def test_upscale_loads_torch_with_briefly_spinning_openmp_threads_unless_told_otherwise(tmp_path, command, given,
                                                                                        expected):
    """Spinning OpenMP threads slow an upscale several times beside another busy program; generate's small ops
    are faster with them (README, Speed)."""
    import os
    import subprocess
    import sys

    from test_upscale import smooth_image

    smooth_image(8, 8).save(tmp_path / "in.png")
    args = ["upscale", str(tmp_path / "in.png")] if command == "upscale" else ["generate", "-n", "1", "--steps", "1",
                                                                               "--out", str(tmp_path)]
    openmp = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    env = {k: v for k, v in os.environ.items() if k not in openmp} | given
    done = subprocess.run([sys.executable, "-c", SPY_ON_TORCH_IMPORT, *args], capture_output=True, text=True, env=env)
    assert f"OpenMP at torch import: [{expected!r}]" in done.stdout, done.stdout + done.stderr
