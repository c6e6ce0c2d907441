"""The trainer: exact resume, refusal of bad data, NaN handling, stopping on a signal."""

import json
import os
import signal
import subprocess
import sys

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffgen.config import TrainConfig
from diffgen.enums import Crop, Degrade, Prediction, Task
from diffgen.errors import DataError, DiffgenError, OptionError, TrainingInterrupted
from diffgen.events import StepDone
from diffgen.objective import DiffusionLoss
from diffgen.train import train


def config(data, out, **kw):
    base = TrainConfig(data_dir=data, out_dir=out, image_size=16, batch_size=4, max_steps=4, warmup_steps=2,
                       save_every=100, sample_every=100, log_every=1, device="cpu")
    return replace(base, **kw)


@pytest.mark.parametrize("task, degrade", [(Task.GENERATE, Degrade.NONE), (Task.UPSCALE, Degrade.NONE),
                                           (Task.UPSCALE, Degrade.REAL)])
def test_resume_gives_bitwise_the_same_weights(class_folder, photo_folder, tmp_path, task, degrade):
    data = class_folder if task is Task.GENERATE else photo_folder
    kw = {"task": task, "image_size": 32, "batch_size": 2, "degrade": degrade} if task is Task.UPSCALE else {}
    kw["lr_decay"] = True  # the learning rate depends on the step, which resuming must restore
    train(config(data, tmp_path / "straight", **kw))
    train(config(data, tmp_path / "split", max_steps=2, **kw))
    train(config(data, tmp_path / "split", **kw), resume=True)
    a = load_file(tmp_path / "straight" / "state.safetensors")
    b = load_file(tmp_path / "split" / "state.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [line for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [json.loads(s)["step"] for s in steps] == [1, 2, 3, 4]


def test_a_state_split_into_parts_for_git_resumes_exactly(class_folder, tmp_path):
    tool = [sys.executable, str(Path(__file__).parents[1] / "tools" / "state_parts.py")]
    train(config(class_folder, tmp_path / "run", max_steps=2))
    parts = tmp_path / "parts"
    subprocess.run([*tool, "split", tmp_path / "run" / "state.safetensors", parts, "--max-mib", "1"], check=True)
    sizes = [p.stat().st_size for p in parts.iterdir()]
    assert len(sizes) > 2 and max(sizes) < 1.01 * 2**20  # the limit, give or take the metadata
    subprocess.run([*tool, "join", parts, tmp_path / "joined" / "state.safetensors"], check=True)
    again = subprocess.run([*tool, "join", parts, tmp_path / "joined" / "state.safetensors"], capture_output=True, text=True)
    assert again.returncode == 1 and "exists (perhaps a newer state)" in again.stderr  # never overwrites a state
    for run in ("run", "joined"):
        train(config(class_folder, tmp_path / run, max_steps=4), resume=True)
    a = load_file(tmp_path / "run" / "state.safetensors")
    b = load_file(tmp_path / "joined" / "state.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (parts / f"state-2-of-{len(sizes)}.safetensors").unlink()
    r = subprocess.run([*tool, "join", parts, tmp_path / "again.safetensors"], capture_output=True, text=True)
    assert r.returncode == 1 and "needs state-1-of-N" in r.stderr and not (tmp_path / "again.safetensors").exists()


def test_fewer_images_than_a_batch_is_an_error(class_folder, tmp_path):
    with pytest.raises(DataError, match="fewer than one batch"):
        train(config(class_folder, tmp_path / "r", batch_size=64))


def test_nan_loss_stops_and_keeps_the_last_checkpoint(class_folder, tmp_path, monkeypatch):
    out = tmp_path / "r"
    train(config(class_folder, out, max_steps=2, save_every=1))
    before = (out / "model.safetensors").read_bytes()
    monkeypatch.setattr(DiffusionLoss, "__call__", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(DiffgenError, match="loss became nan at step 3"):
        train(config(class_folder, out, max_steps=4), resume=True)
    assert (out / "model.safetensors").read_bytes() == before


def test_stop_request_saves_and_names_the_resume_command(class_folder, tmp_path):
    out = tmp_path / "r"

    def interrupt_at_step_2(event):
        if isinstance(event, StepDone) and event.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match=f"stopped by SIGINT at step 2.*--out {out} --resume"):
        train(config(class_folder, out, max_steps=50), callback=interrupt_at_step_2)
    assert load_file(out / "state.safetensors")["rng.torch"].numel() > 0
    assert (out / "model.safetensors").is_file()


def test_streaming_from_disk_trains_exactly_like_memory(class_folder, tmp_path):
    train(config(class_folder, tmp_path / "mem", crop=Crop.RANDOM))
    train(config(class_folder, tmp_path / "disk", crop=Crop.RANDOM, memory_limit=0, workers=1))
    a = load_file(tmp_path / "mem" / "model.safetensors")
    b = load_file(tmp_path / "disk" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shrunk_crops_stream_from_disk_exactly_as_from_memory(photo_folder, tmp_path):
    kw = {"task": Task.UPSCALE, "image_size": 16, "random_shrink": 0.5}
    train(config(photo_folder, tmp_path / "mem", **kw))
    train(config(photo_folder, tmp_path / "disk", memory_limit=0, workers=1, **kw))
    a = load_file(tmp_path / "mem" / "model.safetensors")
    b = load_file(tmp_path / "disk" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_shrunk_crop_is_the_crop_of_the_shrunk_image():
    from diffgen.data import crop_at, shrunk_crop

    x = torch.randint(256, (3, 40, 50), dtype=torch.uint8)
    assert torch.equal(shrunk_crop(x, 0.3, 0.6, 16, 1.0), crop_at(x, 0.3, 0.6, 16))
    # A ramp rising by 2 levels a pixel rises by 4 once shrunk to half, and a flat image stays flat.
    ramp = (torch.arange(100) * 2).expand(3, 60, 100).to(torch.uint8)
    steps = shrunk_crop(ramp, 0.5, 0.5, 16, 0.5).float().diff(dim=-1)
    assert torch.all((steps[:, 4:-4, 4:-4] - 4).abs() <= 1)
    assert torch.all(shrunk_crop(torch.full((1, 30, 30), 77, dtype=torch.uint8), 0.2, 0.9, 8, 0.3) == 77)
    # Near the image's size the crop is the whole short side, shrunk to the asked size.
    assert shrunk_crop(x, 0.0, 0.0, 32, 0.5).shape == (3, 32, 32)


def test_random_shrink_draws_factors_in_its_range_and_leaves_crop_positions_alone(photo_folder, tmp_path):
    from diffgen.batches import aux_batches
    from diffgen.train import load_data

    cfg, data = load_data(config(photo_folder, tmp_path / "r", task=Task.UPSCALE, batch_size=64), lambda event: None)
    plain = aux_batches(data, cfg, 64).plan(3)[1]
    shrunk = aux_batches(data, replace(cfg, random_shrink=0.6), 64).plan(3)[1]
    assert all(f == 1 for *_, f in plain)
    factors = torch.tensor([f for *_, f in shrunk])
    assert factors.min() >= 0.6 and factors.max() <= 1 and factors.std() > 0.05
    assert [p[:2] for p in plain] == [p[:2] for p in shrunk]


@pytest.mark.parametrize("shrink, task, message", [
    (0.0, Task.UPSCALE, r"--random-shrink 0.0: must be in \(0, 1\]"),
    (1.5, Task.UPSCALE, r"--random-shrink 1.5: must be in \(0, 1\]"),
    (0.7, Task.GENERATE, "--random-shrink: only for --task upscale"),
])
def test_a_random_shrink_outside_0_to_1_or_for_generation_is_refused(shrink, task, message, photo_folder, tmp_path):
    with pytest.raises(OptionError, match=message):
        train(config(photo_folder, tmp_path / "r", task=task, random_shrink=shrink))
    assert not (tmp_path / "r").exists()


def test_epochs_set_the_number_of_steps(class_folder, tmp_path):
    # 12 images, batches of 4: 3 steps an epoch.
    train(config(class_folder, tmp_path / "r", epochs=2, max_steps=1000))
    steps = [json.loads(s)["step"] for s in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 6


def test_data_order_visits_every_image_once_per_epoch():
    from itertools import chain

    from diffgen.data import DataOrder

    for n, batch in [(12, 4), (10, 3), (2, 5)]:
        order = DataOrder(n, batch, seed=0)
        flat = list(chain.from_iterable(order.indices(k).tolist() for k in range(3 * n)))
        for epoch in range(len(flat) // n):
            assert sorted(flat[epoch * n : (epoch + 1) * n]) == list(range(n))
    assert not torch.equal(DataOrder(10, 10, 0).indices(0), DataOrder(10, 10, 0).indices(1))


def test_learning_rate_warms_up_then_decays_to_zero_on_a_cosine():
    from diffgen.objective import learning_rate

    cfg = TrainConfig(data_dir=None, out_dir=None, lr=1e-3, warmup_steps=10, max_steps=110, lr_decay=True)
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 9) == pytest.approx(1e-3)
    assert learning_rate(cfg, 60) == pytest.approx(0.5e-3)  # halfway through the decay
    assert learning_rate(cfg, 110) == pytest.approx(0.0, abs=1e-12)
    rates = [learning_rate(cfg, s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert learning_rate(replace(cfg, lr_decay=False), 100) == 1e-3


def test_the_eight_dihedral_variants_are_distinct_and_zero_is_identity():
    from diffgen.transforms import random_dihedral

    x = torch.randn(1, 2, 5, 5)
    variants = random_dihedral(x.expand(8, -1, -1, -1), torch.arange(8))
    assert torch.equal(variants[0], x[0])
    assert len({tuple(v.flatten().tolist()) for v in variants}) == 8
    assert torch.equal(variants[5], x[0].flip(-1).transpose(-1, -2))  # mirror, then transpose


def test_dihedral_numbers_views_as_the_training_augmentation_does_and_undoes_them():
    from diffgen.transforms import dihedral, random_dihedral, undo_dihedral

    square, wide = torch.randn(1, 2, 5, 5), torch.randn(1, 2, 3, 7)
    for k in range(8):
        assert torch.equal(dihedral(square, k), random_dihedral(square, torch.tensor([k])))
        assert torch.equal(undo_dihedral(dihedral(wide, k), k), wide)


def test_quantize_rounds_to_the_nearest_of_256_levels():
    from diffgen.transforms import quantize

    x = torch.rand(1000) * 2.2 - 1.1  # a little outside [-1, 1] too
    q = quantize(x)
    levels = (q + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.min() >= 0 and levels.max() <= 255
    inside = x.abs() <= 1
    assert (q - x)[inside].abs().max() <= 1 / 255 + 1e-6
    assert torch.equal(quantize(q), q)


def test_upscaling_may_have_fewer_images_than_a_batch(photo_folder, tmp_path):
    train(config(photo_folder, tmp_path / "r", task=Task.UPSCALE, image_size=32, batch_size=8, max_steps=1))
    assert (tmp_path / "r" / "model.safetensors").is_file()


def test_every_common_format_and_mode_trains_and_bad_files_are_skipped(tmp_path):
    root = tmp_path / "data"
    import numpy as np
    from PIL import Image

    from diffgen.data import open_dataset

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8))
    files = {
        "a/png_rgba.png": rgb.convert("RGBA"), "a/jpeg.jpg": rgb, "a/webp.webp": rgb, "a/bmp.bmp": rgb,
        "b/tiff.tiff": rgb, "b/grey.png": rgb.convert("L"), "b/palette.gif": rgb.quantize(32),
        "b/deep/grey16.png": Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)),
    }
    for name, img in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / name)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "b" / "notes.txt").write_text("not an image, not even looked at")
    warnings = []
    data = open_dataset(root, size=16, channels=3, warn=warnings.append)
    assert len(data) == 8 and data.class_names == ("a", "b")
    assert all(x.shape == (3, 16, 16) for x in data.images)
    assert len(warnings) == 1 and "broken.png" in warnings[0]
    grey16 = data.images[data.files.index(root / "b" / "deep" / "grey16.png")]
    assert grey16.float().mean() > 40  # scaled from 16 bits, not clipped to white or black
    out = tmp_path / "run"
    train(config(root, out, max_steps=1, batch_size=4))
    assert load_file(out / "model.safetensors")


def test_init_from_starts_from_the_models_weights_and_keeps_its_spec(photo_folder, tmp_path):
    from diffgen.checkpoint import load_model

    kw = {"task": Task.UPSCALE, "image_size": 32, "batch_size": 2, "max_steps": 2}
    first = train(config(photo_folder, tmp_path / "first", prediction=Prediction.X0, **kw)).model_path
    # lr 0: the fine-tune's weights stay the ones it started from, whatever preset or target it was given.
    tuned = train(config(photo_folder, tmp_path / "tuned", preset="small", init_from=str(first), lr=0.0, **kw))
    a, b = load_model(first), load_model(tuned.model_path)
    assert b.spec.unet == a.spec.unet and b.spec.prediction is Prediction.X0
    assert b.spec.residual_scale == a.spec.residual_scale and b.spec.extra["init_from"] == str(first)
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), name


def test_a_fine_tune_resumes_with_the_network_it_started_from(photo_folder, tmp_path):
    from diffgen.checkpoint import load_model

    kw = {"task": Task.UPSCALE, "image_size": 32, "batch_size": 2}
    first = train(config(photo_folder, tmp_path / "first", num_res_blocks=1, max_steps=1, **kw)).model_path
    # The options now ask for another shape (2 blocks, as --task upscale does); the run keeps the model's.
    tuned = config(photo_folder, tmp_path / "tuned", num_res_blocks=2, init_from=str(first), **kw)
    train(replace(tuned, max_steps=2))
    train(tuned, resume=True)
    resumed = load_model(tmp_path / "tuned" / "model.safetensors").spec
    assert resumed.unet == load_model(first).spec.unet and resumed.train_steps == 4


def test_a_fine_tune_at_another_size_says_the_models_own(class_folder, tmp_path):
    from diffgen.events import Note

    first = train(config(class_folder, tmp_path / "first", image_size=16, max_steps=1)).model_path
    notes = []
    train(config(class_folder, tmp_path / "tuned", image_size=32, max_steps=1, init_from=str(first)),
          callback=lambda e: notes.append(e.text) if isinstance(e, Note) else None)
    assert any("trained at 16x16: --image-size 16 keeps its size" in n for n in notes)


def test_init_from_refuses_a_model_for_other_data(class_folder, photo_folder, tmp_path):
    generator = train(config(class_folder, tmp_path / "gen", max_steps=1)).model_path
    with pytest.raises(OptionError, match="--init-from .*: task generate in the model, upscale in this run"):
        train(config(photo_folder, tmp_path / "sr", task=Task.UPSCALE, image_size=32, init_from=str(generator)))
    assert not (tmp_path / "sr").exists()  # refused before the run folder is made
    (tmp_path / "more").mkdir()
    for name in ("blue", "green", "red"):  # the class folder's classes and one more
        (tmp_path / "more" / name).symlink_to(class_folder / ("red" if name == "green" else name))
    with pytest.raises(OptionError, match="--init-from .*classes"):
        train(config(tmp_path / "more", tmp_path / "gen2", init_from=str(generator)))
    assert not (tmp_path / "gen2" / "state.safetensors").exists()
    assert not (tmp_path / "gen2").exists()


def test_init_from_a_missing_bundled_model_names_the_option(photo_folder, tmp_path, monkeypatch):
    from diffgen import models
    from diffgen.errors import CheckpointError

    monkeypatch.setattr(models, "weights_dir", lambda: tmp_path / "no-weights")
    with pytest.raises(CheckpointError, match="bundled model 'upscale-x4' is missing; reinstall diffgen or pass --init-from PATH"):
        train(config(photo_folder, tmp_path / "sr", task=Task.UPSCALE, image_size=32, init_from="upscale-x4"))
    assert not (tmp_path / "sr").exists()


class TimestepRecorder(torch.nn.Module):
    """A stand-in network that predicts zeros and remembers the timesteps it was asked about, and whether
    it ran under bf16 autocast."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen, self.autocast = [], []

    def forward(self, x, t, labels=None, cond=None):
        self.seen.append(t)
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return x * self.weight


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_pure_noise_share_moves_that_share_of_timesteps_to_the_last(share, class_folder, tmp_path):
    from diffgen.train import build_spec, load_data

    cfg, data = load_data(config(class_folder, tmp_path / "r", pure_noise_share=share), lambda event: None)
    spec = build_spec(cfg, data)
    net, n = TimestepRecorder(), 20_000
    alphas_cumprod = spec.make_schedule().alphas_cumprod.float()
    x0 = torch.zeros(n, 1, 1, 1)
    DiffusionLoss.of(spec, cfg)(net, (x0, None, None), torch.Generator().manual_seed(0), slice(None), n)
    t, last = net.seen[0], len(alphas_cumprod) - 1
    uniform = torch.randint(last + 1, (n,), generator=torch.Generator().manual_seed(0))
    moved = t != uniform
    assert torch.all(t[moved] == last)  # the others keep their uniform draw
    # 4 standard deviations of a binomial share; the uniform draw lands on T-1 itself 1/T of the time
    expected = share * (1 - 1 / (last + 1))
    assert abs(moved.float().mean().item() - expected) < 4 * (expected * (1 - expected) / n) ** 0.5 + 1e-9


def test_a_pure_noise_share_outside_0_to_1_is_refused(class_folder, tmp_path):
    with pytest.raises(OptionError, match=r"--pure-noise-share 1.5: must be in \[0, 1\]"):
        train(config(class_folder, tmp_path / "r", pure_noise_share=1.5))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("precision, autocast", [("auto", False), ("fp32", False), ("bf16", True)])
def test_cpus_train_in_bf16_only_when_asked(precision, autocast, class_folder, tmp_path):
    from diffgen.train import build_spec, load_data

    cfg, data = load_data(config(class_folder, tmp_path / "r", precision=precision), lambda event: None)
    spec, net = build_spec(cfg, data), TimestepRecorder()
    x0 = torch.zeros(4, 3, 16, 16)
    loss = DiffusionLoss.of(spec, cfg)(net, (x0, None, None), torch.Generator().manual_seed(0), slice(None), 4)
    assert net.autocast == [autocast] and loss.dtype == torch.float32


def test_a_bf16_run_trains_and_records_its_precision(class_folder, tmp_path):
    from diffgen.state import load_config

    out = tmp_path / "r"
    train(config(class_folder, out, precision="bf16"))
    assert load_config(out / "state.safetensors").precision == "bf16"  # so a resumed run keeps it
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(0 < loss < 10 for loss in losses)


def test_a_cpu_network_trains_in_channels_last_with_the_same_gradients():
    """`on_device` puts a CPU network in channels-last (faster oneDNN convolutions); its gradients are the
    float32 network's in the contiguous layout, up to rounding."""
    import copy

    from diffgen.train import on_device
    from diffgen.unet import UNet, preset

    torch.manual_seed(0)
    reference = UNet(preset("tiny", num_classes=3, base_channels=16, norm_groups=4))
    for p in reference.parameters():  # zero-initialised layers would leave most gradients zero
        p.data.normal_(0, 0.05)
    fast = on_device(copy.deepcopy(reference), torch.device("cpu"))
    assert fast.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    x, t, labels = torch.randn(4, 3, 16, 16), torch.tensor([1, 200, 500, 999]), torch.tensor([0, 1, 2, 3])
    for net in (reference, fast):
        net(x, t, labels).square().mean().backward()
    for (name, a), b in zip(reference.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
