"""A small CNN that tells the group of a 32x32 emoji (smileys, flags, food, ...), to judge diffgen's emoji.

The digits have `digit_classifier.py`; this is the same for the emoji set of `tools/build_emoji.py
--no-skin-tones` (one folder per group, 72x72 RGBA). It is trained on that data minus a fixed held-out
10% of each group, at the resolution the emoji generator works in (32x32, RGBA, pixels in [-1, 1] as
diffgen's models see them), with flips, small shifts and colour changes. Its penultimate layer is the
feature space of the Fréchet distance in `emoji_quality.py`.

Weights are a safetensors file with the config, the group names and the held-out accuracy in its
metadata; no pickle. `python benchmarks/emoji_classifier.py train` (re)trains and saves it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import classifiers  # beside this file
import numpy as np
import torch
import torch.nn.functional as F
from classifiers import fit, predict, read_metadata  # predict: also for emoji_quality
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from diffgen.data import resize_short_side

DATA = Path(__file__).resolve().parent.parent / "data" / "emoji"
WEIGHTS = Path(__file__).resolve().parent / "emoji_classifier.safetensors"
SIZE = 32


@dataclass(frozen=True)
class ClassifierConfig:
    channels: tuple[int, ...] = (32, 64, 128)  # widths of the three stages; two convs each, then a 2x2 max-pool
    feature_dim: int = 256  # penultimate layer, the Fréchet-distance feature space (pre-ReLU)
    dropout: float = 0.3  # before the head
    holdout: float = 0.1  # share of each group held out for the accuracy check
    split_seed: int = 0
    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3  # peak of the one-cycle schedule
    weight_decay: float = 5e-4
    max_shift: int = 3  # augmentation: random translation of up to this many pixels
    seed: int = 0


class EmojiNet(nn.Module):
    def __init__(self, cfg: ClassifierConfig, num_classes: int):
        super().__init__()
        layers, width = [], 4
        for out in cfg.channels:
            layers += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
            width = out
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width * (SIZE >> len(cfg.channels)) ** 2, cfg.feature_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """(B, 4, 32, 32) in [-1, 1] -> (B, feature_dim), before the ReLU."""
        return self.fc(self.body(x).flatten(1))

    def classify(self, feats: Tensor) -> Tensor:
        return self.head(self.dropout(F.relu(feats)))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x))


def images_to_input(images: list[Image.Image]) -> Tensor:
    """Square PIL images -> (B, 4, 32, 32) in [-1, 1], resized as diffgen's data loader does.

    The channels are colour times alpha (premultiplied), then alpha: premultiplying makes every fully
    transparent pixel the same, whatever colour a generator left under it."""
    arrays = [np.asarray(resize_short_side(im.convert("RGBA"), SIZE), dtype=np.uint8) for im in images]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    return torch.cat([x[:, :3] * x[:, 3:], x[:, 3:]], dim=1) * 2 - 1


def load_emoji(root: Path = DATA) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """All emoji as classifier inputs (N, 4, 32, 32), labels (N,) and the group names (sorted folder names)."""
    groups = tuple(sorted(d.name for d in root.iterdir() if d.is_dir())) if root.is_dir() else ()
    files = [(f, c) for c, g in enumerate(groups) for f in sorted((root / g).glob("*.png"))]
    if not files:
        raise FileNotFoundError(f"{root}: no emoji; build them with tools/build_emoji.py --no-skin-tones")
    x = images_to_input([Image.open(f) for f, _ in files])
    return x, torch.tensor([c for _, c in files]), groups


def split(labels: Tensor, cfg: ClassifierConfig) -> tuple[Tensor, Tensor]:
    """Indices of the training and held-out emoji: the same share of each group held out."""
    return classifiers.split(labels, cfg.holdout, cfg.split_seed)


def augment(x: Tensor, cfg: ClassifierConfig, g: torch.Generator) -> Tensor:
    """Random mirror, whole-pixel shift (transparent fill) and a small brightness and contrast change of the colour."""
    b = len(x)
    x = torch.where(torch.rand(b, 1, 1, 1, generator=g) < 0.5, x.flip(-1), x)
    dx, dy = torch.randint(-cfg.max_shift, cfg.max_shift + 1, (2,), generator=g).tolist()
    x = F.pad(x + 1, (cfg.max_shift,) * 4)[..., cfg.max_shift + dy: cfg.max_shift + dy + SIZE,
                                           cfg.max_shift + dx: cfg.max_shift + dx + SIZE] - 1
    gain = 1 + 0.2 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)
    offset = 0.2 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)
    rgb = (x[:, :3] * gain + offset).clamp(-1, 1)
    return torch.cat([rgb, x[:, 3:]], dim=1)


def train(cfg: ClassifierConfig = ClassifierConfig(), path: Path = WEIGHTS, *, log=print) -> EmojiNet:
    """Train on the training split, report held-out accuracy, save to `path`."""
    torch.manual_seed(cfg.seed)
    inputs, labels, groups = load_emoji()
    train_idx, held_idx = split(labels, cfg)
    model = EmojiNet(cfg, len(groups))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    acc = fit(model, opt, (inputs[train_idx], labels[train_idx]), (inputs[held_idx], labels[held_idx]),
              epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, augment=lambda x, g: augment(x, cfg, g),
              g=torch.Generator().manual_seed(cfg.seed), log=log, log_every=5)
    metadata = {"config": json.dumps(asdict(cfg)), "groups": json.dumps(groups), "holdout_accuracy": f"{acc:.4f}",
                "train_images": str(len(train_idx))}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)
    return model


def load_classifier(path: Path = WEIGHTS) -> tuple[EmojiNet, ClassifierConfig, tuple[str, ...]]:
    """The saved classifier in eval mode and its group names, trained and saved first if the file is missing."""
    if not Path(path).is_file():
        train(path=path, log=lambda line: print(line, file=sys.stderr))
    meta = read_metadata(path)
    d = json.loads(meta["config"])
    cfg = ClassifierConfig(**{**d, "channels": tuple(d["channels"])})
    groups = tuple(json.loads(meta["groups"]))
    model = EmojiNet(cfg, len(groups))
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False), cfg, groups


if __name__ == "__main__":
    if sys.argv[1:] != ["train"]:
        sys.exit("usage: python benchmarks/emoji_classifier.py train")
    torch.set_num_threads(1)
    train()
    print(f"saved {WEIGHTS}")
