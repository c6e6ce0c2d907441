"""The trainer when things go wrong around it, and what it tells the user (issues 24 and 25)."""

import errno
import io
import json
import shutil
import warnings
from dataclasses import replace

import pytest
from rich.console import Console
from typer.testing import CliRunner

import diffgen.files
import diffgen.runs
import diffgen.step_memory
import diffgen.train
from diffgen.checkpoint import load_model
from diffgen.config import TrainConfig
from diffgen.errors import DiffgenError, OptionError
from diffgen.events import Note
from diffgen.train import train

runner = CliRunner()


def config(data, out, **kw):
    base = TrainConfig(data_dir=data, out_dir=out, image_size=16, batch_size=4, max_steps=4, warmup_steps=2,
                       save_every=100, sample_every=100, log_every=1, sample_steps=2, device="cpu")
    return replace(base, **kw)


def invoke(*args):
    return runner.invoke(app(), [str(a) for a in args])


def app():
    from diffgen.cli import app

    return app


def train_args(data, out, *more):
    return ("train", data, "--out", out, "--image-size", 16, "--batch-size", 4, "--device", "cpu", *more)


def test_a_run_finished_while_a_second_trainer_loaded_its_data_is_not_overwritten(class_folder, tmp_path, monkeypatch):
    out, load_data = tmp_path / "r", diffgen.train.load_data
    first = {}

    def slow_load(cfg, notify):  # the second trainer's data loading, during which the first one finishes
        loaded = load_data(cfg, notify)
        if not first:
            first["model"] = b""
            train(config(class_folder, out, max_steps=2))
            first["model"] = (out / "model.safetensors").read_bytes()
        return loaded

    monkeypatch.setattr(diffgen.train, "load_data", slow_load)
    with pytest.raises(OptionError, match="already holds a run"):
        train(config(class_folder, out, max_steps=3, seed=1))
    assert (out / "model.safetensors").read_bytes() == first["model"]
    assert load_model(out / "model.safetensors").spec.train_steps == 2


def test_a_torn_last_log_line_is_dropped_on_resume(class_folder, tmp_path):
    out = tmp_path / "r"
    train(config(class_folder, out, max_steps=2, save_every=1))
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # the disk filled up during an append
    train(config(class_folder, out), resume=True)
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_files_lost_while_streaming_are_reported_once_each_and_counted(class_folder, tmp_path, monkeypatch):
    data, load_data = tmp_path / "data", diffgen.train.load_data
    shutil.copytree(class_folder, data)
    lost = [data / "red" / "000.png", data / "blue" / "001.png"]

    def then_lose_files(cfg, notify):
        loaded = load_data(cfg, notify)
        for path in lost:
            path.unlink()
        return loaded

    warned = tmp_path / "warned"

    def record(*args, **kwargs):  # also in forked DataLoader workers, which inherit the patch
        with open(warned, "a") as f:
            f.write(f"{args}\n")

    monkeypatch.setattr(diffgen.train, "load_data", then_lose_files)
    monkeypatch.setattr(warnings, "warn", record)
    notes = []
    result = train(config(data, tmp_path / "r", memory_limit=0, workers=1, max_steps=6),
                   callback=lambda e: notes.append(e.text) if isinstance(e, Note) else None)
    skips = [n for n in notes if n.startswith("skipping")]
    assert sorted(skips) == sorted(set(skips)) and {str(p) for p in lost} == {s.split()[1].rstrip(":") for s in skips}
    assert len(result.skipped) == 2 and not warned.exists()


def test_a_run_killed_before_its_first_checkpoint_starts_again_without_resume(class_folder, tmp_path):
    out = tmp_path / "r"
    (out / "samples").mkdir(parents=True)
    (out / ".lock").touch()
    (out / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 1.0}\n')
    (out / ".state.safetensors.abc.tmp").write_bytes(b"half")
    with pytest.raises(OptionError, match=f"--resume: {out} has no checkpoint yet.*start it again without --resume"):
        train(config(class_folder, out), resume=True)
    train(config(class_folder, out, max_steps=1))
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1]
    assert not list(out.glob("*.tmp")) and load_model(out / "model.safetensors").spec.train_steps == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not from a run")
    with pytest.raises(OptionError, match="already holds a run"):
        train(config(class_folder, tmp_path / "mine"))


@pytest.mark.parametrize("fault, reason, fix", [
    (errno.ENOSPC, r"No space left on device", "free some space"),
    (errno.EACCES, r"Permission denied", "check the folder's permissions"),
])
def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_last_checkpoint(class_folder, tmp_path, monkeypatch, fault, reason, fix):
    out = tmp_path / "r"
    train(config(class_folder, out, max_steps=2, save_every=1))
    fsync, failing = diffgen.files.os.fsync, []

    def faulty_fsync(fd):
        if failing:
            raise OSError(fault, reason)
        fsync(fd)

    monkeypatch.setattr(diffgen.files.os, "fsync", faulty_fsync)
    fail_from_step_3 = lambda e: failing.append(1) if getattr(e, "step", 0) == 3 else None
    with pytest.raises(DiffgenError, match=f"state.safetensors: cannot write \\({reason}\\); {fix}.*--resume") as e:
        train(config(class_folder, out, save_every=1), callback=fail_from_step_3, resume=True)
    assert "\n" not in str(e.value)
    assert load_model(out / "model.safetensors").spec.train_steps == 2
    assert not [p for p in out.rglob("*") if p.suffix == ".tmp"]


def test_an_unwritable_out_parent_is_refused_before_any_work(class_folder, tmp_path, monkeypatch):
    parent = tmp_path / "read-only"
    parent.mkdir()
    monkeypatch.setattr(diffgen.runs.os, "access", lambda path, mode: str(path) != str(parent))
    monkeypatch.setattr(diffgen.train, "load_data", lambda *a: pytest.fail("loaded the data first"))
    with pytest.raises(OptionError, match=f"--out {parent / 'new' / 'run'}: cannot write in {parent}"):
        train(config(class_folder, parent / "new" / "run"))
    assert list(parent.iterdir()) == []


def test_a_job_that_cannot_fit_in_memory_is_refused_with_the_estimate(class_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(diffgen.step_memory, "available_memory", lambda device: 100 << 20)
    with pytest.raises(OptionError, match=r"--image-size 64 --batch-size 8 --grad-accum 1: training needs about "
                                          r"0.3 GiB \(0.3 GiB for a micro-batch of 8, .*\), and 0.1 GiB is available "
                                          r"on cpu; at most 2 image\(s\) per micro-batch fit: raise --grad-accum"):
        train(config(class_folder, tmp_path / "r", image_size=64, batch_size=8, max_steps=1))
    assert not (tmp_path / "r").exists()
    with pytest.raises(OptionError, match="not even one image of this size fits: lower --image-size"):
        train(config(class_folder, tmp_path / "r", image_size=512, batch_size=8, max_steps=1, memory_limit=0))


def test_the_memory_estimate_grows_with_the_micro_batch_and_the_image():
    from diffgen.step_memory import training_memory
    from diffgen.unet import preset

    unet = preset("tiny", in_channels=3, num_classes=2)
    small = training_memory(unet, 32, 8)
    assert training_memory(unet, 32, 16).activations == pytest.approx(2 * small.activations, rel=0.01)
    assert training_memory(unet, 64, 8).activations > 4 * small.activations  # attention grows faster than pixels
    assert small.weights == 20 * sum(p.numel() for p in diffgen.train.UNet(unet).parameters())
    # tiny at 32 px, batch 32 took 0.35 GB of activations when measured (peak RSS growth of one step)
    assert 0.2 < training_memory(unet, 32, 32).activations / 2**30 < 0.5


def test_the_most_common_channel_count_wins_and_is_noted(tmp_path):
    from PIL import Image

    from diffgen.data import open_dataset

    (tmp_path / "d").mkdir()
    Image.new("L", (8, 8), 128).save(tmp_path / "d" / "a_grey.png")  # first in name order
    for i in range(3):
        Image.new("RGB", (8, 8), (200, 20, 20)).save(tmp_path / "d" / f"b{i}.png")
    notes = []
    data = open_dataset(tmp_path / "d", size=8, warn=notes.append)
    assert data.prep.channels == 3 and all(x.shape[0] == 3 for x in data.images)
    assert notes == ["3 channels (colour), as 3 of the 4 images have; 1 grey image is converted; "
                     "pass --channels to choose"]
    notes.clear()
    assert open_dataset(tmp_path / "d", size=8, channels=1, warn=notes.append).prep.channels == 1 and not notes


def test_the_final_checkpoint_is_written_before_the_final_sample_grid(class_folder, tmp_path, monkeypatch):
    order, save_model, write_samples = [], diffgen.train.save_model, diffgen.train.write_samples
    monkeypatch.setattr(diffgen.train, "save_model", lambda *a, **k: (order.append("model"), save_model(*a, **k)))
    monkeypatch.setattr(diffgen.train, "write_samples", lambda *a: (order.append("samples"), write_samples(*a))[1])
    train(config(class_folder, tmp_path / "r", max_steps=2))
    assert order == ["model", "samples"]


def test_train_says_what_it_found_and_what_it_does_then_what_to_do_next(class_folder, tmp_path):
    out = tmp_path / "r"
    r = invoke(*train_args(class_folder, out, "--max-steps", 3, "--sample-every", 3))
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "12 images in 2 classes (blue, red), resized to 16x16 RGB, on cpu, writing to" in text
    assert "writing the final checkpoint and a sample grid of 16 images" in text
    assert f"samples: {out / 'samples' / 'step_000003.png'}" in text
    assert f"next: diffgen generate --model {out} --n 16 --class blue --out generated/" in text
    assert "step 3, loss" in text


def test_resuming_a_finished_run_says_so_and_how_to_go_on(class_folder, tmp_path):
    out = tmp_path / "r"
    assert invoke(*train_args(class_folder, out, "--max-steps", 2)).exit_code == 0
    r = invoke("train", class_folder, "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "already finished: it trained 2 steps; pass --max-steps N (more than 2) or --time-budget with --resume to go on" in text
    assert "done:" not in text


def test_the_train_command_is_recorded_in_the_model(class_folder, tmp_path):
    from diffgen.state import read_state, saved_spec

    out = tmp_path / "my run"
    assert invoke(*train_args(class_folder, out, "--max-steps", 1, "--no-flip")).exit_code == 0
    command = load_model(out / "model.safetensors").spec.extra["command"]
    assert command == (f"diffgen train {class_folder} --out '{out}' --image-size 16 --no-flip --max-steps 1 "
                       "--batch-size 4 --device cpu")
    assert saved_spec(read_state(out / "state.safetensors")[1]).extra["command"] == command  # kept on resume


def test_the_progress_bar_shows_no_stale_line_for_a_finished_resume(tmp_path, monkeypatch):
    from diffgen.cli import output
    from diffgen.cli.output import TrainBar
    from diffgen.events import Started

    screen = io.StringIO()
    monkeypatch.setattr(output, "console", Console(file=screen, force_terminal=True, width=100))
    with TrainBar(4) as progress:
        progress.update(Started(images=12, class_names=(), image_size=16, channels=3, crops=False,
                                device="cpu", out=tmp_path, step=4, total=4))
    assert "nan" not in screen.getvalue() and "0.0 img/s" not in screen.getvalue()


def test_the_expected_duration_is_said_once_from_the_first_steps():
    from diffgen.budget import Pace
    from diffgen.events import Estimate

    now = [0.0]
    pace = Pace(start=100, total=1100, clock=lambda: now[0])
    said = []
    for step in range(101, 1101):
        now[0] += 2.0 if step == 101 else 0.5  # the first step is slow (warm-up) and not counted
        said += [e] if (e := pace.after(step)) else []
    assert said == [Estimate(seconds=pytest.approx(0.5 * 990), step=110)]


@pytest.mark.parametrize("field, value", [("spec", "{not json"), ("config", '{"data_dir": "d"}'), ("step", "ten")])
def test_a_damaged_training_state_is_one_line_on_resume(class_folder, tmp_path, field, value):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    out = tmp_path / "r"
    assert invoke(*train_args(class_folder, out, "--max-steps", 2)).exit_code == 0
    state = out / "state.safetensors"
    with safe_open(state, "pt") as f:
        meta = f.metadata()
    save_file(load_file(state), state, metadata=meta | {field: value})
    r = invoke(*train_args(class_folder, out, "--max-steps", 3, "--resume"))
    assert r.exit_code == 1 and "the training state is damaged" in r.output and str(state) in r.output
    assert "internal error" not in r.output


def test_a_unet_beyond_the_model_limits_is_refused_before_any_work(class_folder, tmp_path):
    r = invoke(*train_args(class_folder, tmp_path / "r", "--channel-mults", "1,1,1,1,1,1,1,1,1", "--image-size", 512))
    assert r.exit_code == 2 and "beyond diffgen's limits" in r.output and "channel_mults" in r.output
    assert not (tmp_path / "r").exists()


def test_the_resume_command_is_shell_quoted(tmp_path):
    from shlex import split

    from diffgen.runs import resume_command

    cfg = config(tmp_path / "my data", tmp_path / "run; rm -rf x")
    assert split(resume_command(cfg)) == ["diffgen", "train", str(cfg.data_dir), "--out", str(cfg.out_dir), "--resume"]


def test_a_resume_keeps_the_runs_colours_when_the_datas_majority_changed(tmp_path):
    from PIL import Image

    data = tmp_path / "ds"
    data.mkdir()
    for i in range(4):  # 3 grey and 1 colour: the run is grey
        Image.new("L" if i < 3 else "RGB", (8, 8), 90).save(data / f"{i}.png")
    assert invoke(*train_args(data, tmp_path / "r", "--image-size", 8, "--max-steps", 2)).exit_code == 0
    for i in range(4, 8):  # now most images are colour
        Image.new("RGB", (8, 8), (200, 10, 10)).save(data / f"{i}.png")
    r = invoke(*train_args(data, tmp_path / "r", "--image-size", 8, "--max-steps", 3, "--resume"))
    assert r.exit_code == 0, r.output
    assert load_model(tmp_path / "r" / "model.safetensors").spec.channels == 1
