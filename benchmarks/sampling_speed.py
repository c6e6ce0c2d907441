"""Sampling speed: 16 images at 32x32 with 50 DDIM steps, diffgen against diffusers' DDIMPipeline.

diffgen's side is its real path: an unconditional U-Net of a preset with random weights is written
with `save_model`, read back with `load_model`, and `generate_images` samples 16 images (PIL) with
50 DDIM steps, at diffgen's default precision (`--precision auto`: bf16 autocast on CPUs with native
bf16, else float32) and, as a second row, in float32. The reference is diffusers' DDIMPipeline around the UNet2DModel of the same
architecture (reference_unet.py), with a DDIMScheduler on the same schedule: diffgen's training
default is the cosine schedule of Nichol & Dhariwal, which is diffusers' "squaredcos_cap_v2" (same
offset 0.008 and β cap 0.999); "linspace" spacing evaluates the same 50 timesteps as diffgen's
uniform spacing, and both clip x0 to [-1, 1] and end at ᾱ = 1. The pipeline runs in float32 and, where
diffgen's default is bf16, also under bf16 autocast: the row at equal precision (goal >= 1.5x, issue 19).

It also reports the U-Net's achieved GFLOP/s: FLOPs of one forward pass on a 16x3x32x32 batch
(counted by torch.utils.flop_counter.FlopCounterMode) over its median time, as a fraction of a
2048x2048 float32 matmul's GFLOP/s measured in the same rounds. Everything runs in one process with
the same torch thread count, interleaved (AB BA AB ...), and reports medians and paired ratios.

One thread is the default: on a machine shared with other jobs, more threads than free cores leave each
op waiting for a descheduled thread and timings swing by several times. On a quiet machine pass
`--threads N` (N = physical cores).

    pip install -e ".[bench]"
    python benchmarks/sampling_speed.py                 # tiny preset, 1 thread, about 2 minutes
    python benchmarks/sampling_speed.py --preset small --repeats 2 --json sampling.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import diffusers
import torch
from diffusers import DDIMPipeline, DDIMScheduler
from reference_unet import cpu_model, diffusers_unet, interleave, median_ratio, num_params, synced
from torch.utils.flop_counter import FlopCounterMode

from diffgen.checkpoint import LoadedModel, ModelSpec, load_model, save_model, with_precision
from diffgen.generate import generate_images
from diffgen.samplers import Sampler
from diffgen.schedule import ScheduleKind
from diffgen.unet import UNet, preset

IMAGE_SIZE, NUM_IMAGES, MATMUL_N = 32, 16, 2048


def randomize_zero_init(model: torch.nn.Module) -> None:
    """Give the zero-initialised layers random weights too, so the network is not the identity."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)


def diffgen_model(name: str, path: Path, device: str) -> LoadedModel:
    """An unconditional random-weight model of a preset, saved and loaded through diffgen's file format."""
    torch.manual_seed(0)
    model = UNet(preset(name, num_classes=0))
    randomize_zero_init(model)
    spec = ModelSpec(unet=model.cfg, image_size=IMAGE_SIZE, channels=3, schedule=ScheduleKind.COSINE)
    save_model(path, model, spec)
    return load_model(path, device=device)


def diffusers_pipeline(loaded: LoadedModel, device: str) -> DDIMPipeline:
    """DDIMPipeline with the reference UNet2DModel and diffgen's cosine schedule and uniform spacing."""
    torch.manual_seed(0)
    unet = diffusers_unet(loaded.spec.unet, IMAGE_SIZE).eval().requires_grad_(False)
    scheduler = DDIMScheduler(
        num_train_timesteps=loaded.spec.num_timesteps, beta_schedule="squaredcos_cap_v2",
        timestep_spacing="linspace", clip_sample=True, set_alpha_to_one=True,
    )
    pipe = DDIMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def sampling_calls(loaded: LoadedModel, pipe: DDIMPipeline, steps: int) -> dict:
    """Sample NUM_IMAGES PIL images with each library (diffgen at its default precision and in float32;
    diffusers in float32 and, where diffgen's default is bf16, under bf16 autocast)."""
    default = with_precision(loaded, "auto")
    ddim = lambda model: generate_images(model, NUM_IMAGES, steps=steps, sampler=Sampler.DDIM, batch_size=NUM_IMAGES)

    def diffusers(bf16: bool):
        with torch.autocast(pipe.device.type, dtype=torch.bfloat16, enabled=bf16):
            return pipe(batch_size=NUM_IMAGES, num_inference_steps=steps, eta=0.0,
                        generator=torch.Generator().manual_seed(0), output_type="pil")

    calls = {"diffgen": lambda: ddim(default), "diffgen-fp32": lambda: ddim(loaded), "diffusers": lambda: diffusers(False)}
    if default.precision == "bf16":
        calls["diffusers-bf16"] = lambda: diffusers(True)
    return {name: synced(call, str(pipe.device)) for name, call in calls.items()}


def time_sampling(loaded: LoadedModel, pipe: DDIMPipeline, steps: int, repeats: int) -> dict[str, list[float]]:
    # A 2-step warm-up pays for first-call allocations and oneDNN kernel set-up.
    for call in sampling_calls(loaded, pipe, 2).values():
        call()
    return interleave(sampling_calls(loaded, pipe, steps), repeats, warmup=0)


def count_flops(call: Callable[[], object]) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def time_forwards(loaded: LoadedModel, pipe: DDIMPipeline, repeats: int) -> tuple[dict, dict[str, int]]:
    """Seconds of one U-Net forward pass (and of the reference matmul) per round, and their FLOPs."""
    device = pipe.device
    x = torch.randn(NUM_IMAGES, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    t = torch.full((NUM_IMAGES,), 500, dtype=torch.long, device=device)
    a, b = torch.randn(MATMUL_N, MATMUL_N, device=device), torch.randn(MATMUL_N, MATMUL_N, device=device)
    calls = {
        "diffgen": lambda: loaded.model(x, t),
        "diffusers": lambda: pipe.unet(x, t).sample,
        "matmul": lambda: a @ b,
    }
    calls = {name: synced(call, str(device)) for name, call in calls.items()}
    flops = {"diffgen": count_flops(calls["diffgen"]), "diffusers": count_flops(calls["diffusers"]),
             "matmul": 2 * MATMUL_N**3}
    with torch.inference_mode():
        times = interleave(calls, repeats, warmup=2)
    return times, flops


def summarise(sampling: dict, forwards: dict, flops: dict) -> dict:
    gflops = {k: flops[k] / statistics.median(forwards[k]) / 1e9 for k in forwards}
    return {
        "sampling_seconds": sampling,
        "sampling_median_s": {k: statistics.median(v) for k, v in sampling.items()},
        "sampling_ratio": median_ratio(sampling["diffusers"], sampling["diffgen"]),
        "sampling_ratio_fp32": median_ratio(sampling["diffusers"], sampling["diffgen-fp32"]),
        "sampling_ratio_equal_precision": median_ratio(sampling.get("diffusers-bf16", sampling["diffusers"]),
                                                       sampling["diffgen"]),
        "forward_seconds": forwards,
        "forward_gflop": {k: v / 1e9 for k, v in flops.items()},
        "gflop_per_s": gflops,
        "fraction_of_matmul": {k: gflops[k] / gflops["matmul"] for k in ("diffgen", "diffusers")},
        "forward_ratio": median_ratio(forwards["diffusers"], forwards["diffgen"]),
    }


def print_table(r: dict) -> None:
    s, g, f = r["sampling_median_s"], r["gflop_per_s"], r["fraction_of_matmul"]
    print(f"\n{r['cpu']}\n{NUM_IMAGES} images at {IMAGE_SIZE}x{IMAGE_SIZE}, {r['steps']} DDIM steps, preset {r['preset']}, "
          f"{r['threads']} torch thread(s), {r['repeats']} interleaved repeats")
    print(f"{'':<12}{'params':>12}{'sampling s':>12}{'forward GFLOP':>15}{'GFLOP/s':>10}{'of matmul':>11}")
    for k in ("diffgen", "diffusers"):
        print(f"{k:<12}{r['params'][k]:>12,}{s[k]:>12.2f}{r['forward_gflop'][k]:>15.2f}{g[k]:>10.1f}{f[k]:>10.0%}")
    print(f"{'diffgen-fp32':<12}{'':>12}{s['diffgen-fp32']:>12.2f}")
    if "diffusers-bf16" in s:
        print(f"{'diffusers-bf16':<12}{'':>12}{s['diffusers-bf16']:>12.2f}")
    print(f"{'matmul':<12}{'':>12}{'':>12}{r['forward_gflop']['matmul']:>15.2f}{g['matmul']:>10.1f}{1:>10.0%}")
    print(f"\nsampling: diffgen ({r['precision']}) is {r['sampling_ratio']:.2f}x diffusers' speed (goal >= 1.3x), "
          f"{r['sampling_ratio_fp32']:.2f}x in float32, {r['sampling_ratio_equal_precision']:.2f}x at equal precision "
          f"(goal >= 1.5x); "
          f"one forward: {r['forward_ratio']:.2f}x; diffgen U-Net reaches {f['diffgen']:.0%} of matmul GFLOP/s "
          f"(goal >= 60%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="U-Net preset (default: tiny)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default: 50)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved sampling runs of each (default: 5)")
    parser.add_argument("--forward-repeats", type=int, default=10, help="interleaved forward passes (default: 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of both sides (default: 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        loaded = diffgen_model(args.preset, Path(tmp) / "model.safetensors", args.device)
    pipe = diffusers_pipeline(loaded, args.device)
    sampling = time_sampling(loaded, pipe, args.steps, args.repeats)
    forwards, flops = time_forwards(loaded, pipe, args.forward_repeats)
    results = {"cpu": cpu_model(), "device": args.device, "torch": torch.__version__, "diffusers": diffusers.__version__, "threads": args.threads,
               "preset": args.preset, "steps": args.steps, "repeats": args.repeats,
               "precision": with_precision(loaded, "auto").precision,
               "params": {"diffgen": num_params(loaded.model), "diffusers": num_params(pipe.unet)},
               **summarise(sampling, forwards, flops)}
    results["wall_s"] = time.perf_counter() - start
    print_table(results)
    print(f"total {results['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
