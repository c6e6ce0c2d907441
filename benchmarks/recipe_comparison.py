"""Which training recipe gives the best digits per CPU-hour? Short runs of each variant, scored alike.

Every variant trains on the digits data with the same batch, learning rate and data order, changing one
thing from the bundled recipe (tiny U-Net, ε-prediction, Min-SNR-5 weighting, cosine schedule): the
prediction target, the loss weighting, the schedule, or the model size. Each run is one process with
one torch thread; its CPU seconds (user + system, so contention from other jobs does not count) are
what the run cost. The EMA model is then scored by `digits_quality.evaluate` at generate's default
sampler and steps: class accuracy and FD under the project's digit classifier (lower FD is better).

    python tools/build_digits.py
    python benchmarks/recipe_comparison.py --steps 800 --json recipes.json    # about 1.5 CPU-hours

Runs go to --runs (default runs/recipes/NAME); a finished run is scored again without retraining.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch
from digits_quality import evaluate, print_table  # beside this file

from diffgen.checkpoint import Task
from diffgen.models import open_model
from diffgen.samplers import Sampler

BASE = ["--image-size", "28", "--batch-size", "64", "--lr", "4e-4", "--no-flip", "--ema-decay", "0.995",
        "--save-every", "500", "--sample-every", "100000", "--log-every", "100"]
VARIANTS = {  # name: (what changes, extra options, share of --steps); the first is the bundled recipe
    "baseline": ("tiny, ε, Min-SNR-5, cosine (bundled)", [], 1.0),
    "v-pred": ("v-prediction", ["--prediction", "v"], 1.0),
    "x0-pred": ("x0-prediction", ["--prediction", "x0"], 1.0),
    "no-min-snr": ("unweighted loss", ["--min-snr-gamma", "0"], 1.0),
    "linear": ("linear schedule", ["--schedule", "linear"], 1.0),
    # About 4.5x the cost of a tiny step, so a quarter of the steps is about the same CPU time.
    "small": ("small U-Net, same CPU time", ["--preset", "small"], 0.25),
}


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train(name: str, extra: list[str], data: Path, runs: Path, steps: int) -> None:
    """Train one variant unless it is done already; its CPU seconds go to RUN/cpu_seconds.txt."""
    out = runs / name
    if (out / "model.safetensors").exists():
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = children_cpu_seconds()
    cmd = [sys.executable, "-m", "diffgen", "train", str(data), "--out", str(out), "--max-steps", str(steps),
           *BASE, *extra]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    (out / "cpu_seconds.txt").write_text(f"{children_cpu_seconds() - before:.1f}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("data/digits"))
    p.add_argument("--runs", type=Path, default=Path("runs/recipes"))
    p.add_argument("--steps", type=int, default=800, help="training steps of a tiny variant [default: 800]")
    p.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run just these variants")
    p.add_argument("--n", type=int, default=500, help="digits scored per variant [default: 500]")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.only or VARIANTS:
        what, extra, share = VARIANTS[name]
        train(name, extra, args.data, args.runs, round(share * args.steps))
        cpu_file = args.runs / name / "cpu_seconds.txt"
        cpu_s = float(cpu_file.read_text()) if cpu_file.exists() else float("nan")
        loaded = open_model(str(args.runs / name), Task.GENERATE)
        row = evaluate(loaded, args.n, 15, Sampler.DPMPP_2M)
        row.update(setting=name, change=what, train_steps=loaded.spec.train_steps, cpu_seconds=cpu_s,
                   parameters=sum(p.numel() for p in loaded.model.parameters()))
        rows.append(row)
        print(f"{name}: FD {row['fd']:.2f}, accuracy {row['accuracy']:.3f}, {cpu_s / 60:.1f} CPU-minutes", flush=True)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
