"""The copy check: how many generated images are near-copies of a training image.

A model that memorises its data draws its training images again. For each generated image we find its
nearest training image and count it as a copy when that distance is smaller than the data's own
threshold: the 5th percentile of the distance from a training image to its nearest *other* training
image. A model that draws new images like the data's would then score about 5% (a new image from the
same distribution is about as far from the set as a member is from the rest); a model that draws
training images back, with some sampling noise, scores near 100%. Above `WARN_SHARE` (half the
images) we warn of memorisation. Exact duplicates within the data are not counted as each other's
neighbours, so a set with many duplicates does not get a threshold of 0.

The distance is between cheap features (`features`), not raw pixels: each image is averaged down to at
most 16x16 and then centred and scaled to unit length, so that the distance is sqrt(2 - 2r) with r the
Pearson correlation of the two small images. Averaging down takes out the pixel noise that samplers
leave and makes the comparison about layout rather than texture; centring and scaling take out the
small shifts in brightness and contrast that an EMA model's samples often have, and put every data set's
distances on one scale, from 0 (the same image) to 2. It stays a pixel-space measure: a copy that is
shifted or mirrored is not found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from diffgen.data import Dataset, open_dataset, prepare
from diffgen.errors import ImageError, OptionError
from diffgen.images import open_image, pil_to_tensor, to_mode, to_model_range

FEATURE_SIDE = 16  # images are averaged down to at most this size
PERCENTILE = 0.05  # of the training set's nearest-neighbour distances: the copy threshold
THRESHOLD_QUERIES = 2000  # training images whose nearest neighbour sets the threshold (all, in a smaller set)
REFERENCE_LIMIT = 20000  # training images compared against, at most (evenly spread over the set)
DUPLICATE = 5e-3  # features closer than this are the same image (float32 rounding leaves ~1e-3)
WARN_SHARE = 0.5  # a share of copies above this signals memorisation
CHUNK = 1024  # queries per distance matrix, to bound memory


def features(images: Tensor) -> Tensor:
    """(B, C, H, W) uint8, or float in [-1, 1] -> (B, D): averaged down to at most FEATURE_SIDE, centred, unit length."""
    x = to_model_range(images) if images.dtype == torch.uint8 else images.float()
    side = min(FEATURE_SIDE, x.shape[-1], x.shape[-2])
    x = F.adaptive_avg_pool2d(x, side).flatten(1)  # (B, C, H, W) -> (B, C*side*side)
    x = x - x.mean(dim=1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)


def nearest(queries: Tensor, reference: Tensor, *, skip_self: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(distance, index) of each query's nearest reference row (unit-length features). `skip_self[i]` is the
    reference index of query i itself: it and its exact duplicates are passed over."""
    dists, indices = [], []
    for lo in range(0, len(queries), CHUNK):
        q = queries[lo : lo + CHUNK]
        d = (2 - 2 * q @ reference.T).clamp_min(0).sqrt()  # (q, N): |a - b| of unit vectors
        if skip_self is not None:
            d[torch.arange(len(q)), skip_self[lo : lo + CHUNK]] = 0  # itself counts as a duplicate below
            d = d.masked_fill(d < DUPLICATE, float("inf"))
        best = d.min(dim=1)
        dists.append(best.values)
        indices.append(best.indices)
    return torch.cat(dists), torch.cat(indices)


@dataclass(frozen=True)
class Reference:
    """The training images as the copy check compares them: their features, names and the copy threshold."""

    features: Tensor  # (N, D)
    names: tuple[str, ...]  # each image's file, relative to the data folder
    threshold: float  # closer than this is a copy


def reference_of(images: Tensor, names: tuple[str, ...], *, seed: int = 0) -> Reference:
    """The reference of training images (N, C, H, W), with the threshold from up to THRESHOLD_QUERIES of them."""
    feats = features(images)
    g = torch.Generator().manual_seed(seed)
    picked = torch.randperm(len(feats), generator=g)[:THRESHOLD_QUERIES]
    dist, _ = nearest(feats[picked], feats, skip_self=picked)
    dist = dist[torch.isfinite(dist)]  # an image with only duplicates has no other neighbour
    threshold = float(torch.quantile(dist, PERCENTILE)) if len(dist) else 0.0
    return Reference(feats, names, threshold)


def data_reference(data: Dataset) -> Reference:
    """The reference of a training set at its size: the decoded images, or up to REFERENCE_LIMIT files decoded now."""
    step = max(1, -(-len(data) // REFERENCE_LIMIT))
    images: dict[int, Tensor] = {}
    for i in range(0, len(data), step):
        try:
            images[i] = data.images[i] if data.images is not None else prepare(data.files[i], data.prep)
        except ImageError:  # gone or damaged since the data was checked: the trainer skips it too
            continue
    root = common_root(data.files)
    return reference_of(torch.stack(list(images.values())), tuple(str(data.files[i].relative_to(root)) for i in images))


def common_root(files: list[Path]) -> Path:
    root = files[0].parent
    while not all(f.is_relative_to(root) for f in files):
        root = root.parent
    return root


def folder_reference(folder: Path, *, size: int, channels: int) -> Reference:
    """The reference of a data folder at a model's size and channels, resized and centre-cropped as training does."""
    return data_reference(open_dataset(folder, size=size, channels=channels))


@dataclass(frozen=True)
class Copies:
    """The result of the copy check of some generated images."""

    copies: int  # images closer than the threshold to a training image
    images: int
    threshold: float
    closest: tuple[tuple[int, str, float], ...]  # (image index, training image's name, distance), closest first

    @property
    def share(self) -> float:
        return self.copies / max(1, self.images)

    @property
    def memorising(self) -> bool:
        return self.share > WARN_SHARE

    def record(self) -> dict:
        """What log.jsonl holds of it."""
        return {"copies": round(self.share, 4), "copies_threshold": round(self.threshold, 4)}


def check_copies(samples: Tensor, ref: Reference, *, show: int = 3) -> Copies:
    """How many of `samples` (B, C, H, W) are near-copies of the reference's images, and the `show` closest pairs."""
    dist, index = nearest(features(samples), ref.features)
    order = dist.argsort()[:show].tolist()
    closest = tuple((i, ref.names[int(index[i])], float(dist[i])) for i in order)
    return Copies(int((dist < ref.threshold).sum()), len(samples), ref.threshold, closest)


def check_files(files: list[Path], data_dir: Path, *, size: int, channels: int) -> Copies:
    """The copy check of image files a model wrote (read, never changed) against the training images in `data_dir`."""
    check_folder(data_dir)
    ref = folder_reference(data_dir, size=size, channels=channels)
    samples = torch.stack([pil_to_tensor(to_mode(open_image(f), channels)) for f in files])
    return check_copies(samples, ref)


def check_folder(data_dir: Path) -> None:
    """Refuse a --check-copies folder that is not there, before any image is made."""
    if not Path(data_dir).is_dir():
        raise OptionError(f"--check-copies {data_dir}: no such folder; pass the folder of the model's training images")
