"""Model files made to hurt: metadata that asks for the machine's memory, crafted values, terminal escapes.

Anyone can publish a model on the Hub, so everything a model file says is checked before anything is
allocated, and everything printed from it is escaped.
"""

import json
import math
import tracemalloc
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from diffgen.checkpoint import ModelSpec, Task, load_model, read_safetensors, save_model
from diffgen.cli import app
from diffgen.errors import CheckpointError
from diffgen.unet import UNet, preset

DAMAGED = "the model file is damaged or not made by diffgen"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def tiny_file(folder: Path, task: Task = Task.GENERATE, name: str = "m.safetensors", classes=("red", "blue"),
              extra=None) -> Path:
    torch.manual_seed(0)
    if task is Task.GENERATE:
        unet, scale = preset("tiny", num_classes=len(classes)), 1
    else:
        unet, scale, classes = preset("tiny", cond_channels=3, pixel_shuffle=4), 4, ()
    spec = ModelSpec(unet=unet, task=task, scale=scale, image_size=16, class_names=tuple(classes), extra=extra or {})
    save_model(folder / name, UNet(unet), spec)
    return folder / name


def with_spec_text(path: Path, text: str, out: Path) -> Path:
    """A copy of a model file whose spec is `text`, tensors unchanged."""
    with safe_open(path, "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, out, metadata=metadata | {"spec": text})
    return out


def with_field(path: Path, key: str, value, out: Path) -> Path:
    """A copy of a model file with one spec field (dotted: `unet.base_channels`) set to `value`."""
    with safe_open(path, "pt") as f:
        spec = json.loads(f.metadata()["spec"])
    *parents, last = key.split(".")
    target = spec
    for part in parents:
        target = target[part]
    target[last] = value
    return with_spec_text(path, json.dumps(spec), out)


GENERATOR_CASES = [
    ("num_timesteps", 10**9), ("num_timesteps", 0), ("num_timesteps", -3), ("num_timesteps", True),
    ("num_timesteps", 1000.5), ("num_timesteps", "1000"),
    ("image_size", 8192), ("image_size", 0), ("image_size", 18), ("image_size", None),
    ("scale", 10**6), ("scale", 4), ("channels", 2), ("channels", 10**6),
    ("unet.in_channels", 10**6), ("unet.base_channels", 0), ("unet.base_channels", 10**6), ("unet.base_channels", 12),
    ("unet.channel_mults", []), ("unet.channel_mults", [0, 1]), ("unet.channel_mults", [1] * 20),
    ("unet.channel_mults", "122"), ("unet.channel_mults", [1, 2.5]), ("unet.channel_mults", [1, 10**6]),
    ("unet.num_res_blocks", 0), ("unet.num_res_blocks", 10**6),
    ("unet.attention_levels", [3]), ("unet.attention_levels", [-1]), ("unet.attention_levels", 2),
    ("unet.head_channels", 0), ("unet.norm_groups", 0), ("unet.norm_groups", 7), ("unet.norm_groups", 10**9),
    ("unet.num_classes", 5), ("unet.num_classes", 10**9), ("unet.num_classes", -1),
    ("class_names", "rb"), ("class_names", ["red", "blue", "green"]), ("class_names", ["red", 7]),
    ("class_names", ["red", "red"]), ("class_names", ["red", ""]),
    ("unet.cond_channels", 3), ("unet.pixel_shuffle", 2), ("unet.dropout", 2.0), ("unet.dropout", math.nan),
    ("residual_scale", 0), ("residual_scale", math.nan), ("residual_scale", -1.0), ("residual_scale", math.inf),
    ("residual_scale", "1"), ("train_steps", -1), ("train_steps", 1.5),
    ("extra", []), ("extra", "text"), ("extra", None),
    ("task", "paint"), ("schedule", "zigzag"), ("prediction", 3), ("unet", []), ("unet.frobnicate", 1), ("foo", 1),
]


@pytest.mark.parametrize("key, value", GENERATOR_CASES, ids=[f"{k}={v!r}"[:40] for k, v in GENERATOR_CASES])
def test_crafted_spec_values_are_a_damaged_model(tmp_path, key, value):
    bad = with_field(tiny_file(tmp_path), key, value, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_model(bad)
    message = str(e.value)
    assert message.startswith(f"{bad}: {DAMAGED}") and key.split(".")[-1] in message
    assert "\n" not in message


@pytest.mark.parametrize("key, value", [("scale", 10**6), ("scale", 1), ("unet.pixel_shuffle", 2),
                                        ("unet.cond_channels", 0), ("unet.num_classes", 2), ("image_size", 8192)])
def test_crafted_upscaler_values_are_a_damaged_model(tmp_path, key, value):
    bad = with_field(tiny_file(tmp_path, Task.UPSCALE), key, value, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=DAMAGED):
        load_model(bad)


def test_a_huge_scale_names_its_value(tmp_path):
    path = tiny_file(tmp_path, Task.UPSCALE)
    spec = json.loads(_spec(path))
    spec["scale"] = spec["unet"]["pixel_shuffle"] = 10**6  # consistent, and 1.5 PiB for one image
    bad = with_spec_text(path, json.dumps(spec), tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=f"{DAMAGED}.*scale 1000000"):
        load_model(bad)


def _spec(path: Path) -> str:
    with safe_open(path, "pt") as f:
        return f.metadata()["spec"]


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "{}", "[]", "null", "not json", "{" + " " * 2_000_000 + "}"],
                         ids=["nested", "empty", "list", "null", "not-json", "2-MB"])
def test_unreadable_specs_are_a_damaged_model(tmp_path, text):
    bad = with_spec_text(tiny_file(tmp_path), text, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=DAMAGED):
        load_model(bad)


def test_deeply_nested_extra_is_a_damaged_model(tmp_path):
    nested = {}
    for _ in range(100):
        nested = {"x": nested}
    bad = with_field(tiny_file(tmp_path), "extra", nested, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=f"{DAMAGED}.*extra"):
        load_model(bad)


def test_the_steps_check_never_sees_a_bad_num_timesteps(tmp_path):
    """num_timesteps <= 0 used to come out as the user's --steps mistake."""
    bad = with_field(tiny_file(tmp_path), "num_timesteps", 0, tmp_path / "bad.safetensors")
    r = invoke("generate", "--model", bad, "--out", tmp_path / "o", "--steps", 1)
    assert r.exit_code == 1 and DAMAGED in r.output and "--steps" not in r.output


def never_initialise_real_weights(monkeypatch):
    """Fail if any layer initialises weights outside the meta device (that is, allocates them)."""
    original = torch.nn.Conv2d.reset_parameters

    def checked(self):
        assert self.weight.is_meta, "a real Conv2d was built for a model that is refused"
        original(self)

    monkeypatch.setattr(torch.nn.Conv2d, "reset_parameters", checked)


def test_a_huge_network_in_a_small_file_is_refused_without_allocating(tmp_path, monkeypatch):
    # Widths 1024-4096 with 16 blocks a level: about 6 billion parameters, 24 GB, from a 1 MB file.
    path = tiny_file(tmp_path)
    spec = json.loads(_spec(path))
    spec["unet"] |= {"base_channels": 1024, "channel_mults": [1, 2, 4], "num_res_blocks": 16, "norm_groups": 8}
    bad = with_spec_text(path, json.dumps(spec), tmp_path / "bad.safetensors")
    never_initialise_real_weights(monkeypatch)
    with pytest.raises(CheckpointError, match="weights do not match the architecture"):
        load_model(bad)
    r = invoke("info", bad)
    assert r.exit_code == 1 and "weights do not match" in r.output


def test_loading_a_good_model_builds_no_random_weights(tmp_path, monkeypatch):
    path = tiny_file(tmp_path)
    never_initialise_real_weights(monkeypatch)
    loaded = load_model(path)
    assert not any(p.is_meta for p in loaded.model.parameters())
    with safe_open(path, "pt") as f:
        assert all(torch.equal(loaded.model.state_dict()[k], f.get_tensor(k)) for k in f.keys())


def test_tensors_of_another_type_are_refused(tmp_path):
    path = tiny_file(tmp_path)
    with safe_open(path, "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file({k: v.to(torch.int32) for k, v in tensors.items()}, tmp_path / "int.safetensors", metadata=metadata)
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_model(tmp_path / "int.safetensors")


def test_reading_a_model_does_not_hold_the_file_in_memory_twice(tmp_path):
    """The file's bytes were read whole and then deserialised: a 6 GB file took 12 GB."""
    path = tmp_path / "big.safetensors"
    save_file({"w": torch.zeros(2_000_000)}, path, metadata={"format": "x"})  # 8 MB
    tracemalloc.start()
    try:
        tensors, metadata = read_safetensors(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert metadata == {"format": "x"} and tensors["w"].shape == (2_000_000,)
    assert peak < path.stat().st_size / 4


FIELDS = [key for key, _ in GENERATOR_CASES]
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                           max_leaves=6)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(FIELDS), value=JSON_VALUES)
def test_any_value_in_any_field_loads_or_is_a_damaged_model(tmp_path_factory, key, value):
    folder = tmp_path_factory.mktemp("fuzz")
    bad = with_field(tiny_file(folder), key, value, folder / "bad.safetensors")
    try:
        load_model(bad)
    except CheckpointError as e:
        assert DAMAGED in str(e) or "do not match" in str(e)


EXTRA_KEYS = st.sampled_from(["data", "images", "command", "metrics", "init_from", "init_steps"]) | st.text(max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.dictionaries(EXTRA_KEYS, JSON_VALUES, max_size=4))
def test_any_provenance_can_be_described_and_exported(tmp_path_factory, extra):
    from diffgen import hub, provenance

    folder = tmp_path_factory.mktemp("extra")
    path = with_field(tiny_file(folder), "extra", extra, folder / "odd.safetensors")
    assert provenance.overview(provenance.describe(path))
    assert (hub.export_run(path, folder / "export") / "README.md").is_file()


# Printing what a model says.

ESCAPES = "\x1b[2J\x1b]8;;https://evil.example\x07click\x1b]8;;\x07"


def test_printable_escapes_control_characters():
    from diffgen.cli.base import printable

    assert printable("a\x1b[2Jb\nc\r\td\x7fe\x9bf\x00") == "a\\x1b[2Jb\\nc\\r\\td\\x7fe\\x9bf\\x00"
    assert printable("plain ünïcode ×, \\ and 'quotes'") == "plain ünïcode ×, \\ and 'quotes'"
    assert printable("right\u202eto left") == "right\\u202eto left"


def test_info_escapes_a_hostile_models_text(tmp_path):
    path = tiny_file(tmp_path, classes=(ESCAPES, "blue"), extra={"command": "diffgen train x\x1b[2J", "data": "d\x9b"})
    for args in ((), ("--json",)):
        r = invoke("info", path, *args)
        assert r.exit_code == 0, r.output
        assert not any(c in r.output for c in "\x1b\x07\x9b"), repr(r.output)
    assert "\\x1b[2J" in invoke("info", path).output


def test_error_messages_escape_file_names(tmp_path):
    evil = tmp_path / "evil\x1b[2J\nname.safetensors"
    evil.write_bytes(b"junk")
    r = invoke("info", evil)
    assert r.exit_code == 1 and "not a valid safetensors" in r.output
    assert "\x1b" not in r.output and len(r.output.strip().splitlines()) == 1
    assert "evil\\x1b[2J\\nname.safetensors" in r.output


def test_a_network_too_big_for_its_image_size_is_refused_from_the_spec_alone(tmp_path):
    """Each value within its range, together 16 GB for one 2048×2048 image."""
    path = tiny_file(tmp_path)
    spec = json.loads(_spec(path))
    spec["image_size"], spec["unet"]["base_channels"] = 2048, 256
    bad = with_spec_text(path, json.dumps(spec), tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=f"{DAMAGED} \\(image_size 2048 with this U-Net: .* values held for one image"):
        load_model(bad)
