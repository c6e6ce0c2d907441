"""Hub repo ids, export, push and describe, against a hand-made Hub cache: nothing here touches the network."""

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard, scan_cache_dir
from PIL import Image

from diffgen import hub, models, provenance
from diffgen.checkpoint import ModelSpec, Task, load_model, save_model
from diffgen.errors import CheckpointError, DiffgenError, OptionError
from diffgen.generate import generate_images
from diffgen.models import open_model, resolve
from diffgen.unet import UNet, preset

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40
EXTRA = {"data": "data/blobs", "images": 12, "command": "diffgen train data/blobs --out runs/blobs",
         "metrics": {"loss": 0.031}}


def tiny_model(tmp_path: Path, name: str, *, seed: int = 0, task: Task = Task.GENERATE) -> Path:
    """A tiny model file with non-zero weights everywhere, so round trips are real tests."""
    torch.manual_seed(seed)
    if task is Task.GENERATE:
        unet, classes, scale = preset("tiny", num_classes=2), ("red", "blue"), 1
    else:
        unet, classes, scale = preset("tiny", cond_channels=3, pixel_shuffle=4), (), 4
    model = UNet(unet)
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    spec = ModelSpec(unet=unet, task=task, scale=scale, image_size=16, class_names=classes, train_steps=100 + seed,
                     extra=EXTRA)
    path = tmp_path / name
    save_model(path, model, spec)
    return path


def tiny_run(tmp_path: Path, **kwargs) -> Path:
    """A run folder: model.safetensors and sample grids at steps 50 and 100."""
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    tiny_model(run, "model.safetensors", **kwargs)
    for step, grey in ((50, 10), (100, 200)):
        Image.fromarray(np.full((8, 8, 3), grey, np.uint8)).save(run / "samples" / f"step_{step:06d}.png")
    return run


def put_in_cache(hf_home: Path, repo_id: str, folder: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> None:
    """Lay a folder out as one commit of a repo in the Hub cache, as huggingface_hub does: blobs, refs, snapshots."""
    repo_dir = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    for file in folder.iterdir():
        blob = repo_dir / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, blob)
        link = repo_dir / "snapshots" / commit / file.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../../blobs") / blob.name)
    for ref in refs:
        (repo_dir / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache in HF_HOME, offline, with the working folder elsewhere."""
    hf_home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return hf_home


@pytest.mark.parametrize("text, repo", [
    ("user/name", ("user/name", None)),
    ("user/name@v1.0", ("user/name", "v1.0")),
    ("User_1/my-model.v2@" + COMMIT_A, ("User_1/my-model.v2", COMMIT_A)),
    ("user/name@refs/pr/1", ("user/name", "refs/pr/1")),
])
def test_repo_ids_parse(text, repo, offline_hub):
    assert hub.is_repo_id(text)
    assert hub.parse_repo(text) == repo


@pytest.mark.parametrize("text", [
    "digits", "user/name/extra", "/abs/path", "./user/name", "user/", "/name", "user/name@", "user/na--me",
    "user/na..me", "-user/name", "user/name-", "user/model.safetensors", "us er/name", "user\\name",
])
def test_other_values_are_not_repo_ids(text, offline_hub):
    assert not hub.is_repo_id(text)
    with pytest.raises(OptionError, match="user/name@revision"):
        hub.parse_repo(text)


def test_local_path_wins_over_repo_id(offline_hub):
    tiny_model(Path("."), "x.safetensors")
    Path("user/name").mkdir(parents=True)
    shutil.move("x.safetensors", "user/name/model.safetensors")
    assert hub.looks_like_repo_id("user/name") and not hub.is_repo_id("user/name")
    assert resolve("user/name", Task.GENERATE) == Path("user/name/model.safetensors")


def test_export_then_load_by_repo_id_gives_identical_outputs(tmp_path, offline_hub):
    run = tiny_run(tmp_path)
    out = hub.export_run(run, tmp_path / "export", repo_id="user/name")
    assert (out / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    put_in_cache(offline_hub, "user/name", out, COMMIT_A)
    cache = scan_cache_dir(offline_hub / "hub")  # huggingface_hub reads the hand-made cache as its own
    assert [repo.repo_id for repo in cache.repos] == ["user/name"] and not cache.warnings

    loaded = open_model("user/name", Task.GENERATE)
    original = load_model(run / "model.safetensors")
    assert loaded.path.parent.name == COMMIT_A and loaded.spec == original.spec
    x, t, y = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([5, 800]), torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t, y), original.model(x, t, y))
    images = [np.asarray(g.image) for g in generate_images(loaded, 2, steps=1)]
    expected = [np.asarray(g.image) for g in generate_images(original, 2, steps=1)]
    assert all(np.array_equal(a, b) for a, b in zip(images, expected))


def test_revisions_resolve_to_their_commits(tmp_path, offline_hub):
    for seed, commit, refs in ((0, COMMIT_A, ("main",)), (1, COMMIT_B, ("v1",))):
        hub.export_run(tiny_model(tmp_path, f"m{seed}.safetensors", seed=seed), tmp_path / f"e{seed}")
        put_in_cache(offline_hub, "user/name", tmp_path / f"e{seed}", commit, refs)
    assert open_model("user/name", Task.GENERATE).spec.train_steps == 100
    assert open_model("user/name@v1", Task.GENERATE).spec.train_steps == 101
    assert open_model(f"user/name@{COMMIT_A}", Task.GENERATE).spec.train_steps == 100
    path = resolve("user/name@v1", Task.GENERATE)
    assert provenance.model_identity(path) == {"model": "user/name", "revision": "v1", "commit": COMMIT_B}
    with pytest.raises(CheckpointError, match=r"user/name@v2: .*HF_HUB_OFFLINE.*--revision v2"):
        open_model("user/name@v2", Task.GENERATE)


def test_offline_and_not_cached_names_the_repo_and_the_fix(offline_hub):
    with pytest.raises(CheckpointError) as e:
        open_model("someone/missing", Task.GENERATE)
    message = str(e.value)
    assert message.startswith("someone/missing: ")
    assert "HF_HUB_OFFLINE is set" in message
    assert "run once online, or download it with `hf download someone/missing model.safetensors`" in message


def test_an_unreachable_hub_fails_at_once_and_still_reads_the_cache(tmp_path, offline_hub, monkeypatch):
    """No HF_HUB_OFFLINE, but no connection either: no 25 s of retries; a cached model still loads."""
    import time

    def no_network(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("socket.create_connection", no_network)
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="someone/missing: .*the Hub cannot be reached; run once online"):
        open_model("someone/missing", Task.GENERATE)
    assert time.monotonic() - start < 5
    run = tiny_run(tmp_path)
    put_in_cache(offline_hub, "user/name", hub.export_run(run, tmp_path / "export", repo_id="user/name"), COMMIT_A)
    assert open_model("user/name", Task.GENERATE).spec == load_model(run / "model.safetensors").spec


def test_card_config_and_sample_grid(tmp_path, offline_hub):
    run = tiny_run(tmp_path)
    out = hub.export_run(run, tmp_path / "export", repo_id="user/name", license="apache-2.0")
    card = ModelCard((out / "README.md").read_text(encoding="utf-8"))
    assert card.data.library_name == "diffgen"
    assert card.data.license == "apache-2.0"
    assert card.data.pipeline_tag == "unconditional-image-generation"
    assert card.data.tags == ["diffgen", "diffusion", "class-conditional"]
    params = sum(p.numel() for p in load_model(run / "model.safetensors").model.parameters())
    for text in (f"{params:,}", "`red`, `blue`", "16×16, RGB (3 channels)", "data/blobs", EXTRA["command"], "| loss | 0.031 |",
                 "after 100 training steps](sample_grid.png)", "diffgen generate --model user/name --n 16 --class red"):
        assert text in card.text
    assert (out / "sample_grid.png").read_bytes() == (run / "samples" / "step_000100.png").read_bytes()
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["format"] == "diffgen" and config["format_version"] == 1 and config["diffgen_version"]
    assert ModelSpec.from_json(json.dumps(config["spec"])) == load_model(run / "model.safetensors").spec


def test_upscale_card(tmp_path, offline_hub):
    path = tiny_model(tmp_path, "sr.safetensors", task=Task.UPSCALE)
    out = hub.export_run(path, tmp_path / "export")
    card = ModelCard((out / "README.md").read_text(encoding="utf-8"))
    assert (card.data.pipeline_tag, card.data.license) == ("image-to-image", "mit")
    assert "super-resolution" in card.data.tags
    assert "diffgen upscale photo.png --model USER/NAME" in card.text
    assert not (out / "sample_grid.png").exists()


def test_export_refuses_a_non_empty_folder(tmp_path):
    model = tiny_model(tmp_path, "m.safetensors")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    with pytest.raises(OptionError, match="full: not an empty folder"):
        hub.export_run(model, tmp_path / "full")
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    assert (hub.export_run(model, tmp_path / "empty") / "model.safetensors").is_file()


def test_push_offline_is_a_clear_error(tmp_path, offline_hub):
    with pytest.raises(DiffgenError, match="user/name: cannot push while HF_HUB_OFFLINE is set"):
        hub.push(tiny_run(tmp_path), "user/name")


def test_push_without_a_connection_is_a_clear_error(tmp_path, monkeypatch):
    class NoConnection:
        def __init__(self, token=None):
            pass

        def create_repo(self, *args, **kwargs):
            raise ConnectionError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.HfApi", NoConnection)
    with pytest.raises(DiffgenError, match="user/name: cannot reach the Hugging Face Hub .*check your connection"):
        hub.push(tiny_run(tmp_path), "user/name")


def test_describe_a_file_and_a_hub_model(tmp_path, offline_hub):
    run = tiny_run(tmp_path)
    info = provenance.describe(run / "model.safetensors")
    data = (run / "model.safetensors").read_bytes()
    params = sum(p.numel() for p in load_model(run / "model.safetensors").model.parameters())
    assert info["source"] == "file" and info["model"] == str(run / "model.safetensors")
    assert (info["size_bytes"], info["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert (info["task"], info["scale"], info["image_size"], info["channels"]) == ("generate", 1, 16, 3)
    assert (info["classes"], info["parameters"], info["train_steps"]) == (["red", "blue"], params, 100)
    assert (info["data"], info["train_command"], info["metrics"]) == ("data/blobs", EXTRA["command"], EXTRA["metrics"])
    assert info["provenance"] == {"images": 12}  # what the fixed fields leave out, e.g. a fine-tune's parent
    assert info["usage"] == f"diffgen generate --model {run / 'model.safetensors'} --n 16 --class red --out generated/"
    assert provenance.describe(run) == info  # a run folder is described by its model file
    assert provenance.model_identity(run / "model.safetensors") == {"model": "model.safetensors", "sha256": info["sha256"][:12]}

    put_in_cache(offline_hub, "user/name", hub.export_run(run, tmp_path / "export"), COMMIT_A)
    loaded = open_model("user/name", Task.GENERATE)
    info = provenance.describe(loaded)
    assert {k: info[k] for k in ("source", "model", "revision", "commit")} == {
        "source": "hub", "model": "user/name", "revision": "main", "commit": COMMIT_A}
    assert info["usage"].startswith("diffgen generate --model user/name --n 16")


def test_bundled_models_are_named(tmp_path, monkeypatch):
    tiny_model(tmp_path, "digits.safetensors")
    monkeypatch.setattr(models, "weights_dir", lambda: tmp_path)
    path = resolve("digits", Task.GENERATE)
    assert provenance.model_identity(path) == {"model": "digits"}
    info = provenance.describe(path)
    assert (info["source"], info["model"]) == ("bundled", "digits")
    assert info["usage"].startswith("diffgen generate --model digits ")


def test_info_summarises_a_model_for_people_and_prints_the_record_for_tools(tmp_path, offline_hub):
    from typer.testing import CliRunner

    from diffgen.cli import app

    run = tiny_run(tmp_path)
    r = CliRunner().invoke(app, ["info", str(run)])
    assert r.exit_code == 0, r.output
    for needle in ("generates 16×16 RGB images of 2 classes", "red, blue", "100 steps on data/blobs (12 images)",
                   "command", EXTRA["command"], "loss 0.031", "diffgen generate --model", "--json"):
        assert needle in r.output
    assert "train_steps" not in r.output and "{" not in r.output  # words, not the raw record
    r = CliRunner().invoke(app, ["info", str(run), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == json.loads(json.dumps(provenance.describe(run)))


def test_models_lists_what_images_each_model_makes(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from diffgen.cli import app

    tiny_model(tmp_path, "digits.safetensors")
    tiny_model(tmp_path, "upscale-x4.safetensors", task=Task.UPSCALE)
    monkeypatch.setattr(models, "weights_dir", lambda: tmp_path)
    r = CliRunner().invoke(app, ["models"])
    assert r.exit_code == 0, r.output
    assert "16×16 RGB" in r.output and "any size, RGB" in r.output and "px" not in r.output


def test_a_model_for_the_other_task_is_named_as_the_user_named_it(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from diffgen.cli import app

    tiny_model(tmp_path, "digits.safetensors")
    tiny_model(tmp_path, "upscale-x4.safetensors", task=Task.UPSCALE)
    monkeypatch.setattr(models, "weights_dir", lambda: tmp_path)
    r = CliRunner().invoke(app, ["generate", "--model", "upscale-x4", "--out", str(tmp_path / "out")])
    assert r.exit_code == 1 and str(tmp_path) not in r.output
    assert r.output.startswith("error: upscale-x4: this is an upscale model (x4)")
    assert "use it with `diffgen upscale IMAGE --model upscale-x4`" in r.output
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    r = CliRunner().invoke(app, ["upscale", str(tmp_path / "x.png"), "--model", "digits"])
    assert r.exit_code == 1 and str(tmp_path / "digits") not in r.output
    assert "digits: this is a generate model" in r.output and "`diffgen generate --model digits`" in r.output
    with pytest.raises(CheckpointError, match=r"^user/x@v1: this is a generate model"):
        load_model(tmp_path / "digits.safetensors", task=Task.UPSCALE, name="user/x@v1")


def test_an_export_that_fails_leaves_nothing_and_a_rerun_works(tmp_path, monkeypatch):
    import errno

    model = tiny_model(tmp_path, "m.safetensors")
    real = hub.model_card

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hub, "model_card", disk_full)
    with pytest.raises(DiffgenError, match=r"out: cannot write the export \(No space left on device\)"):
        hub.export_run(model, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no out, no temporary folder
    monkeypatch.setattr(hub, "model_card", real)
    out = hub.export_run(model, tmp_path / "out")
    assert (out / "model.safetensors").read_bytes() == model.read_bytes() and (out / "README.md").is_file()
    assert out.stat().st_mode & 0o777 == 0o777 & ~diffgen_umask()


def diffgen_umask() -> int:
    from diffgen.files import umask

    return umask()


def test_a_rerun_replaces_what_a_killed_export_left(tmp_path):
    import os

    model = tiny_model(tmp_path, "m.safetensors")
    old = tmp_path / "old"  # killed while its files were put in place: config.json (first) and no card
    old.mkdir()
    (old / "config.json").write_text('{"format": "diffgen"}')
    (old / "sample_grid.png").write_bytes(b"an older grid")
    stale, running = (tmp_path / f".new.{tag}.diffgen-export" for tag in ("x1y2z3", "a4b5c6"))
    for build in (stale, running):  # a killed export's build folder, and one an export is writing now
        build.mkdir()
        (build / "model.safetensors").write_bytes(b"half")
    os.utime(stale, (0, 0))
    for out in (old, tmp_path / "new"):
        hub.export_run(model, out)
        assert (out / "model.safetensors").read_bytes() == model.read_bytes() and (out / "README.md").is_file()
    assert not (old / "sample_grid.png").exists()  # the model file has no run folder, so no grid
    assert not stale.exists() and running.exists()
    with pytest.raises(OptionError, match="new: not an empty folder"):  # a finished export may hold the user's edits
        hub.export_run(model, tmp_path / "new")


@pytest.mark.parametrize("files", [{"config.json": '{"my": 1}'}, {"model.safetensors": "mine"}, {"config.json": "{"}])
def test_a_users_own_files_are_never_taken_for_a_half_export(tmp_path, files):
    model = tiny_model(tmp_path, "m.safetensors")
    (tmp_path / "proj").mkdir()
    for name, text in files.items():
        (tmp_path / "proj" / name).write_text(text)
    with pytest.raises(OptionError, match="proj: not an empty folder"):
        hub.export_run(model, tmp_path / "proj")
    assert {p.name: p.read_text() for p in (tmp_path / "proj").iterdir()} == files


def test_printed_commands_are_shell_quoted(tmp_path, offline_hub):
    from typer.testing import CliRunner

    from diffgen.cli import app

    with pytest.raises(CheckpointError, match=r"`hf download user/name model.safetensors --revision 'v1;rm -rf x'`"):
        open_model("user/name@v1;rm -rf x", Task.GENERATE)
    model = tiny_model(tmp_path, "m.safetensors")
    r = CliRunner().invoke(app, ["export", str(model), str(tmp_path / "my export"), "--repo-id", "me/x"])
    assert r.exit_code == 0, r.output
    assert f"hf upload me/x '{tmp_path / 'my export'}'" in r.output


@pytest.mark.parametrize("ref", [b"\xff\xfe\x00garbage", b""])
def test_a_corrupt_ref_in_the_hub_cache_is_a_clear_error_or_ignored(tmp_path, offline_hub, ref):
    out = hub.export_run(tiny_model(tmp_path, "m.safetensors"), tmp_path / "export")
    put_in_cache(offline_hub, "user/name", out, COMMIT_A, refs=("main", "v1"))
    refs = offline_hub / "hub" / "models--user--name" / "refs"
    (refs / "v1").write_bytes(ref)  # another ref, damaged: harmless to the commit main names
    assert provenance.describe(open_model("user/name", Task.GENERATE))["revision"] == "main"
    (refs / "main").write_bytes(ref)
    with pytest.raises(CheckpointError, match="user/name: "):
        open_model("user/name", Task.GENERATE)
    info = provenance.describe(open_model(f"user/name@{COMMIT_A}", Task.GENERATE))
    assert info["revision"] == COMMIT_A


def test_info_shows_a_recorded_command_as_one_shell_line(tmp_path):
    record = provenance.describe(tiny_model(tmp_path, "m.safetensors"))
    for command in (["diffgen", "train", "my data", "--out", "runs/x"], "diffgen train 'my data' --out runs/x"):
        rows = dict(provenance.overview(record | {"train_command": command}))
        assert rows["command"] == "diffgen train 'my data' --out runs/x"
    assert "command" not in dict(provenance.overview(record | {"train_command": None}))


def test_export_into_the_current_empty_folder(tmp_path, monkeypatch):
    model = tiny_model(tmp_path, "m.safetensors")
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    before = (tmp_path / "here").stat().st_ino
    hub.export_run(model, Path("."))
    assert (tmp_path / "here" / "model.safetensors").read_bytes() == model.read_bytes()
    assert (tmp_path / "here").stat().st_ino == before  # the same folder, not one renamed over it
    assert sorted(p.name for p in Path(".").iterdir()) == ["README.md", "config.json", "model.safetensors"]


@pytest.mark.parametrize("code, needle", [(28, "no space left in the Hugging Face cache"),  # ENOSPC
                                          (30, "cannot write the Hugging Face cache")])  # EROFS
def test_a_full_or_read_only_hub_cache_is_not_called_damaged(offline_hub, monkeypatch, code, needle):
    import os

    import huggingface_hub

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    with pytest.raises(CheckpointError, match=needle) as e:
        open_model("user/name", Task.GENERATE)
    assert "damaged" not in str(e.value)


def test_info_says_how_a_model_guides_by_default(tmp_path):
    path = tiny_model(tmp_path, "m.safetensors")
    assert "guidance" not in dict(provenance.overview(provenance.describe(path)))
    loaded = load_model(path)
    for interval, where in (((0.3, 1.1), "at noise levels σ from 0.3 to 1.1"), (None, "at every noise level")):
        save_model(path, loaded.model, replace(loaded.spec, guidance=1.5, guidance_interval=interval))
        assert dict(provenance.overview(provenance.describe(path)))["guidance"].startswith(f"w = 1.5 {where}")
