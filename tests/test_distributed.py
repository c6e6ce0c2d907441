"""torchrun: two CPU processes (gloo) train, generate and upscale like one process, and every documented
torchrun command line parses as written."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch
import typer
from safetensors.torch import load_file
from torch.distributed.run import get_args_parser

from diffgen.cli import app

from diffgen.config import TrainConfig
from diffgen.train import train
from test_upscale import model_file, smooth_image  # noqa: F401 - model_file is a fixture


def test_two_processes_match_one_and_write_one_set_of_files(class_folder, tmp_path):
    args = ["train", str(class_folder), "--image-size", "16", "--batch-size", "4", "--max-steps", "3",
            "--device", "cpu", "--sample-every", "3", "--log-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "diffgen", *args, "--out", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[:4000]  # the ranks' own messages come before torchrun's report
    assert done.stdout.count("done: model written") == 1  # only rank 0 prints
    files = sorted(p.relative_to(tmp_path / "ddp").as_posix() for p in (tmp_path / "ddp").rglob("*") if p.is_file())
    assert files == [".lock", "log.jsonl", "model.safetensors", "samples/step_000003.png", "state.safetensors"]
    assert len((tmp_path / "ddp" / "log.jsonl").read_text().splitlines()) == 3

    train(TrainConfig(data_dir=class_folder, out_dir=tmp_path / "one", image_size=16, batch_size=4, max_steps=3,
                      device="cpu", sample_every=3))
    a = load_file(tmp_path / "ddp" / "state.safetensors")
    b = load_file(tmp_path / "one" / "state.safetensors")
    for k in (k for k in a if k.startswith("model.")):
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def run(*args, processes: int = 2):
    """`diffgen ARGS` as torchrun runs it with that many processes (1: plain `python -m diffgen`), one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    cmd = [sys.executable, *launcher, "-m", "diffgen", *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_generate_under_torchrun_writes_what_one_process_writes(tmp_path):
    args = ["generate", "-n", 5, "--batch-size", 2, "--steps", 2, "--device", "cpu"]  # -n: torchrun takes --n as its own
    two, one = run(*args, "--out", tmp_path / "two"), run(*args, "--out", tmp_path / "one", processes=1)
    assert two.returncode == 0 and one.returncode == 0, two.stderr[-3000:]
    assert files(tmp_path / "two") == files(tmp_path / "one") and len(files(tmp_path / "one")) == 5  # byte for byte
    assert two.stdout.count("done:") == 1 and "5 images in" in two.stdout and "by 2 processes" in two.stdout


def test_a_failing_process_is_reported_and_the_others_finish(tmp_path):
    (tmp_path / "out" / "00003.png").mkdir(parents=True)  # batch [2, 3] cannot be written: process 1's
    done = run("generate", "-n", 5, "--batch-size", 2, "--steps", 2, "--device", "cpu", "--out", tmp_path / "out",
               "--overwrite")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "00003.png" in done.stderr and "(process 1 of 2)" in done.stderr
    assert "3 images of 5 made by the processes that finished" in done.stderr and "1 process failed" in done.stderr
    assert {"00000.png", "00001.png", "00004.png"} <= set(files(tmp_path / "out"))


def test_upscale_under_torchrun_splits_the_files_and_counts_them_all(tmp_path, model_file):
    for i in range(3):
        smooth_image(16 + 4 * i, 12).save(tmp_path / f"in{i}.png")
    args = ["upscale", tmp_path / "in0.png", tmp_path / "in1.png", tmp_path / "in2.png", "--model", model_file,
            "--device", "cpu", "--samples", 1]
    two, one = run(*args, "--out", tmp_path / "two"), run(*args, "--out", tmp_path / "one", processes=1)
    assert two.returncode == 0 and one.returncode == 0, two.stderr[-3000:]
    assert files(tmp_path / "two") == files(tmp_path / "one") and len(files(tmp_path / "one")) == 3
    assert "3 images upscaled on cpu by 2 processes, 0 skipped, 0 failed" in " ".join(two.stdout.split())


def documented_torchrun_lines() -> list[str]:
    """Every `torchrun …` command line in the README, the docs and the commands' --help, continuations joined."""
    root = Path(__file__).parent.parent
    texts = [p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))]]
    texts += [command.help or "" for command in typer.main.get_command(app).commands.values()]
    lines = "\n".join(texts).replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip().startswith("torchrun ")]


def test_every_documented_torchrun_command_line_parses_as_written():
    """torchrun's parser takes each line as it is written (`--n` would be its own ambiguous option), and every
    option after `-m diffgen COMMAND` is one that command has."""
    lines = documented_torchrun_lines()
    assert len(lines) >= 4
    for line in lines:
        words = shlex.split(line.split("#")[0])
        parsed = get_args_parser().parse_args(words[1:])  # exits on an ambiguous or unknown option of its own
        assert parsed.module and parsed.training_script == "diffgen", line
        name, *args = parsed.training_script_args
        command = typer.main.get_command(app).commands[name]
        known = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
        assert {arg.split("=")[0] for arg in args if arg.startswith("-")} <= known, line
