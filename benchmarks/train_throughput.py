"""Training throughput (images/s): diffgen's own training step against a plain loop around diffusers.

diffgen's side is its real code: a temporary folder of random 32x32 PNGs in 10 class folders is opened
with `open_dataset`, and each timed step is `diffgen.train.train_step` (crops, flips, label dropout,
Min-SNR-weighted ε loss, gradient clipping, AdamW) followed by `update_ema`, as one step of `train()`
minus its logging and checkpoints, in `--precision` (fp32, diffgen's default on a CPU, or bf16:
autocast, as `diffgen train --precision bf16`). The reference is diffusers' UNet2DModel of the same architecture
(see reference_unet.py) trained by a plain PyTorch loop: the same decoded images in memory, the same
batch size, AdamW, random timesteps of the same cosine schedule and an ε-prediction MSE loss, at the
same precision (its forward pass under the same bf16 autocast when --precision bf16).

Both run in one process with the same torch thread count, one step of each in turn (AB BA AB ...), and
the table reports medians and the paired ratio diffgen/diffusers (above 1.0 means diffgen is faster).

One thread is the default: on a machine shared with other jobs, more threads than free cores leave each
op waiting for a descheduled thread and timings swing by several times. On a quiet machine pass
`--threads N` (N = physical cores).

    pip install -e ".[bench]"
    python benchmarks/train_throughput.py            # tiny and small presets, 1 thread, about 2 minutes
    python benchmarks/train_throughput.py --steps 2 --presets tiny --json train.json
    python benchmarks/train_throughput.py --precision bf16     # both sides under bf16 autocast
    python benchmarks/train_throughput.py --threads 2 --compile --presets tiny   # diffgen's network compiled

With --compile, diffgen's network goes through `torch.compile` (diffusers' loop stays eager, as its example
runs); the first step, which compiles, is timed apart and reported as the compile time.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from PIL import Image
from reference_unet import cpu_model, diffusers_unet, interleave, median_ratio, num_params, synced

from diffgen.batches import Batches
from diffgen.config import TrainConfig
from diffgen.data import Dataset, open_dataset
from diffgen.images import to_model_range
from diffgen.objective import DiffusionLoss, update_ema
from diffgen.runtime import Ranks
from diffgen.train import build_spec, on_device, train_step
from diffgen.unet import UNet

IMAGE_SIZE, CHANNELS, NUM_CLASSES = 32, 3, 10


def make_image_folder(root: Path, *, per_class: int = 32, seed: int = 0) -> Path:
    """Random RGB images, `per_class` in each of NUM_CLASSES class folders."""
    rng = np.random.default_rng(seed)
    for c in range(NUM_CLASSES):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, CHANNELS), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i:03d}.png")
    return root


def diffgen_step(cfg: TrainConfig, data: Dataset, ema_seconds: list[float], *,
                 compiled: bool = False) -> tuple[Callable[[], None], UNet]:
    """One step of diffgen's training loop, set up as `train()` does (its network through `torch.compile` if
    `compiled`); EMA time goes to `ema_seconds`."""
    spec = build_spec(cfg, data)
    torch.manual_seed(cfg.seed)
    model = on_device(UNet(spec.unet), torch.device(cfg.device))
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    batches = Batches(data, cfg, Ranks(), first_k=0)
    loss_fn = DiffusionLoss.of(spec, cfg)
    net = torch.compile(model) if compiled else model
    step = 0

    def run() -> None:
        nonlocal step
        train_step(net, opt, batches, spec, loss_fn, cfg, step)
        start = time.perf_counter()
        update_ema(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        ema_seconds.append(time.perf_counter() - start)
        step += 1

    return run, model


def diffusers_step(unet_cfg, images: torch.Tensor, labels: torch.Tensor, batch_size: int, lr: float, precision: str,
                   device: str):
    """One step of a plain ε-prediction loop around diffusers' UNet2DModel, on images in memory."""
    torch.manual_seed(0)
    model = diffusers_unet(unet_cfg, IMAGE_SIZE).train().to(device)
    images, labels = images.to(device), labels.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    g = torch.Generator().manual_seed(0)

    def run() -> None:
        idx = torch.randint(len(images), (batch_size,), generator=g)
        x0, y = images[idx.to(device)], labels[idx.to(device)]
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(scheduler.config.num_train_timesteps, (batch_size,), generator=g).to(device)
        with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            pred = model(scheduler.add_noise(x0, noise, t), t, class_labels=y).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run, model


def bench_preset(name: str, data_dir: Path, out_dir: Path, batch_size: int, steps: int, warmup: int,
                 precision: str, device: str, compiled: bool = False) -> dict:
    """Interleaved step times of both loops for one preset, summarised as images/s."""
    cfg = TrainConfig(data_dir=data_dir, out_dir=out_dir, preset=name, image_size=IMAGE_SIZE,
                      batch_size=batch_size, workers=0, device=device, precision=precision)
    data = open_dataset(data_dir, size=IMAGE_SIZE)  # small enough to decode into memory, as train() would
    ema_seconds: list[float] = []
    ours, ours_model = diffgen_step(cfg, data, ema_seconds, compiled=compiled)
    compile_s = None
    if compiled:  # the first call compiles: timed on its own, then left out like any warm-up step
        start = time.perf_counter()
        synced(ours, device)()
        compile_s = time.perf_counter() - start
        ema_seconds.clear()
    images = to_model_range(torch.stack(data.images))
    ref, ref_model = diffusers_step(ours_model.cfg, images, data.labels, batch_size, cfg.lr, precision, device)
    times = interleave({"diffgen": synced(ours, device), "diffusers": synced(ref, device)}, steps, warmup=warmup)
    step_only = [t - e for t, e in zip(times["diffgen"], ema_seconds[warmup:])]
    return {
        "params": {"diffgen": num_params(ours_model), "diffusers": num_params(ref_model)},
        "seconds": times,
        "diffgen_train_step_seconds": step_only,
        "images_per_s": {
            "diffgen": batch_size / statistics.median(times["diffgen"]),
            "diffgen_train_step_only": batch_size / statistics.median(step_only),
            "diffusers": batch_size / statistics.median(times["diffusers"]),
        },
        "ratio": median_ratio(times["diffusers"], times["diffgen"]),
        "ratio_train_step_only": median_ratio(times["diffusers"], step_only),
        "compile_first_step_s": compile_s,
    }


def print_table(results: dict) -> None:
    print(f"\n{'preset':<7}{'params (dg / df)':>22}{'diffgen img/s':>15}{'(no EMA)':>10}"
          f"{'diffusers img/s':>17}{'ratio':>8}{'(no EMA)':>10}")
    for name, r in results["presets"].items():
        p, ips = r["params"], r["images_per_s"]
        print(f"{name:<7}{p['diffgen']:>11,} / {p['diffusers']:>8,}{ips['diffgen']:>15.2f}"
              f"{ips['diffgen_train_step_only']:>10.2f}{ips['diffusers']:>17.2f}{r['ratio']:>7.2f}x"
              f"{r['ratio_train_step_only']:>9.2f}x")
        if r["compile_first_step_s"] is not None:
            print(f"{'':<7}diffgen compiled: its first step (compiling) took {r['compile_first_step_s']:.0f} s")
    print(f"\nratio = median over rounds of diffusers step time / diffgen step time (goal >= 1.5x, issue 19); "
          f"{results['threads']} torch thread(s), batch {results['batch_size']}, {IMAGE_SIZE}x{IMAGE_SIZE}, "
          f"{NUM_CLASSES} classes, {results['steps']} timed steps each after {results['warmup']} warm-up, "
          f"both in {results['precision']}; {results['cpu']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], help="U-Net presets (default: tiny small)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps of each loop per preset (default: 12)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each loop first (default: 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of both sides (default: 1)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="what both sides compute in (default: fp32, diffgen's default on a CPU)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--compile", action="store_true", help="run diffgen's network through torch.compile")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"torch": torch.__version__, "diffusers": diffusers.__version__, "threads": args.threads,
               "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "precision": args.precision, "device": args.device,
               "compiled": args.compile,
               "cpu": cpu_model(), "presets": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = make_image_folder(Path(tmp) / "data")
        for name in args.presets:
            out_dir = Path(tmp) / f"run-{name}"
            results["presets"][name] = bench_preset(name, data_dir, out_dir, args.batch_size, args.steps, args.warmup,
                                                    args.precision, args.device, args.compile)
    results["wall_s"] = time.perf_counter() - start
    print_table(results)
    print(f"total {results['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
