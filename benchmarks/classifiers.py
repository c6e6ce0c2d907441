"""What the digit and emoji classifiers share: the held-out split, batched prediction, the training loop and
the metadata of their weight files. A classifier here has `features(x)` (the Fréchet-distance features)
and `classify(features)` (logits).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn


def split(labels: Tensor, holdout: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices of the training and held-out images: the same share of each class held out, classes in order."""
    g = torch.Generator().manual_seed(seed)
    train, held = [], []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = round(len(idx) * holdout)
        held.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train), torch.cat(held)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """Predicted classes (B,) and penultimate features (B, D) of classifier inputs."""
    feats = torch.cat([model.features(x[i: i + batch_size]) for i in range(0, len(x), batch_size)])
    return model.classify(feats).argmax(1), feats


def fit(model: nn.Module, opt: torch.optim.Optimizer, data: tuple[Tensor, Tensor], held: tuple[Tensor, Tensor], *,
        epochs: int, batch_size: int, lr: float, augment: Callable[[Tensor, torch.Generator], Tensor],
        g: torch.Generator, log: Callable[[str], None], log_every: int = 1) -> float:
    """Train with cross-entropy under a one-cycle learning rate; the held-out accuracy after the last epoch."""
    (x, y), (held_x, held_y) = data, held
    steps = epochs * -(-len(x) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for batch in torch.randperm(len(x), generator=g).split(batch_size):
            loss = F.cross_entropy(model(augment(x[batch], g)), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
        model.eval()
        acc = (predict(model, held_x)[0] == held_y).float().mean().item()
        if (epoch + 1) % log_every == 0 or epoch + 1 == epochs:
            log(f"epoch {epoch + 1}/{epochs}: last-batch loss {loss.item():.4f}, held-out accuracy {acc:.4f}, "
                f"{time.perf_counter() - start:.0f}s")
    return acc


def read_metadata(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}
