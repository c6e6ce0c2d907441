import json

import pytest
import torch
from safetensors.torch import save_file

from diffgen.checkpoint import ModelSpec, Task, load_model, model_metadata, save_model
from diffgen.errors import CheckpointError
from diffgen.unet import UNet, preset


def make_model(task=Task.GENERATE):
    torch.manual_seed(0)
    unet = preset("tiny", num_classes=2) if task is Task.GENERATE else preset("tiny", cond_channels=3, pixel_shuffle=4)
    model = UNet(unet)
    for p in model.parameters():  # non-zero everywhere, so the round trip is a real test
        p.data.normal_(0, 0.02)
    scale, classes = (1, ("a", "b")) if task is Task.GENERATE else (4, ())
    spec = ModelSpec(unet=unet, task=task, scale=scale, image_size=16, channels=3, class_names=classes)
    return model.eval(), spec


def test_round_trip_gives_identical_outputs(tmp_path):
    model, spec = make_model()
    path = tmp_path / "m.safetensors"
    save_model(path, model, spec)
    loaded = load_model(path, task=Task.GENERATE)
    assert loaded.spec == spec
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 900]), torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.equal(model(x, t, y), loaded.model(x, t, y))


def test_half_precision_file_is_smaller_and_close(tmp_path):
    model, spec = make_model()
    save_model(tmp_path / "f32.safetensors", model, spec)
    save_model(tmp_path / "f16.safetensors", model, spec, half=True)
    assert (tmp_path / "f16.safetensors").stat().st_size < 0.6 * (tmp_path / "f32.safetensors").stat().st_size
    loaded = load_model(tmp_path / "f16.safetensors")
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([10])
    with torch.no_grad():
        assert torch.allclose(model(x, t), loaded.model(x, t), atol=1e-2)


def test_wrong_task_is_refused(tmp_path):
    model, spec = make_model(Task.UPSCALE)
    save_model(tmp_path / "sr.safetensors", model, spec)
    with pytest.raises(CheckpointError, match="upscale model.*generate"):
        load_model(tmp_path / "sr.safetensors", task=Task.GENERATE)


def test_truncated_and_corrupt_files_are_refused(tmp_path):
    model, spec = make_model()
    path = tmp_path / "m.safetensors"
    save_model(path, model, spec)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 100)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    for name in ("cut", "junk", "empty"):
        with pytest.raises(CheckpointError, match="not a valid safetensors"):
            load_model(tmp_path / f"{name}.safetensors")


def test_other_tools_files_and_newer_formats_are_refused(tmp_path):
    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="not a diffgen model"):
        load_model(tmp_path / "other.safetensors")
    model, spec = make_model()
    meta = model_metadata(spec) | {"format_version": "99"}
    save_file(model.state_dict(), tmp_path / "future.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match="newer diffgen"):
        load_model(tmp_path / "future.safetensors")


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such model file"):
        load_model(tmp_path / "nope.safetensors")


def test_spec_json_round_trip():
    _, spec = make_model()
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert json.loads(spec.to_json())["task"] == "generate"


def test_float32_sampling_on_a_cpu_is_channels_last_with_the_same_outputs(tmp_path):
    from diffgen.checkpoint import with_precision

    model, spec = make_model()
    for p in model.parameters():  # zero-initialised layers would hide most of the network
        p.data.normal_(0, 0.05)
    save_model(tmp_path / "m.safetensors", model, spec)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 900]), torch.tensor([0, 1])
    loaded = load_model(tmp_path / "m.safetensors")
    with torch.no_grad():
        contiguous = loaded.model(x, t, y)
        fast = with_precision(loaded, "fp32")
        assert fast.precision == "fp32" and fast.model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(fast.model(x, t, y), contiguous, rtol=1e-5, atol=1e-5)


def test_bfloat16_sampling_stays_close_to_float32(tmp_path):
    from diffgen.checkpoint import in_bfloat16

    model, spec = make_model()
    save_model(tmp_path / "m.safetensors", model, spec)
    loaded = load_model(tmp_path / "m.safetensors")
    fast = in_bfloat16(loaded)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 900]), torch.tensor([0, 1])
    with torch.no_grad():
        exact, approx = loaded.model(x, t, y), fast.model(x, t, y)
    assert approx.dtype == torch.float32 and not torch.equal(exact, approx)
    assert (approx - exact).abs().max() < 0.05 * exact.abs().max()


def test_the_bfloat16_copy_leaves_the_float32_model_as_it_was(tmp_path):
    """in_bfloat16 casts a copy of the weights once (and to channels-last): the float32 network, which
    training and `--precision fp32` use, keeps its dtype, layout and outputs bit for bit."""
    from diffgen.checkpoint import in_bfloat16

    model, spec = make_model()
    save_model(tmp_path / "m.safetensors", model, spec)
    loaded = load_model(tmp_path / "m.safetensors")
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 900]), torch.tensor([0, 1])
    with torch.no_grad():
        before = loaded.model(x, t, y)
        fast = in_bfloat16(loaded)
        after = loaded.model(x, t, y)
    assert torch.equal(before, after)
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in loaded.model.parameters())
    assert {p.dtype for p in fast.model.parameters()} == {torch.bfloat16}


def test_precision_auto_uses_bf16_only_where_the_cpu_is_fast_at_it(tmp_path, monkeypatch):
    import diffgen.checkpoint as ckpt

    model, spec = make_model()
    save_model(tmp_path / "m.safetensors", model, spec)
    loaded = load_model(tmp_path / "m.safetensors", task=Task.GENERATE)
    for fast in (True, False):
        monkeypatch.setattr(ckpt, "bf16_is_fast", lambda device, fast=fast: fast)
        assert ckpt.with_precision(loaded, "auto").precision == ("bf16" if fast else "fp32")
        assert ckpt.with_precision(loaded, "fp32").precision == "fp32"
        assert ckpt.with_precision(loaded, "bf16").precision == "bf16"
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 900]), torch.tensor([0, 1])
    with torch.no_grad():
        full, half = loaded.model(x, t, y), ckpt.with_precision(loaded, "bf16").model(x, t, y)
    assert half.dtype == torch.float32 and not torch.equal(full, half)
    assert (half - full).norm() < 0.05 * full.norm()


def test_blending_two_fine_tunes_interpolates_their_weights(tmp_path):
    from dataclasses import replace

    from diffgen.checkpoint import LoadedModel
    from diffgen.models import blend

    model, spec = make_model(Task.UPSCALE)
    other = make_model(Task.UPSCALE)[0]
    for p in other.parameters():
        p.data.add_(0.01)
    gentle, strong = LoadedModel(spec, model, tmp_path / "a"), LoadedModel(spec, other, tmp_path / "b")
    before = [p.clone() for p in other.parameters()]
    for strength in (0.0, 0.25, 1.0):
        mixed = blend(gentle, strong, strength)
        for p, a, b in zip(mixed.model.parameters(), model.parameters(), other.parameters()):
            assert torch.allclose(p, (1 - strength) * a + strength * b, atol=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(other.parameters(), before))  # the inputs are untouched
    wider = LoadedModel(replace(spec, residual_scale=2.0), other, tmp_path / "c")
    with pytest.raises(CheckpointError, match="cannot be blended, their residual_scale differ"):
        blend(gentle, wider, 0.5)
