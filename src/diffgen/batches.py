"""The batches a training step learns from: which images, cut how, flipped how, with which labels and inputs.

Global micro-batch k is a pure function of the seed and k (`data.batch_generator`, `data.DataOrder`), so
resuming needs only the step and every `torchrun` rank takes its slice of the same global batch. From
memory the crops are cut here; from disk DataLoader workers decode them ahead. `make_inputs` turns crops
into what the model sees: flips, label dropout, and for upscaling the 8-bit LR input and the residual.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import torch
from torch import Tensor

from diffgen.checkpoint import ModelSpec
from diffgen.config import TrainConfig
from diffgen.data import Dataset, DataOrder, FileImages, collate_crops, shrunk_crop
from diffgen.degrade import degrade, draw_chain
from diffgen.enums import Degrade, Task
from diffgen.errors import DataError
from diffgen.images import to_model_range
from diffgen.runtime import Ranks
from diffgen.seeds import batch_generator
from diffgen.transforms import downsample, quantize, random_dihedral, random_flip, upsample


class Batches:
    """Global micro-batches k = 0, 1, 2, ... of uint8 crops, with the randomness that goes with them.

    Each rank gets its contiguous slice of every global micro-batch. From memory the crops are cut
    here; from disk they are decoded ahead by DataLoader workers. Files that fail to decode then (deleted
    or damaged since the run started) are collected in `skipped` and reported once each to `on_skip`.
    """

    def __init__(self, data: Dataset, cfg: TrainConfig, ranks: Ranks, first_k: int,
                 on_skip: Callable[[str], None] | None = None):
        self.data, self.cfg, self.ranks, self.on_skip = data, cfg, ranks, on_skip
        self.micro = cfg.batch_size // cfg.grad_accum
        self.order = DataOrder(len(data), self.micro, cfg.seed)
        self.skipped: dict[str, None] = {}  # an ordered set of messages
        self.loader = None
        if data.images is None:
            self.loader = iter(torch.utils.data.DataLoader(
                FileImages(data), batch_sampler=self.crop_requests(first_k), num_workers=cfg.workers,
                persistent_workers=cfg.workers > 0, collate_fn=collate_crops,
            ))

    def my_slice(self) -> slice:
        per_rank = self.micro // self.ranks.world
        return slice(self.ranks.rank * per_rank, (self.ranks.rank + 1) * per_rank)

    def plan(self, k: int) -> tuple[list[int], list[tuple[float, float, float]], torch.Generator]:
        """This rank's image indices and crops (position, shrink factor) in micro-batch k, and the batch's
        generator."""
        g = batch_generator(self.cfg.seed, k)
        idx, u = self.order.indices(k), torch.rand(self.micro, 2, generator=g)  # crop positions: the first draw
        factor = torch.ones(self.micro, 1)
        if self.cfg.random_shrink < 1:  # log-uniform in [random_shrink, 1]; drawn only then, so runs without it
            factor = self.cfg.random_shrink ** torch.rand(self.micro, 1, generator=g)  # keep their stream
        s = self.my_slice()
        return idx[s].tolist(), [tuple(p) for p in torch.cat([u, factor], 1)[s].tolist()], g

    def crop_requests(self, k: int) -> Iterator[list[tuple[int, float, float, float]]]:
        """What the DataLoader workers should decode for micro-batches k, k+1, ... (this rank only)."""
        while True:
            idx, crops, _ = self.plan(k)
            yield [(i, *crop) for i, crop in zip(idx, crops)]
            k += 1

    def get(self, k: int) -> tuple[Tensor, Tensor, torch.Generator]:
        """(uint8 crops, labels) of this rank's share of micro-batch k, and the generator to continue with."""
        idx, crops, g = self.plan(k)
        if self.loader is not None:
            images = self.streamed()
        else:
            images = torch.stack([shrunk_crop(self.data.images[i], uy, ux, self.cfg.image_size, factor)
                                  for i, (uy, ux, factor) in zip(idx, crops)])
        return images, self.data.labels[idx], g

    def inputs(self, k: int, spec: ModelSpec) -> tuple[tuple, torch.Generator]:
        """What the model sees of this rank's share of micro-batch k (`make_inputs`), and the generator to go on with."""
        crops, labels, g = self.get(k)
        return make_inputs(crops, labels, g, spec, self.cfg, self.my_slice(), self.micro), g

    def streamed(self) -> Tensor:
        """The workers' next batch of crops, reporting the files that failed on the way."""
        images, failed = next(self.loader)
        for message in failed:
            if message not in self.skipped:
                self.skipped[message] = None
                if self.on_skip:
                    self.on_skip(f"skipping {message}")
        if images is None:
            raise DataError(f"{self.cfg.data_dir}: none of its images can be decoded any more (moved or deleted "
                            "during the run?); put them back and continue with --resume")
        return images


def aux_batches(data: Dataset, cfg: TrainConfig, batch_size: int) -> Batches:
    """Batches for a look at the data outside the training stream (no workers, one process)."""
    return Batches(data, replace(cfg, batch_size=batch_size, grad_accum=1, workers=0), Ranks(), 0)


def make_inputs(crops: Tensor, labels: Tensor, g: torch.Generator, spec: ModelSpec, cfg: TrainConfig, s: slice, micro: int):
    """(x0, labels, cond) for the model; the random draws cover the global micro-batch, then take slice s."""
    flip = (torch.rand(micro, generator=g) < 0.5)[s]
    drop = (torch.rand(micro, generator=g) < cfg.label_dropout)[s]
    hr = to_model_range(crops)
    if spec.task is Task.UPSCALE:
        # Texture statistics of photos are much the same turned or mirrored, so use all 8 variants. The LR
        # input is rounded to 8 bits like a real file's, and the residual is taken over its upsampling.
        if cfg.flip:
            hr = random_dihedral(hr, torch.randint(8, (micro,), generator=g)[s])
        if cfg.degrade is Degrade.REAL:  # drawn only then, so that clean runs keep their random stream
            lr_size = (hr.shape[-2] // spec.scale, hr.shape[-1] // spec.scale)
            lr = degrade(hr, spec.scale, draw_chain(micro, hr.shape[1], lr_size, g)[s])
        else:
            lr = quantize(downsample(hr, spec.scale))
        return (hr - upsample(lr, spec.scale)) * spec.residual_scale, None, lr
    if cfg.flip:
        hr = random_flip(hr, flip)
    if not spec.class_names:
        return hr, None, None
    return hr, labels.masked_fill(drop, spec.unet.num_classes), None


def residual_scale(batches: Batches, cfg: TrainConfig) -> float:
    """Scale the HR - bicubic(LR) residual to a standard deviation of 0.5, like images in [-1, 1]."""
    hr = to_model_range(torch.cat([batches.get(k)[0] for k in range(max(1, 64 // batches.micro))]))
    std = float((hr - upsample(downsample(hr, cfg.scale), cfg.scale)).std())
    return 0.5 / max(std, 1e-3)
