"""The levers of the U-Net's speed at inference, each measured against the path it would replace.

Side by side in one process, interleaved (AB BA AB ...), medians of paired ratios (above 1.0: the lever is
faster), on the bundled x4 upscaler:

- one tile's forward pass (DEFAULT_TILE LR pixels): float32, in NCHW and in channels-last (diffgen's
  float32 path on a CPU since session 17); bf16 autocast of the float32 network (the
  path before issue 19); autocast with channels-last weights; weights cast to bf16 once, in NCHW and in
  channels-last (diffgen's `in_bfloat16`); the two mirror views of `--samples 2` as one batch of 2;
- a whole 512x512 -> 2048x2048 upscale (`upscale_image`, the default setting) at several tile sizes;
- with --compile, `torch.compile` of the network: its compile time and the speed it buys per tile;
- `generate --n 16` of each bundled generation model at its default setting (bf16), with and without
  `unet.GroupNorm`'s detour around the slow channels-last path of torch's group norm.

One thread is the default (on a shared machine more threads than free cores make timings swing);
on a quiet machine pass `--threads N` as well.

    python benchmarks/inference_levers.py                  # about 2 minutes on 2 cores
    python benchmarks/inference_levers.py --tiles 192 128 96 --compile --json levers.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from reference_unet import cpu_model, interleave, median_ratio

import diffgen.unet
from diffgen.checkpoint import Task, in_bfloat16
from diffgen.generate import generate_images
from diffgen.models import open_model
from diffgen.upscale import DEFAULT_TILE, Sampling, upscale_image
from upscale_speed import test_image


class CastOnce(torch.nn.Module):
    """Weights cast to bf16 once, in the layout they have (NCHW): channels-last left out of `in_bfloat16`."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.inner = copy.deepcopy(model).to(torch.bfloat16)

    def forward(self, x, t, labels, cond):
        return self.inner(x.bfloat16(), t, labels, cond.bfloat16()).float()


class Autocast(torch.nn.Module):
    """The bf16 path before issue 19: autocast around the float32 network, weights cast on every call."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.inner = model

    def forward(self, *args):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.inner(*args).float()


def tile_inputs(batch: int, tile: int, scale: int) -> tuple:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, scale * tile, scale * tile, generator=g)
    return x, torch.full((batch,), 999), None, torch.randn(batch, 3, tile, tile, generator=g)


def forward_levers(loaded, tile: int, rounds: int) -> dict:
    """Seconds of one tile's forward pass for each variant, and each one's error against float32."""
    fp32 = loaded.model
    channels_last = copy.deepcopy(fp32).to(memory_format=torch.channels_last)
    models = {"fp32": fp32, "fp32+channels_last": channels_last, "autocast": Autocast(fp32),
              "autocast+channels_last": Autocast(channels_last),
              "cast_once": CastOnce(fp32), "cast_once+channels_last": in_bfloat16(loaded).model}
    one, two = tile_inputs(1, tile, loaded.spec.scale), tile_inputs(2, tile, loaded.spec.scale)
    calls = {name: (lambda m=m: m(*one)) for name, m in models.items()}
    calls["views_batched"] = lambda: models["cast_once+channels_last"](*two)
    with torch.inference_mode():
        exact = fp32(*one)
        error = {n: float((m(*one) - exact).norm() / exact.norm()) for n, m in models.items()}
        times = interleave(calls, rounds, warmup=1)
    times["views_batched"] = [t / 2 for t in times["views_batched"]]  # per view, as the others
    return {"seconds": times, "relative_rms_error": error,
            "speedup_vs_autocast": {n: median_ratio(times["autocast"], t) for n, t in times.items()}}


def tile_levers(loaded, tiles: list[int], rounds: int) -> dict:
    """Seconds of a whole 512x512 upscale at each tile size (diffgen's bf16 path, default sampling)."""
    img = test_image(None)
    calls = {tile: (lambda tile=tile: upscale_image(loaded, img, tile=tile, sampling=Sampling())) for tile in tiles}
    times = interleave(calls, rounds, warmup=1)
    return {"seconds": {str(k): v for k, v in times.items()},
            "speedup_vs_default": {str(k): median_ratio(times[DEFAULT_TILE], v) for k, v in times.items()}}


def compile_lever(loaded, tile: int, rounds: int) -> dict:
    """torch.compile of the bf16 network: seconds of the first (compiling) call and speed per tile after it."""
    eager = in_bfloat16(loaded).model
    compiled = copy.deepcopy(eager)
    compiled.inner = torch.compile(compiled.inner)
    one = tile_inputs(1, tile, loaded.spec.scale)
    with torch.inference_mode():
        start = time.perf_counter()
        compiled(*one)
        first = time.perf_counter() - start
        times = interleave({"eager": lambda: eager(*one), "compiled": lambda: compiled(*one)}, rounds, warmup=1)
    return {"first_call_s": first, "seconds": times, "speedup": median_ratio(times["eager"], times["compiled"])}


def group_norm_lever(models: list[str], rounds: int) -> dict:
    """Seconds of sampling 16 images with each bundled generation model, with and without the detour."""
    detour = diffgen.unet.slow_channels_last_norm

    def sample(loaded, use_detour: bool) -> None:
        diffgen.unet.slow_channels_last_norm = detour if use_detour else (lambda x, groups: False)
        try:
            spec = loaded.spec
            generate_images(loaded, 16, guidance=spec.guidance, guidance_interval=spec.guidance_interval)
        finally:
            diffgen.unet.slow_channels_last_norm = detour

    results = {}
    for name in models:
        loaded = in_bfloat16(open_model(name, Task.GENERATE))
        calls = {"torch": lambda: sample(loaded, False), "detour": lambda: sample(loaded, True)}
        with torch.inference_mode():
            times = interleave(calls, rounds, warmup=1)
        results[name] = {"seconds": times, "speedup": median_ratio(times["torch"], times["detour"])}
    return results


def print_results(r: dict) -> None:
    print(f"\n{r['cpu']}, torch {r['torch']}, {r['threads']} thread(s)")
    f = r["forward"]
    print(f"one {r['tile']}-pixel tile of the x4 upscaler, median of {r['rounds']} interleaved rounds:")
    print(f"{'variant':<26}{'seconds':>9}{'vs autocast':>13}{'rms error vs fp32':>19}")
    for name, times in f["seconds"].items():
        err = f["relative_rms_error"].get(name)
        print(f"{name:<26}{statistics.median(times):>9.3f}{f['speedup_vs_autocast'][name]:>12.2f}x"
              f"{'' if err is None else f'{err:>18.2%}'}")
    if "tiles" in r:
        print("whole 512x512 -> 2048x2048 upscale (bf16, default sampling) by tile size:")
        for tile, times in r["tiles"]["seconds"].items():
            print(f"  tile {tile:>4}: {statistics.median(times):7.2f} s, {r['tiles']['speedup_vs_default'][tile]:.2f}x "
                  f"the default tile's speed")
    if "compile" in r:
        c = r["compile"]
        print(f"torch.compile: first call {c['first_call_s']:.1f} s, then {c['speedup']:.2f}x eager per tile")
    for name, g in r.get("group_norm", {}).items():
        print(f"generate --n 16 --model {name} (bf16): {statistics.median(g['seconds']['torch']):.2f} s with torch's "
              f"group norm, {statistics.median(g['seconds']['detour']):.2f} s with the detour: {g['speedup']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, help="LR tile of the forward passes")
    parser.add_argument("--tiles", type=int, nargs="*", default=[DEFAULT_TILE, 128],
                        help="tile sizes of whole upscales (none: skip) [default: %(default)s]")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of forward passes")
    parser.add_argument("--upscale-rounds", type=int, default=2, help="interleaved rounds of whole upscales")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--generate", nargs="*", default=["digits", "emoji"],
                        help="bundled models to sample with and without the group-norm detour [default: %(default)s]")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = open_model(None, Task.UPSCALE)
    results = {"cpu": cpu_model(), "torch": torch.__version__, "threads": args.threads, "tile": args.tile,
               "rounds": args.rounds, "forward": forward_levers(loaded, args.tile, args.rounds)}
    if args.tiles:
        tiles = sorted(set(args.tiles) | {DEFAULT_TILE}, reverse=True)
        results["tiles"] = tile_levers(in_bfloat16(loaded), tiles, args.upscale_rounds)
    if args.compile:
        results["compile"] = compile_lever(loaded, args.tile, args.rounds)
    if args.generate:
        results["group_norm"] = group_norm_lever(args.generate, args.rounds)
    print_results(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
