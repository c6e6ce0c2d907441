"""`diffgen reproduce IMAGE.png`: the PNG's record makes the same file again, or says why not."""

import shutil

import torch

from diffgen.checkpoint import load_model, save_model
from test_upscale import invoke, model_file, smooth_image  # noqa: F401 - model_file is a fixture


def test_a_generated_image_and_a_grid_are_made_again_byte_for_byte(tmp_path):
    r = invoke("generate", "-n", 3, "--steps", 2, "--out", tmp_path / "imgs", "--grid", tmp_path / "grid.png")
    assert r.exit_code == 0, r.output
    r = invoke("reproduce", tmp_path / "imgs" / "00001.png", "--out", tmp_path / "again.png")
    assert r.exit_code == 0 and "made again, byte-identical" in r.output, r.output
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "imgs" / "00001.png").read_bytes()
    assert "imgs" not in r.output.split("byte-identical")[1]  # the inner command's own lines are not shown
    r = invoke("reproduce", tmp_path / "grid.png")
    assert r.exit_code == 0 and "byte-identical" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.png", "grid.png", "imgs"]  # no temporary folder left


def test_an_upscaled_image_is_made_again_and_a_changed_model_or_missing_input_is_named(model_file, tmp_path):
    model = tmp_path / "sr.safetensors"
    shutil.copy(model_file, model)
    smooth_image(20, 16).save(tmp_path / "in.png")
    r = invoke("upscale", tmp_path / "in.png", "--model", model, "--samples", 1, "--width", 70)
    assert r.exit_code == 0, r.output
    r = invoke("reproduce", tmp_path / "in_x4.png")
    assert r.exit_code == 0 and "byte-identical" in r.output, r.output
    assert r.output.count("\n") == 1  # the upscale's own lines, which name the temporary folder, are not shown

    loaded = load_model(model)
    with torch.no_grad():
        next(loaded.model.parameters()).add_(0.5)
    save_model(model, loaded.model, loaded.spec)
    r = invoke("reproduce", tmp_path / "in_x4.png")
    assert r.exit_code == 1 and "not byte-identical" in r.output and "the model file changed since" in r.output

    (tmp_path / "in.png").unlink()
    r = invoke("reproduce", tmp_path / "in_x4.png")
    assert r.exit_code == 1 and "upscaled from" in r.output and "not there any more" in r.output
    assert r.output.count("\n") == 1


def test_an_image_without_a_record_is_refused_in_one_line(tmp_path):
    smooth_image(8, 8).save(tmp_path / "plain.png")
    r = invoke("reproduce", tmp_path / "plain.png")
    assert r.exit_code == 1 and "records no diffgen command" in r.output and r.output.count("\n") == 1
    r = invoke("reproduce", tmp_path / "missing.png")
    assert r.exit_code == 1 and "no such file" in r.output
