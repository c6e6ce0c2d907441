"""The U-Net's achieved GFLOP/s at inference, as a share of a same-dtype 2048x2048 matmul's in the same run.

Two workloads: one tile of the bundled x4 upscaler at the default tile size (DEFAULT_TILE LR pixels), and
the `tiny` preset (unconditional, 3 channels, random weights) on 16 images of 32x32, as sampling_speed.py
samples. Each runs in float32 (the loaded network) and in bf16 (diffgen's `in_bfloat16`, what
`--precision auto` picks on CPUs with native bf16), beside a 2048x2048 matmul in that dtype; the calls
are interleaved round by round and the GFLOP/s come from medians. FLOPs are counted by
torch.utils.flop_counter.FlopCounterMode, which does not know the CPU's flash-attention kernel: its FLOPs
are added with the formula torch uses for the other attention kernels (`sdpa_flop_count`).

Goal (issue 19): >= 30% of the bf16 matmul rate on CPUs with native bf16, >= 60% of the float32 rate
elsewhere.

    python benchmarks/unet_flops.py                  # 1 thread, about 1.5 minutes on 2 cores
    python benchmarks/unet_flops.py --threads 2 --json flops.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from reference_unet import cpu_model, interleave
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

from diffgen.checkpoint import LoadedModel, ModelSpec, Task, in_bfloat16
from diffgen.models import open_model
from diffgen.unet import UNet, preset
from diffgen.upscale import DEFAULT_TILE

MATMUL_N = 2048
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(call: Callable[[], object]) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def upscaler_tile() -> tuple[LoadedModel, tuple]:
    loaded = open_model(None, Task.UPSCALE)
    s, g = loaded.spec.scale, torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, s * DEFAULT_TILE, s * DEFAULT_TILE, generator=g)
    cond = torch.randn(1, 3, DEFAULT_TILE, DEFAULT_TILE, generator=g)
    return loaded, (x, torch.full((1,), 999), None, cond)


def tiny_batch() -> tuple[LoadedModel, tuple]:
    torch.manual_seed(0)
    model = UNet(preset("tiny", num_classes=0)).eval().requires_grad_(False)
    loaded = LoadedModel(spec=ModelSpec(unet=model.cfg), model=model, path=Path("tiny"))
    return loaded, (torch.randn(16, 3, 32, 32), torch.full((16,), 500), None, None)


WORKLOADS = {f"upscaler tile {DEFAULT_TILE}px": upscaler_tile, "tiny 32x32 batch 16": tiny_batch}


def measure(rounds: int) -> dict:
    """Per dtype: seconds and FLOPs of each workload's forward pass and of the matmul."""
    results = {}
    for dtype_name, dtype in DTYPES.items():
        calls, flops = {}, {}
        for name, make in WORKLOADS.items():
            loaded, args = make()
            model = loaded.model if dtype is torch.float32 else in_bfloat16(loaded).model
            calls[name] = lambda model=model, args=args: model(*args)
            flops[name] = count_flops(calls[name])
        a, b = (torch.randn(MATMUL_N, MATMUL_N, dtype=dtype) for _ in range(2))
        calls["matmul"], flops["matmul"] = (lambda: a @ b), 2 * MATMUL_N**3
        with torch.inference_mode():
            times = interleave(calls, rounds, warmup=1)
        gflops = {k: flops[k] / statistics.median(times[k]) / 1e9 for k in calls}
        results[dtype_name] = {"seconds": times, "gflop": {k: v / 1e9 for k, v in flops.items()},
                               "gflop_per_s": gflops,
                               "share_of_matmul": {k: gflops[k] / gflops["matmul"] for k in WORKLOADS}}
    return results


def print_table(r: dict) -> None:
    print(f"\n{r['cpu']}; torch {r['torch']}, {r['threads']} thread(s), {r['rounds']} interleaved rounds")
    print(f"{'dtype':<6}{'workload':<26}{'GFLOP':>9}{'median s':>10}{'GFLOP/s':>10}{'of matmul':>11}")
    for dtype, d in r["results"].items():
        for name in [*WORKLOADS, "matmul"]:
            share = f"{d['share_of_matmul'][name]:>10.0%}" if name in WORKLOADS else f"{1:>10.0%}"
            print(f"{dtype:<6}{name:<26}{d['gflop'][name]:>9.2f}{statistics.median(d['seconds'][name]):>10.3f}"
                  f"{d['gflop_per_s'][name]:>10.1f}{share:>11}")
    print("goal: >= 30% of the bf16 matmul on CPUs with native bf16, >= 60% of the float32 matmul elsewhere")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"cpu": cpu_model(), "torch": torch.__version__, "threads": args.threads, "rounds": args.rounds,
               "results": measure(args.rounds)}
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
