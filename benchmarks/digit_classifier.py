"""A small CNN that classifies 28x28 MNIST digits, used to judge diffgen's digit generator.

It is trained on the same data as the generator (`data/digits/<digit>/<n>.png`), minus a fixed
held-out 10% used to report its own accuracy. Its 128-dim penultimate layer, taken before the ReLU,
is the feature space of the Fréchet distance in `digits_quality.py` (the role Inception-v3 plays in
FID, Heusel et al. 2017).

Input normalisation: grey uint8 pixels p (white digit on black, as in MNIST) become p / 127.5 - 1,
i.e. [-1, 1] with the background at -1, the same range diffgen's models are trained in.

Weights are a safetensors file with the config and held-out accuracy in its metadata; no pickle.
Usage: `python benchmarks/digit_classifier.py train` (re)trains and saves it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

import classifiers  # beside this file
import numpy as np
import torch
import torch.nn.functional as F
from classifiers import fit, predict, read_metadata  # predict and read_metadata: also for digits_quality
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

DATA = Path(__file__).resolve().parent.parent / "data" / "digits"
WEIGHTS = Path(__file__).resolve().parent / "digit_classifier.safetensors"


@dataclass(frozen=True)
class ClassifierConfig:
    channels: tuple[int, ...] = (16, 32, 64)  # conv widths; each conv is followed by a 2x2 max-pool
    feature_dim: int = 128  # penultimate layer, the Fréchet-distance feature space (pre-ReLU)
    holdout: float = 0.1  # share of each class held out for the accuracy check
    split_seed: int = 0  # seed of the train/held-out split
    epochs: int = 12  # passes over the training split
    batch_size: int = 128  # digits per optimisation step
    lr: float = 2e-3  # peak learning rate of the one-cycle schedule
    max_shift: int = 2  # augmentation: random translation of up to this many pixels
    seed: int = 0  # seed of initialisation and augmentation


class DigitNet(nn.Module):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        widths = (1, *cfg.channels)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in pairwise(widths))
        side = 28 // 2 ** len(cfg.channels)  # 28 -> 14 -> 7 -> 3
        self.fc = nn.Linear(cfg.channels[-1] * side * side, cfg.feature_dim)
        self.head = nn.Linear(cfg.feature_dim, 10)

    def features(self, x: Tensor) -> Tensor:
        """(B, 1, 28, 28) in [-1, 1] -> (B, feature_dim), before the ReLU: no unit is stuck at zero."""
        for conv in self.convs:
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return self.fc(x.flatten(1))

    def classify(self, feats: Tensor) -> Tensor:
        return self.head(F.relu(feats))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x))


def to_input(pixels: Tensor) -> Tensor:
    """uint8 (B, 28, 28) or (B, 1, 28, 28) -> float (B, 1, 28, 28) in [-1, 1]."""
    return (pixels.float() / 127.5 - 1).reshape(-1, 1, 28, 28)


def images_to_input(images: list[Image.Image]) -> Tensor:
    """PIL images (as `generate_images` returns them) -> the classifier's input."""
    return to_input(torch.from_numpy(np.stack([np.asarray(im.convert("L"), dtype=np.uint8) for im in images])))


def load_digits(root: Path = DATA) -> tuple[Tensor, Tensor]:
    """All digits as uint8 (N, 28, 28) and labels (N,), in a fixed order."""
    files = sorted(root.glob("[0-9]/*.png"), key=lambda p: (int(p.parent.name), int(p.stem)))
    if not files:
        raise FileNotFoundError(f"{root}: no digits; build them with tools/build_digits.py")
    pixels = np.stack([np.asarray(Image.open(f).convert("L"), dtype=np.uint8) for f in files])
    return torch.from_numpy(pixels), torch.tensor([int(f.parent.name) for f in files])


def split(labels: Tensor, cfg: ClassifierConfig) -> tuple[Tensor, Tensor]:
    """Indices of the training and held-out digits: the same share of each class held out."""
    return classifiers.split(labels, cfg.holdout, cfg.split_seed)


def shift(x: Tensor, max_shift: int, g: torch.Generator) -> Tensor:
    """Translate each image by a random whole number of pixels, filling with background (-1)."""
    offsets = torch.randint(-max_shift, max_shift + 1, (len(x), 2), generator=g).float() * 2 / 28
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = offsets
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, mode="nearest", align_corners=False) - 1


def train(cfg: ClassifierConfig = ClassifierConfig(), path: Path = WEIGHTS, *, log=print) -> DigitNet:
    """Train on the training split, report held-out accuracy, save to `path`."""
    torch.manual_seed(cfg.seed)
    pixels, labels = load_digits()
    train_idx, held_idx = split(labels, cfg)
    model = DigitNet(cfg)
    acc = fit(model, torch.optim.Adam(model.parameters(), lr=cfg.lr), (to_input(pixels[train_idx]), labels[train_idx]),
              (to_input(pixels[held_idx]), labels[held_idx]), epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
              augment=lambda x, g: shift(x, cfg.max_shift, g), g=torch.Generator().manual_seed(cfg.seed), log=log)
    metadata = {"config": json.dumps(asdict(cfg)), "holdout_accuracy": f"{acc:.4f}", "train_images": str(len(train_idx))}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)
    return model


def load_classifier(path: Path = WEIGHTS) -> tuple[DigitNet, ClassifierConfig]:
    """The saved classifier in eval mode, trained and saved first if the file is missing."""
    if not Path(path).is_file():
        train(path=path, log=lambda line: print(line, file=sys.stderr))
    d = json.loads(read_metadata(path)["config"])
    cfg = ClassifierConfig(**{**d, "channels": tuple(d["channels"])})
    model = DigitNet(cfg)
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False), cfg


if __name__ == "__main__":
    if sys.argv[1:] != ["train"]:
        sys.exit("usage: python benchmarks/digit_classifier.py train")
    torch.set_num_threads(1)
    train()
    print(f"saved {WEIGHTS}")
