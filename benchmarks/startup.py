"""Start-up and end-to-end time of the command line, as multiples of what it cannot avoid.

- `diffgen --help` must answer in under 0.5 s and must not import torch.
- `diffgen generate --n 16 --out DIR` with the default model, start-up included, as a multiple of
  `python -c "import torch"` measured in the same run (goal: at most 1.2x, issue 19).

    python benchmarks/startup.py [--repeats 3] [--json startup.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wall(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def help_imports_torch() -> bool:
    code = "import sys; from diffgen.cli import app; app(['--help'], standalone_mode=False); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip().endswith("True")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    diffgen = [sys.executable, "-m", "diffgen"]
    torch_import = wall([sys.executable, "-c", "import torch"], args.repeats)
    help_s = wall([*diffgen, "--help"], args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [Path(tmp) / f"run{i}" for i in range(args.repeats)]
        times = []
        for out in runs:
            t0 = time.perf_counter()
            subprocess.run([*diffgen, "generate", "--n", "16", "--out", str(out)], check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        generate_s = statistics.median(times)
    result = {
        "import_torch_s": torch_import, "help_s": help_s, "help_imports_torch": help_imports_torch(),
        "generate_16_s": generate_s, "generate_over_import_torch": generate_s / torch_import,
    }
    print(f"python -c 'import torch'      {torch_import:6.2f} s")
    print(f"diffgen --help                 {help_s:6.2f} s  (goal < 0.5 s; imports torch: {result['help_imports_torch']})")
    print(f"diffgen generate --n 16        {generate_s:6.2f} s  = {result['generate_over_import_torch']:.2f}x import torch (goal <= 1.2x)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
