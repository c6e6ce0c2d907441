"""Bad input and faults: diffgen's own error every time, nothing half-written, resume after SIGKILL."""

import errno
import io
import os
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import diffgen.files
from diffgen.checkpoint import load_model
from diffgen.errors import CheckpointError, ImageError
from diffgen.files import atomic_write
from diffgen.images import open_image

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def png_bytes(size=(12, 9), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, "red").save(buffer, format="PNG")
    return buffer.getvalue()


@FUZZ
@given(data=st.binary(max_size=2000))
def test_random_bytes_are_never_anything_but_an_image_error(tmp_path, data):
    path = tmp_path / "x.png"
    path.write_bytes(data)
    try:
        open_image(path)
    except ImageError as e:
        assert str(path) in str(e)


@FUZZ
@given(cut=st.integers(min_value=0, max_value=200), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8))
def test_mutated_pngs_either_load_or_give_an_image_error(tmp_path, cut, flips):
    data = bytearray(png_bytes((40, 30)))
    for pos, value in flips:
        data[pos % len(data)] = value
    path = tmp_path / "m.png"
    path.write_bytes(bytes(data[: len(data) - cut]))
    try:
        open_image(path)
    except ImageError:
        pass


@FUZZ
@given(data=st.binary(max_size=3000))
def test_random_bytes_as_a_model_give_a_checkpoint_error(tmp_path, data):
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    with pytest.raises(CheckpointError):
        load_model(path)


def test_a_decompression_bomb_is_refused_above_the_limit(tmp_path, monkeypatch):
    (tmp_path / "big.png").write_bytes(png_bytes((300, 200)))
    monkeypatch.setenv("DIFFGEN_MAX_PIXELS", "50000")
    with pytest.raises(ImageError, match="300x200 pixels is over the limit of 50,000; raise DIFFGEN_MAX_PIXELS"):
        open_image(tmp_path / "big.png")
    monkeypatch.setenv("DIFFGEN_MAX_PIXELS", "100000")
    assert open_image(tmp_path / "big.png").size == (300, 200)


@pytest.mark.parametrize("name, content, reason", [
    ("empty.png", b"", "not an image"),
    ("text.png", b"hello, world", "not an image"),
    ("cut.png", png_bytes((64, 64))[:60], "corrupt"),
])
def test_bad_files_name_the_file_and_the_fix(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageError, match=f"{name}: .*{reason}.*replace or remove"):
        open_image(tmp_path / name)


def test_animated_gif_and_multipage_tiff_give_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "a.tiff", save_all=True, append_images=frames[1:])
    for name in ("a.gif", "a.tiff"):
        assert open_image(tmp_path / name).convert("RGB").getpixel((0, 0)) == (255, 0, 0), name


def test_disk_full_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(diffgen.files.os, "fsync", no_space)
    with pytest.raises(OSError):
        atomic_write(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_writing_images_when_the_disk_is_full_is_a_clear_error(tmp_path, monkeypatch):
    from diffgen.images import save_image

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(diffgen.files.os, "fsync", no_space)
    with pytest.raises(ImageError, match=r"x.png: cannot write \(No space left on device\); free some space"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_sigkill_during_training_leaves_a_loadable_checkpoint_that_resumes(class_folder, tmp_path):
    """Kill training at several moments, most of them while it is writing (it checkpoints every step)."""
    out = tmp_path / "run"
    base = [sys.executable, "-m", "diffgen", "train", str(class_folder), "--out", str(out), "--image-size", "16",
            "--batch-size", "4", "--save-every", "1", "--sample-every", "1000", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([*base, "--max-steps", "100000"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "model.safetensors").exists() and time.time() < deadline:
        time.sleep(0.1)
    for delay in (0.3, 0.7, 1.1):
        time.sleep(delay)
        load_model(out / "model.safetensors")  # always the last complete checkpoint
    first.send_signal(signal.SIGKILL)
    first.wait()
    steps = load_model(out / "model.safetensors").spec.train_steps
    assert steps >= 1
    (out / ".state.safetensors.killed.tmp").write_bytes(b"half a checkpoint")  # as a kill mid-write leaves
    done = subprocess.run([*base, "--resume", "--max-steps", str(steps + 2)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert load_model(out / "model.safetensors").spec.train_steps == steps + 2
    assert not [p for p in out.iterdir() if p.suffix == ".tmp"]


def test_sigterm_saves_and_prints_the_resume_command(class_folder, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "diffgen", "train", str(class_folder), "--out", str(out), "--image-size", "16",
           "--batch-size", "4", "--max-steps", "100000", "--save-every", "100000", "--device", "cpu"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "samples").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "stopped by SIGTERM" in err and f"--out {out} --resume" in err and "Traceback" not in err
    assert load_model(out / "model.safetensors").spec.train_steps >= 1


def test_unreadable_files_and_unwritable_folders_say_so(tmp_path, monkeypatch):
    from diffgen.images import save_image

    (tmp_path / "x.png").write_bytes(png_bytes())

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    with monkeypatch.context() as m:  # root ignores file modes, so the denial is simulated
        m.setattr(Image, "open", denied)
        with pytest.raises(ImageError, match="x.png: permission denied; check the file's permissions"):
            open_image(tmp_path / "x.png")
    monkeypatch.setattr(diffgen.files.tempfile, "mkstemp", denied)
    with pytest.raises(ImageError, match=r"y.png: cannot write \(Permission denied\); check the folder's permissions"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "y.png")


def test_upscaling_an_animation_notes_the_first_frame(tmp_path):
    from diffgen.images import split_planes

    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue", "green")]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert split_planes(open_image(tmp_path / "a.gif")).note == "used the first of 3 frames"
