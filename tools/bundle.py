"""Copy a training run's model into weights/ as a half-precision bundled model.

    python tools/bundle.py runs/digits weights/digits.safetensors
"""

import argparse
from pathlib import Path

from diffgen.checkpoint import load_model, save_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run folder or model .safetensors file")
    parser.add_argument("dest", type=Path, help="where to write the half-precision model")
    args = parser.parse_args()
    src = args.run / "model.safetensors" if args.run.is_dir() else args.run
    loaded = load_model(src)
    save_model(args.dest, loaded.model, loaded.spec, half=True)
    print(f"{args.dest}: {loaded.spec.task.value} model at step {loaded.spec.train_steps}, "
          f"{args.dest.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
