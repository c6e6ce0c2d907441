"""Which of diffgen's training options buy the most quality per CPU-minute? Variants of the defaults, one budget.

Each variant is `diffgen train DATA --time-budget Bm` with diffgen's defaults plus one change (learning
rate, its decay, batch size), run and scored as `train_vs_diffusers.py` runs and scores
its diffgen side: one torch thread per run, two runs side by side, the EMA model sampled with generate's
default sampler and steps and scored in the data set's classifier features. The `defaults` variant is
the head-to-head's diffgen run of the same budget when that exists (runs/h2h/DATA/diffgen-Bm).

    python benchmarks/training_levers.py --data digits --budget 10 --json levers-digits.json

docs/training.md records what each bought.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from train_vs_diffusers import DATASETS, command, run_all, run_dir, scorer  # beside this file

from diffgen.checkpoint import Task
from diffgen.models import open_model
from diffgen.samplers import Sampler

VARIANTS = {  # name: options added to the defaults (batch 32, lr 2e-4 constant after 200 warm-up steps, EMA 0.999)
    "defaults": [],
    "lr-5e-4": ["--lr", "5e-4"],
    "lr-1e-3": ["--lr", "1e-3"],
    "lr-decay": ["--lr-decay"],
    "lr-1e-3-decay": ["--lr", "1e-3", "--lr-decay"],
    "batch-64": ["--batch-size", "64", "--lr", "4e-4"],  # lr scaled with the batch
    "batch-16": ["--batch-size", "16", "--lr", "1e-4"],
}


def train_variants(name: str, budget: float, variants: list[str], runs: Path) -> None:
    """Each variant not done yet, two at a time; `defaults` only without the head-to-head's run."""
    data = DATASETS[name]
    todo = [v for v in variants if not (v == "defaults" and (h2h_run(name, budget) / "cpu_seconds.txt").exists())]
    run_all([(command("diffgen", data, variant_run(runs, name, v, budget), budget) + VARIANTS[v],
              variant_run(runs, name, v, budget)) for v in todo], at_once=2)


def variant_run(runs: Path, name: str, variant: str, budget: float) -> Path:
    return runs / name / f"{variant}-{budget:g}m"


def h2h_run(name: str, budget: float) -> Path:
    return run_dir(Path("runs/h2h"), name, "diffgen", budget)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=list(DATASETS), default="digits")
    p.add_argument("--budget", type=float, default=10, help="minutes per run [default: 10]")
    p.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run just these variants")
    p.add_argument("--runs", type=Path, default=Path("runs/levers"))
    p.add_argument("--n", type=int, default=1000, help="samples scored per run [default: 1000]")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    variants = args.only or list(VARIANTS)
    train_variants(args.data, args.budget, variants, args.runs)
    evaluate, _ = scorer(args.data)
    rows = []
    for variant in variants:
        run = variant_run(args.runs, args.data, variant, args.budget)
        if variant == "defaults" and not run.exists():
            run = h2h_run(args.data, args.budget)
        loaded = open_model(str(run), Task.GENERATE)
        row = evaluate(loaded, args.n, 10, Sampler.UNIPC)
        row.update(variant=variant, options=" ".join(VARIANTS[variant]), train_steps=loaded.spec.train_steps,
                   cpu_minutes=float((run / "cpu_seconds.txt").read_text()) / 60)
        rows.append(row)
        print(f"{variant:<16}{row['train_steps']:>7} steps {row['cpu_minutes']:>6.1f} CPU-min  "
              f"accuracy {row['accuracy']:.3f}  FD {row['fd']:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
