"""torchrun: two CPU processes (gloo) train like one process with the same global batch."""

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from diffgen.config import TrainConfig
from diffgen.train import train


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
