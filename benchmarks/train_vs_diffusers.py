"""Quality per CPU-minute: `diffgen train` with its defaults against the recipe of diffusers' training example.

Both sides train on the same folder, class-conditional, for the same wall-clock budget, and are then
sampled alike and scored in a classifier's features (FD, lower is better, and class accuracy):

- **diffgen**: `diffgen train DATA --time-budget Bm` with its defaults (tiny U-Net, v-prediction,
  Min-SNR-5, cosine schedule, batch 32, lr 2e-4, EMA 0.999), given only what the data needs: the image
  size, `--no-flip` for digits, and no intermediate sample grids (the final grid, which diffgen always
  draws, stays inside its budget).
- **diffusers**: the recipe of diffusers' `examples/unconditional_image_generation/train_unconditional.py`
  (its defaults: DDPMScheduler with 1,000 linear-β steps and ε-prediction, AdamW at lr 1e-4 with betas
  0.95/0.999, weight decay 1e-6, 500 warm-up steps then cosine decay, gradient clipping at 1, batch 16,
  EMAModel with inv_gamma 1, power 3/4 and max decay 0.9999), on a UNet2DModel with diffgen's tiny
  architecture (`reference_unet.py`: the same parameter count) made class-conditional the same way as
  diffgen (a class embedding with one extra "no label" class, 10% label dropout). The example's cosine is
  planned over its epochs; here it is planned over the budget's time, so it ends at 0 when time is up.

Each run is its own process with one torch thread. The diffgen and the diffusers run of a budget go side
by side (a 2-core machine runs both at full speed), so that whatever else the machine does falls on both
alike; each run's CPU minutes (user + system) are reported beside its budget. Both models are then sampled with the same sampler and steps (diffgen's, at generate's default:
UniPC, 10 steps) and scored against the real training images:

- `digits` (`python tools/build_digits.py`): the project's digit classifier (digits_quality.py);
- `emoji` at 32x32 (`python tools/build_emoji.py --no-skin-tones`): the emoji-group classifier
  (emoji_classifier.py).

    python benchmarks/train_vs_diffusers.py --data digits --budgets 10 20 40 --json h2h-digits.json

A finished run (runs/h2h/DATA/SIDE-Bm) is scored again without retraining.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from diffgen.checkpoint import LoadedModel, ModelSpec, Task
from diffgen.enums import Prediction, ScheduleKind
from diffgen.models import open_model
from diffgen.samplers import Sampler
from diffgen.unet import UNetConfig

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class DataSet:
    folder: str
    image_size: int
    flip: bool  # mirror images in training (both sides alike)


DATASETS = {
    "digits": DataSet("data/digits", 28, flip=False),  # a mirrored 2 is not a 2
    "emoji": DataSet("data/emoji", 32, flip=True),
}


@dataclass(frozen=True)
class Recipe:
    """The numbers of diffusers' unconditional training example (its argparse defaults)."""

    batch_size: int = 16
    lr: float = 1e-4
    warmup_steps: int = 500
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 1e-6
    eps: float = 1e-8
    grad_clip: float = 1.0
    ema_inv_gamma: float = 1.0
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    label_dropout: float = 0.1  # diffgen's, for the class conditioning the example does not have


# --- the diffusers side (run in its own process: `--train-diffusers`) ------------------------------------------


def train_diffusers(data_dir: Path, out: Path, image_size: int, flip: bool, budget_s: float, seed: int = 0) -> None:
    """Train a class-conditional UNet2DModel with the example's recipe for budget_s seconds; save its EMA."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel
    from reference_unet import diffusers_unet  # beside this file
    from safetensors.torch import save_file

    from diffgen.config import TrainConfig
    from diffgen.data import open_dataset
    from diffgen.images import to_model_range
    from diffgen.train import build_spec

    recipe = Recipe()
    torch.manual_seed(seed)
    data = open_dataset(data_dir, size=image_size)
    spec = build_spec(TrainConfig(data_dir=data_dir, out_dir=out, image_size=image_size), data)
    images, labels = to_model_range(torch.stack(data.images)), data.labels
    model = diffusers_unet(spec.unet, image_size).train()
    scheduler = DDPMScheduler(num_train_timesteps=1000)  # the example's: linear betas, ε-prediction
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay,
                            eps=recipe.eps)
    ema = EMAModel(model.parameters(), decay=recipe.ema_max_decay, use_ema_warmup=True, inv_gamma=recipe.ema_inv_gamma,
                   power=recipe.ema_power)
    null = spec.unet.num_classes
    g = torch.Generator().manual_seed(seed)
    start, step, order = time.perf_counter(), 0, torch.empty(0, dtype=torch.long)
    while (elapsed := time.perf_counter() - start) < budget_s:
        if len(order) < recipe.batch_size:  # epochs of shuffled images, as the example's DataLoader
            order = torch.cat([order, torch.randperm(len(images), generator=g)])
        idx, order = order[: recipe.batch_size], order[recipe.batch_size:]
        x0, y = images[idx], labels[idx].clone()
        if flip:
            mirror = torch.rand(len(idx), generator=g) < 0.5
            x0 = torch.where(mirror[:, None, None, None], x0.flip(-1), x0)
        y[torch.rand(len(idx), generator=g) < recipe.label_dropout] = null
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=g)
        loss = F.mse_loss(model(scheduler.add_noise(x0, noise, t), t, class_labels=y).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        warm = min(1.0, (step + 1) / recipe.warmup_steps)
        for group in opt.param_groups:
            group["lr"] = recipe.lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget_s)))
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(model.parameters())
        step += 1
        if step % 200 == 0:
            print(f"step {step}, {elapsed:.0f} s, loss {loss.item():.4f}", flush=True)
    ema.copy_to(model.parameters())
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "ema.safetensors")
    info = {"steps": step, "seconds": time.perf_counter() - start, "image_size": image_size,
            "channels": spec.channels, "class_names": list(spec.class_names), "unet": spec.unet.to_dict(),
            "recipe": asdict(recipe)}
    (out / "run.json").write_text(json.dumps(info, indent=2))


class ConditionalUNet(torch.nn.Module):
    """A class-conditional UNet2DModel behind the call of diffgen's U-Net, for diffgen's samplers."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, labels=None, cond=None):
        return self.unet(x, t, class_labels=labels).sample


def load_diffusers_run(run: Path) -> LoadedModel:
    """The EMA model of a diffusers run as a diffgen model: linear schedule, ε-prediction."""
    from reference_unet import diffusers_unet
    from safetensors.torch import load_file

    info = json.loads((run / "run.json").read_text())
    cfg = UNetConfig.from_dict(info["unet"])
    unet = diffusers_unet(cfg, info["image_size"])
    unet.load_state_dict(load_file(run / "ema.safetensors"))
    spec = ModelSpec(unet=cfg, image_size=info["image_size"], channels=info["channels"],
                     class_names=tuple(info["class_names"]), schedule=ScheduleKind.LINEAR, num_timesteps=1000,
                     prediction=Prediction.EPS, train_steps=info["steps"])
    return LoadedModel(spec=spec, model=ConditionalUNet(unet).eval(), path=run)


# --- running both sides ----------------------------------------------------------------------------------------


def run_child(cmd: list[str], log: Path) -> float:
    """Run cmd with one torch thread, output to log; its CPU seconds (user + system). Raises if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return usage.ru_utime + usage.ru_stime


def command(side: str, data: DataSet, run: Path, minutes: float) -> list[str]:
    if side == "diffgen":
        return [sys.executable, "-m", "diffgen", "train", data.folder, "--out", str(run), "--image-size",
                str(data.image_size), *([] if data.flip else ["--no-flip"]), "--time-budget", f"{minutes:g}m",
                "--sample-every", "1000000000"]
    return [sys.executable, __file__, "--train-diffusers", data.folder, str(run), str(data.image_size),
            str(int(data.flip)), str(minutes * 60)]


def run_all(runs: list[tuple[list[str], Path]], at_once: int) -> None:
    """Run each (command, run folder) not done yet, `at_once` at a time, each with one torch thread; a run's CPU
    seconds go to RUN/cpu_seconds.txt, its output to RUN.log beside it. SystemExit naming those that failed."""
    def one(cmd: list[str], run: Path) -> None:
        run.parent.mkdir(parents=True, exist_ok=True)
        cpu = run_child(cmd, run.parent / f"{run.name}.log")
        (run / "cpu_seconds.txt").write_text(f"{cpu:.1f}\n")

    todo = [(cmd, run) for cmd, run in runs if not (run / "cpu_seconds.txt").exists()]
    if todo:
        print(f"training {', '.join(str(run) for _, run in todo)}", flush=True)
    with ThreadPoolExecutor(at_once) as pool:
        futures = [pool.submit(one, cmd, run) for cmd, run in todo]
    errors = [str(f.exception()) for f in futures if f.exception()]
    if errors:
        raise SystemExit("\n".join(errors))


def train_all(name: str, budgets: list[float], sides: list[str], runs: Path) -> None:
    """Every (budget, side) run not done yet; the sides of one budget side by side, one budget after another."""
    data = DATASETS[name]
    for minutes in budgets:
        pair = [(command(side, data, run_dir(runs, name, side, minutes), minutes), run_dir(runs, name, side, minutes))
                for side in sides]
        run_all(pair, at_once=len(pair))


def run_dir(runs: Path, name: str, side: str, minutes: float) -> Path:
    return runs / name / f"{side}-{minutes:g}m"


# --- scoring ---------------------------------------------------------------------------------------------------


def scorer(name: str):
    """(evaluate(loaded, n, steps, sampler) -> row, reference(n) -> row) of a data set's classifier."""
    if name == "digits":
        from digits_quality import evaluate, reference
    else:
        from emoji_quality import evaluate, reference
    return evaluate, reference


def score(name: str, budgets: list[float], sides: list[str], runs: Path, n: int, steps: int, sampler: Sampler) -> list[dict]:
    evaluate, reference = scorer(name)
    rows = [{"side": "real held-out", **reference(n)}]
    for minutes in budgets:
        for side in sides:
            run = run_dir(runs, name, side, minutes)
            loaded = open_model(str(run), Task.GENERATE) if side == "diffgen" else load_diffusers_run(run)
            row = evaluate(loaded, n, steps, sampler)
            row.update(side=side, budget_minutes=minutes, train_steps=loaded.spec.train_steps,
                       cpu_minutes=float((run / "cpu_seconds.txt").read_text()) / 60,
                       parameters=sum(p.numel() for p in loaded.model.parameters()))
            rows.append(row)
            print(f"{side} {minutes:g} min: FD {row['fd']:.2f}, accuracy {row['accuracy']:.3f}, "
                  f"{row['train_steps']} steps, {row['cpu_minutes']:.1f} CPU-minutes", flush=True)
    return rows


def catch_up(rows: list[dict]) -> str:
    """When diffgen first reaches diffusers' FD at its largest budget, as a share of that budget."""
    theirs = [r for r in rows if r["side"] == "diffusers"]
    ours = sorted((r for r in rows if r["side"] == "diffgen"), key=lambda r: r["budget_minutes"])
    if not theirs or not ours:
        return ""
    target = max(theirs, key=lambda r: r["budget_minutes"])
    reached = next((r for r in ours if r["fd"] <= target["fd"]), None)
    if reached is None:
        return f"diffgen does not reach diffusers' {target['budget_minutes']:g}-minute FD {target['fd']:.2f} in these budgets"
    return (f"diffgen reaches diffusers' {target['budget_minutes']:g}-minute FD {target['fd']:.2f} within "
            f"{reached['budget_minutes']:g} minutes ({reached['budget_minutes'] / target['budget_minutes']:.2f} of the time; "
            f"a smaller budget was not run)" if reached is ours[0] else
            f"diffgen reaches diffusers' {target['budget_minutes']:g}-minute FD {target['fd']:.2f} at "
            f"{reached['budget_minutes']:g} minutes ({reached['budget_minutes'] / target['budget_minutes']:.2f} of the time)")


def print_table(rows: list[dict]) -> None:
    print(f"\n{'side':<14}{'budget':>8}{'CPU min':>9}{'steps':>8}{'accuracy':>10}{'FD':>8}")
    for r in rows:
        budget = f"{r['budget_minutes']:g} min" if "budget_minutes" in r else ""
        cpu = f"{r['cpu_minutes']:.1f}" if "cpu_minutes" in r else ""
        print(f"{r['side']:<14}{budget:>8}{cpu:>9}{r.get('train_steps', ''):>8}{r['accuracy']:>10.3f}{r['fd']:>8.2f}")
    print(catch_up(rows))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--train-diffusers":  # one diffusers run, started by train_all
        data_dir, out, size, flip, budget_s = sys.argv[2:7]
        torch.set_num_threads(1)
        train_diffusers(Path(data_dir), Path(out), int(size), bool(int(flip)), float(budget_s))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=list(DATASETS), default="digits")
    p.add_argument("--budgets", type=float, nargs="+", default=[10, 20, 40], help="minutes per run [default: 10 20 40]")
    p.add_argument("--sides", nargs="+", choices=["diffgen", "diffusers"], default=["diffgen", "diffusers"])
    p.add_argument("--runs", type=Path, default=Path("runs/h2h"))
    p.add_argument("--n", type=int, default=1000, help="samples scored per run [default: 1000]")
    p.add_argument("--steps", type=int, default=10, help="sampling steps [default: 10, generate's]")
    p.add_argument("--sampler", default=Sampler.UNIPC.value, choices=[s.value for s in Sampler])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads for scoring (each training run has one) [default: all cores]")
    p.add_argument("--train-only", action="store_true", help="train, do not score")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    train_all(args.data, args.budgets, args.sides, args.runs)
    if args.train_only:
        return
    torch.set_num_threads(args.threads)
    rows = score(args.data, args.budgets, args.sides, args.runs, args.n, args.steps, Sampler(args.sampler))
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
