"""How good are a digit model's samples? Class accuracy and Fréchet distance under a digit classifier.

For each sampling setting, n digits are generated with classes cycling 0..9 and passed through the
classifier of `digit_classifier.py`:
- accuracy: the share classified as the class that was requested (does conditioning work?);
- FD: the Fréchet distance between Gaussians fitted to the classifier's penultimate features of the
  generated digits and of the real training digits (FID's formula, Heusel et al. 2017, with an MNIST
  classifier in place of Inception-v3). FD is biased upwards for small n: compare settings at equal n.
The reference row puts real held-out digits (up to 500, at most n) through the same pipeline: the
floor to compare with.

Another benchmark in this folder can `from digits_quality import evaluate, reference` (scripts run
from here have this folder on sys.path, which is also how `digit_classifier` is found).

Usage (run from the repository root):
    python benchmarks/digits_quality.py --model runs/digits --n 200 --steps 25
    python benchmarks/digits_quality.py --steps 10 25 50 --guidance 0 2 --json quality.json
    python benchmarks/digits_quality.py --sampler unipc --steps 10 --guidance 1 2 --guidance-interval 0.3,1.1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
from digit_classifier import (  # beside this file
    WEIGHTS,
    images_to_input,
    load_classifier,
    load_digits,
    predict,
    read_metadata,
    split,
    to_input,
)
from PIL import Image

from diffgen.checkpoint import LoadedModel, Task, with_precision
from diffgen.errors import DiffgenError
from diffgen.generate import generate_images, guidance_of
from diffgen.recipe import interval_text
from diffgen.models import open_model
from diffgen.samplers import Sampler

try:
    from scipy.linalg import sqrtm
except ImportError:  # pragma: no cover - scipy is optional
    sqrtm = None


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """tr((cov1 cov2)^½), via scipy's sqrtm or, without scipy, the eigenvalues of a symmetric matrix."""
    if sqrtm is not None:
        return float(np.real(np.trace(sqrtm(cov1 @ cov2))))
    # cov1 cov2 is similar to the symmetric PSD matrix s cov2 s with s = cov1^½, so their traces agree.
    w, v = np.linalg.eigh(cov1)
    s = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(s @ cov2 @ s), 0, None)).sum())


def frechet_distance(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """‖μ1 - μ2‖² + tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^½) of two (N, D) feature sets, in float64."""
    feats1, feats2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    mu1, mu2 = feats1.mean(0), feats2.mean(0)
    cov1, cov2 = np.cov(feats1, rowvar=False), np.cov(feats2, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt_product(cov1, cov2))


classifier = lru_cache(maxsize=1)(load_classifier)  # (model, config), loaded once per process


@lru_cache(maxsize=1)
def real_digits() -> dict[str, np.ndarray]:
    """Features of the real training digits, and predictions and features of the held-out ones."""
    model, cfg = classifier()
    pixels, labels = load_digits()
    train_idx, held_idx = split(labels, cfg)
    _, train_feats = predict(model, to_input(pixels[train_idx]))
    held_pred, held_feats = predict(model, to_input(pixels[held_idx]))
    return {"train_feats": train_feats.numpy(), "held_feats": held_feats.numpy(),
            "held_pred": held_pred.numpy(), "held_labels": labels[held_idx].numpy()}


def scores(pred: np.ndarray, labels: np.ndarray, feats: np.ndarray) -> dict:
    """Accuracy (overall and per class) and FD to the real training digits."""
    per_class = {str(c): float((pred[labels == c] == c).mean()) for c in np.unique(labels)}
    return {"n": len(labels), "accuracy": float((pred == labels).mean()), "per_class_accuracy": per_class,
            "fd": frechet_distance(feats, real_digits()["train_feats"])}


def interleave(labels: np.ndarray) -> np.ndarray:
    """An order of indices whose classes cycle (0, 1, ..., 9, 0, ...), as `generate_images` cycles them."""
    rank = np.zeros(len(labels), dtype=int)
    for c in np.unique(labels):
        rank[labels == c] = np.arange((labels == c).sum())
    return np.lexsort((labels, rank))


def reference(n: int) -> dict:
    """The first min(n, 500) real held-out digits, classes cycling, through the same pipeline: the floor.

    FD shrinks as n grows (the covariance estimate's bias), so the floor is computed at the same n.
    """
    real = real_digits()
    idx = interleave(real["held_labels"])[:n]
    return {"setting": "real held-out", **scores(real["held_pred"][idx], real["held_labels"][idx],
                                                   real["held_feats"][idx])}


def evaluate(
    loaded: LoadedModel, n: int, steps: int, sampler: Sampler = Sampler.DDIM, guidance: float | None = None,
    *, interval: str | None = None, seed: int = 0, batch_size: int = 50,
) -> dict:
    """Generate n digits (classes cycling) with one setting and score them."""
    def judge(images: list[Image.Image], labels: np.ndarray) -> dict:
        pred, feats = predict(classifier()[0], images_to_input(images))
        return scores(pred.numpy(), labels, feats.numpy())

    return evaluate_with(judge, loaded, n, steps, sampler, guidance, interval=interval, seed=seed,
                         batch_size=batch_size)


def evaluate_with(
    judge: Callable[[list[Image.Image], np.ndarray], dict], loaded: LoadedModel, n: int, steps: int,
    sampler: Sampler, guidance: float | None = None, *, interval: str | None = None, seed: int = 0,
    batch_size: int = 50,
) -> dict:
    """Generate n images (classes cycling) with one setting; the setting, judge(images, labels) and the seconds.

    guidance and interval (--guidance-interval's "LOW,HIGH" or "all") left at None are the model's own, as
    `diffgen generate` takes them."""
    guidance, interval = guidance_of(loaded.spec, guidance, interval)
    start = time.perf_counter()
    images = generate_images(loaded, n, seed=seed, steps=steps, sampler=sampler, guidance=guidance,
                             guidance_interval=interval, batch_size=batch_size)
    seconds = time.perf_counter() - start
    setting = f"{sampler.value} {steps} steps, w={guidance:g}"
    setting += f" in {interval_text(interval)}" if guidance and interval else ""
    return {"setting": setting, "sampler": sampler.value, "steps": steps, "guidance": guidance,
            "guidance_interval": interval, "seed": seed,
            **judge([g.image for g in images], np.array([g.label for g in images])), "sample_seconds": round(seconds, 1)}


def print_table(rows: list[dict]) -> None:
    print(f"{'setting':<26} {'n':>5} {'accuracy':>8} {'FD':>8} {'worst class':>12} {'seconds':>8}")
    for r in rows:
        worst = min(r["per_class_accuracy"].items(), key=lambda kv: kv[1])
        print(f"{r['setting']:<26} {r['n']:>5} {r['accuracy']:>8.3f} {r['fd']:>8.2f} "
              f"{f'{worst[0]} ({worst[1]:.2f})':>12} {r.get('sample_seconds', ''):>8}")


def add_setting_options(p: argparse.ArgumentParser) -> None:
    """The options that pick a sampling setting besides sampler and steps, which this and emoji_quality share."""
    p.add_argument("--guidance", type=float, nargs="+", default=[None],
                   help="Guidance weights w [default: the model's own, 0 for most].")
    p.add_argument("--guidance-interval", metavar="LOW,HIGH",
                   help="Noise levels σ to guide at, or all [default: the model's own, all for most].")
    p.add_argument("--seed", type=int, default=0, help="Run seed [default: 0].")
    p.add_argument("--threads", type=int, default=1, help="Torch CPU threads [default: 1].")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits", help="Bundled name, .safetensors file or run folder [default: digits].")
    p.add_argument("--n", type=int, default=1000, help="Digits per setting, classes cycling [default: 1000].")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50], help="Sampling steps [default: 10 25 50].")
    p.add_argument("--sampler", default="ddim", choices=[s.value for s in Sampler], help="Sampler [default: ddim].")
    add_setting_options(p)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                   help="As generate's --precision; auto is bf16 where the CPU computes it natively [default: fp32].")
    p.add_argument("--json", help="Also write the results to this JSON file.")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    try:
        loaded = with_precision(open_model(args.model, Task.GENERATE), args.precision)
    except DiffgenError as e:
        sys.exit(str(e))
    print(f"model: {loaded.path} ({loaded.spec.train_steps} training steps), {loaded.precision}")
    if args.n <= classifier()[1].feature_dim:
        print(f"note: with n = {args.n} <= {classifier()[1].feature_dim} features, FD is dominated by its bias")
    rows = [reference(args.n)]
    for steps in args.steps:
        for w in args.guidance:
            rows.append(evaluate(loaded, args.n, steps, Sampler(args.sampler), w, interval=args.guidance_interval,
                                 seed=args.seed))
    print_table(rows)
    if args.json:
        out = {"model": str(loaded.path), "train_steps": loaded.spec.train_steps, "precision": loaded.precision,
               "classifier_holdout_accuracy": float(read_metadata(WEIGHTS)["holdout_accuracy"]), "results": rows}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
