"""The training settings: declared once in config.py, and everything else derived from that declaration."""

import json
from dataclasses import fields, replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diffgen.cli import app
from diffgen.config import (
    TrainConfig, check_config, check_resume, config_from_json, config_to_json, new_config, option_name, resumed,
    setting_of,
)
from diffgen.enums import Crop, Precision, Prediction, Task
from diffgen.errors import OptionError

# A state file's config as the code before config.py wrote it (an upscaling run): files like it must resume.
OLD_STATE_CONFIG = (
    '{"data_dir": "/tmp/photos", "out_dir": "/tmp/upscaleB", "task": "upscale", "scale": 2, "image_size": 16, '
    '"channels": null, "crop": "center", "flip": true, "preset": "tiny", "base_channels": null, "channel_mults": null, '
    '"num_res_blocks": 2, "attention_levels": null, "max_steps": 2, "epochs": null, "batch_size": 4, "grad_accum": 1, '
    '"lr": 0.001, "warmup_steps": 1, "lr_decay": false, "grad_clip": 1.0, "ema_decay": 0.999, "prediction": "x0", '
    '"schedule": "cosine", "num_timesteps": 1000, "min_snr_gamma": 0.0, "pure_noise_share": 0.5, "random_shrink": 0.5, '
    '"label_dropout": 0.1, "seed": 0, "save_every": 2, "sample_every": 100, "log_every": 50, "sample_steps": 50, '
    '"workers": 2, "memory_limit": 2147483648, "device": "auto", "precision": "auto", "init_from": null}'
)


def test_a_config_written_before_config_py_reads_back_and_writes_the_same_json():
    cfg = config_from_json(OLD_STATE_CONFIG)
    assert cfg.task is Task.UPSCALE and cfg.prediction is Prediction.X0 and cfg.crop is Crop.CENTER
    assert cfg.precision is Precision.AUTO and cfg.data_dir == Path("/tmp/photos")
    written = json.loads(config_to_json(cfg))
    newer = {"degrade": "none", "time_budget": None}  # settings added since, at the defaults that keep such a run as it was
    assert {k: v for k, v in written.items() if k not in newer} == json.loads(OLD_STATE_CONFIG)  # old runs resume
    assert {k: written[k] for k in newer} == newer


def test_json_round_trips_tuples_and_enums_and_older_files_get_new_defaults():
    cfg = TrainConfig(Path("d"), channel_mults=(1, 2), precision=Precision.BF16, task=Task.UPSCALE)
    assert config_from_json(config_to_json(cfg)) == cfg
    older = json.loads(config_to_json(cfg))
    del older["random_shrink"]  # a setting added after the file was written
    assert config_from_json(json.dumps(older)).random_shrink == 1.0
    with pytest.raises(KeyError):  # a file without the run's folders is damaged, not old
        config_from_json('{"data_dir": "d"}')


def test_every_option_of_train_comes_from_a_setting_with_its_help():
    r = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"})
    assert r.exit_code == 0
    for f in fields(TrainConfig):
        s = setting_of(f)
        if s.cli and not s.argument:
            assert option_name(f) in r.output and s.help in r.output, f.name


def test_ranges_are_checked_from_the_declaration_with_the_option_named():
    base = TrainConfig(Path("d"))
    for change, message in [({"batch_size": 0}, "--batch-size 0: must be at least 1"),
                            ({"channels": 2}, "--channels 2: choose 1, 3 or 4"),
                            ({"label_dropout": 1.0}, r"--label-dropout 1.0: must be in \[0, 1\)"),
                            ({"precision": "bf17"}, "--precision bf17: choose auto, fp32 or bf16"),
                            ({"random_shrink": 0.5}, "--random-shrink: only for --task upscale"),
                            ({"task": Task.UPSCALE, "scale": 3}, "--scale 3: choose 2, 4 or 8")]:
        with pytest.raises(OptionError, match=message):
            check_config(replace(base, **change))
    check_config(replace(base, scale=3))  # the scale of a generation run is not used


def test_a_new_upscaling_run_takes_the_upscaling_defaults_unless_given():
    cfg = new_config({"data_dir": Path("d"), "task": Task.UPSCALE, "image_size": 64})
    assert (cfg.image_size, cfg.prediction, cfg.num_res_blocks, cfg.pure_noise_share) == (64, Prediction.X0, 2, 0.5)
    with pytest.raises(OptionError, match="--epochs and --max-steps: give one or the other"):
        new_config({"data_dir": Path("d"), "epochs": 2, "max_steps": 5})


def test_a_resume_may_change_only_resumable_settings_and_says_the_runs_own():
    saved = TrainConfig(Path("d"), Path("run"), lr=1e-4, flip=True, epochs=3)
    assert resumed(saved, {"max_steps": 50, "device": "cpu"}) == replace(saved, max_steps=50, epochs=None, device="cpu")
    assert resumed(saved, {"lr": 1e-4}) == saved  # the first command again, with --resume added
    with pytest.raises(OptionError, match=r"--no-flip \(the run's: --flip\), --lr \(the run's: 0.0001\) would change"):
        resumed(saved, {"lr": 2e-4, "flip": False})


def test_a_library_caller_cannot_resume_with_another_learning_rate(class_folder, tmp_path):
    """The policy is the core's: train(cfg, resume=True) checks it, not only the command line."""
    from diffgen.train import train

    cfg = TrainConfig(class_folder, tmp_path / "r", image_size=16, batch_size=4, max_steps=1, save_every=1)
    train(cfg)
    with pytest.raises(OptionError, match=r"--lr \(the run's: 0.0002\)"):
        train(replace(cfg, lr=1e-3, max_steps=2), resume=True)
    check_resume(replace(cfg, max_steps=2, workers=0), cfg)  # length and hardware may change
