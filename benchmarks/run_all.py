"""Every benchmark in one command: each prints its table beside its goal; all results go to one JSON file.

    pip install -e ".[bench]"
    python benchmarks/run_all.py --json benchmarks.json        # about 40 minutes on 2 cores

Each script also runs alone; see its docstring. Ratios compare runs made in the same process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
JOBS = {
    "sampling": ["sampling_speed.py"],
    "training": ["train_throughput.py"],
    "training_bf16": ["train_throughput.py", "--precision", "bf16"],
    "unet_flops": ["unet_flops.py"],
    "inference_levers": ["inference_levers.py"],
    "upscale_vs_ncnn": ["upscale_vs_realesrgan.py", "--load"],
    # n = 2,000: at 500 the FD of one seed varies by ±0.3 between seeds, as much as the samplers differ.
    "digits": ["digits_quality.py", "--n", "2000", "--sampler", "ddim", "--steps", "50", "10"],
    "digits_fast": ["digits_quality.py", "--n", "2000", "--sampler", "unipc", "--steps", "5", "10", "15", "20"],
    "digits_2m": ["digits_quality.py", "--n", "2000", "--sampler", "dpm++2m", "--steps", "5", "10", "15", "20"],
    "upscale": ["upscale_speed.py", "--steps", "1", "2", "4"],
    "upscale_memory": ["upscale_memory.py"],
    "startup": ["startup.py"],
}


def run(name: str, args: list[str], folder: Path) -> dict:
    out = folder / f"{name}.json"
    print(f"== {name}: python benchmarks/{' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / args[0]), *args[1:], "--json", str(out)], check=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(JOBS), help="run these benchmarks only")
    parser.add_argument("--json", type=Path, default=Path("benchmarks.json"))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or JOBS:
            results[name] = run(name, JOBS[name], Path(tmp))
    args.json.write_text(json.dumps(results, indent=2))
    print(f"all results in {args.json}")


if __name__ == "__main__":
    main()
