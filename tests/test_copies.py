"""The copy check: training images given back count as copies, new images do not; training and generate report it."""

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

import diffgen.copies
from diffgen.cli import app
from diffgen.config import TrainConfig
from diffgen.copies import check_copies, data_reference, features, reference_of
from diffgen.data import open_dataset
from diffgen.events import Note, Sampled
from diffgen.images import to_model_range
from diffgen.train import train


@pytest.fixture(scope="module")
def reference(class_folder):
    return data_reference(open_dataset(class_folder, size=16))


def training_images(class_folder):
    return to_model_range(torch.stack(open_dataset(class_folder, size=16).images))


def test_training_images_given_back_are_copies_and_noise_is_not(class_folder, reference):
    images = training_images(class_folder)
    g = torch.Generator().manual_seed(0)
    given_back = check_copies(images + 0.02 * torch.randn(images.shape, generator=g), reference)
    assert given_back.share == 1.0 and given_back.memorising
    image, name, distance = given_back.closest[0]
    assert name == reference.names[image] and distance < reference.threshold  # its own training image
    noise = check_copies(torch.rand((12, 3, 16, 16), generator=g) * 2 - 1, reference)
    assert noise.share == 0.0 and not noise.memorising and noise.closest[0][2] > 2 * reference.threshold


def test_the_threshold_is_the_datas_own_and_ignores_duplicates(class_folder, reference):
    images = training_images(class_folder)
    assert reference.names[0] == "blue/000.png" and len(reference.names) == 12
    assert 0 < reference.threshold < 1.5  # within the range of distances of unit vectors, 0 to 2
    doubled = reference_of(torch.cat([images, images]), reference.names * 2)
    assert doubled.threshold > 0.5 * reference.threshold  # a duplicate is not a neighbour (else: 0)


def test_features_ignore_brightness_and_contrast(class_folder):
    images = training_images(class_folder)
    assert torch.allclose(features(images * 0.5 + 0.2), features(images), atol=1e-5)


def config(data, out, **kw):
    return replace(TrainConfig(data_dir=data, out_dir=out, image_size=16, batch_size=4, max_steps=2, warmup_steps=1,
                               sample_every=1, log_every=100, sample_steps=2, device="cpu"), **kw)


def test_training_logs_and_reports_the_copies_of_each_grid_and_warns_of_memorising(class_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(diffgen.copies, "WARN_SHARE", -1.0)  # every grid "memorises"
    events = []
    train(config(class_folder, tmp_path / "r"), callback=events.append)
    grids = [e for e in events if isinstance(e, Sampled)]
    assert [g.step for g in grids] == [1, 2] and all(g.copies.images == 16 for g in grids)
    assert sum("near-copies of training images" in e.text for e in events if isinstance(e, Note)) == 2
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert [set(r) for r in log] == [{"step", "copies", "copies_threshold"}] * 2
    assert log[0]["copies"] == grids[0].copies.share


runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_run(class_folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("copies") / "run"
    r = runner.invoke(app, ["train", str(class_folder), "--out", str(run), "--image-size", "16", "--max-steps", "2",
                            "--batch-size", "4", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "step 2: " in r.output and "copies: " in r.output  # the final grid's line
    return run


def test_generate_checks_copies_without_changing_the_images(tiny_run, class_folder, tmp_path):
    args = ["generate", "--model", str(tiny_run), "--n", "4", "--steps", "2"]
    plain = runner.invoke(app, [*args, "--out", str(tmp_path / "plain")])
    checked = runner.invoke(app, [*args, "--out", str(tmp_path / "checked"), "--check-copies", str(class_folder)])
    assert plain.exit_code == 0 and checked.exit_code == 0, checked.output
    for i in range(4):
        assert (tmp_path / "plain" / f"{i:05d}.png").read_bytes() == (tmp_path / "checked" / f"{i:05d}.png").read_bytes()
    lines = [line for line in checked.output.splitlines() if "copies:" in line]
    assert len(lines) == 1 and " of 4 (" in lines[0] and ".png ~ " in lines[0] and "closest: 0000" in lines[0]


@pytest.mark.parametrize("more, needle", [(["--grid", "g.png"], "--check-copies: it compares the image files"),
                                          (["--out", "o"], "--check-copies nowhere: no such folder")])
def test_generate_refuses_a_copy_check_it_cannot_do_in_one_line(tiny_run, tmp_path, monkeypatch, more, needle):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["generate", "--model", str(tiny_run), "--n", "2", "--steps", "1", *more,
                            "--check-copies", "nowhere"])
    assert r.exit_code == 2 and needle in r.output and len(r.output.strip().splitlines()) == 1, r.output
