"""How good are an emoji model's samples? Group accuracy and Fréchet distance under the emoji-group classifier.

The emoji counterpart of `digits_quality.py`: n emoji are generated with groups cycling and passed through
`emoji_classifier.py`'s network. Accuracy is the share classified as the group that was asked for; FD is
the Fréchet distance between the classifier features of the samples and of the real training emoji
(the classifier's training split). The reference row puts the real held-out emoji through the same
pipeline; there are only about 190 of them, so its FD is not comparable with an FD of 1,000 samples (FD
grows as n shrinks): compare models with each other at equal n.

    python benchmarks/emoji_quality.py --model emoji --n 1000
"""

from __future__ import annotations

import argparse
import sys
from functools import lru_cache

import numpy as np
import torch
from digits_quality import add_setting_options, evaluate_with, frechet_distance, print_table  # beside this file
from emoji_classifier import images_to_input, load_classifier, load_emoji, predict, split
from PIL import Image

from diffgen.checkpoint import LoadedModel, Task
from diffgen.errors import DiffgenError
from diffgen.models import open_model
from diffgen.samplers import Sampler

classifier = lru_cache(maxsize=1)(load_classifier)  # (model, config, groups), loaded once per process


@lru_cache(maxsize=1)
def real_emoji() -> dict[str, np.ndarray]:
    """Features of the real training emoji, and predictions, features and labels of the held-out ones."""
    model, cfg, _ = classifier()
    inputs, labels, _ = load_emoji()
    train_idx, held_idx = split(labels, cfg)
    _, train_feats = predict(model, inputs[train_idx])
    held_pred, held_feats = predict(model, inputs[held_idx])
    return {"train_feats": train_feats.numpy(), "held_feats": held_feats.numpy(), "held_pred": held_pred.numpy(),
            "held_labels": labels[held_idx].numpy()}


def scores(pred: np.ndarray, labels: np.ndarray, feats: np.ndarray) -> dict:
    groups = classifier()[2]
    per_class = {groups[c]: float((pred[labels == c] == c).mean()) for c in np.unique(labels)}
    return {"n": len(labels), "accuracy": float((pred == labels).mean()), "per_class_accuracy": per_class,
            "fd": frechet_distance(feats, real_emoji()["train_feats"])}


def reference(n: int) -> dict:
    """The real held-out emoji (all of them, up to n) through the same pipeline."""
    real = real_emoji()
    k = min(n, len(real["held_labels"]))
    return {"setting": "real held-out", **scores(real["held_pred"][:k], real["held_labels"][:k], real["held_feats"][:k])}


def evaluate(loaded: LoadedModel, n: int, steps: int, sampler: Sampler = Sampler.UNIPC,
             guidance: float | None = None, *, interval: str | None = None, seed: int = 0, batch_size: int = 50) -> dict:
    """Generate n emoji (groups cycling) with one setting and score them."""
    groups = classifier()[2]
    if tuple(loaded.spec.class_names) != groups:
        raise ValueError(f"the model's classes {loaded.spec.class_names} are not the classifier's groups {groups}")

    def judge(images: list[Image.Image], labels: np.ndarray) -> dict:
        pred, feats = predict(classifier()[0], images_to_input(images))
        return scores(pred.numpy(), labels, feats.numpy())

    return evaluate_with(judge, loaded, n, steps, sampler, guidance, interval=interval, seed=seed,
                         batch_size=batch_size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="emoji", help="Bundled name, .safetensors file or run folder [default: emoji].")
    p.add_argument("--n", type=int, default=1000, help="Emoji per setting, groups cycling [default: 1000].")
    p.add_argument("--steps", type=int, nargs="+", default=[10], help="Sampling steps [default: 10].")
    p.add_argument("--sampler", default=Sampler.UNIPC.value, choices=[s.value for s in Sampler])
    add_setting_options(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    try:
        loaded = open_model(args.model, Task.GENERATE)
    except DiffgenError as e:
        sys.exit(str(e))
    print(f"model: {loaded.path} ({loaded.spec.train_steps} training steps)")
    rows = [reference(args.n)]
    for steps in args.steps:
        for w in args.guidance:
            rows.append(evaluate(loaded, args.n, steps, Sampler(args.sampler), w, interval=args.guidance_interval,
                                 seed=args.seed))
    print_table(rows)


if __name__ == "__main__":
    main()
