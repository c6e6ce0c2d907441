"""What a training step needs in memory, estimated before the run so that one that cannot fit is refused
with the estimate and the fix, rather than killed by the operating system later (memory.py says what is free)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from diffgen.checkpoint import ModelSpec
from diffgen.config import TrainConfig
from diffgen.errors import OptionError
from diffgen.memory import available_memory
from diffgen.objective import trains_in_bf16
from diffgen.runtime import Ranks
from diffgen.text import gib
from diffgen.unet import UNet, UNetConfig


@dataclass(frozen=True)
class MemoryNeed:
    activations: int  # bytes autograd keeps for the backward pass of one micro-batch, in fp32
    weights: int  # bytes of weights, gradients, AdamW's two moments and the EMA (fp32)


def training_memory(unet: UNetConfig, image_size: int, micro: int) -> MemoryNeed:
    """What one training step of this U-Net needs: it runs on the meta device (shapes only, no data, no
    memory), adding up the tensors autograd saves for the backward pass, which dominate the peak."""
    with torch.device("meta"):
        net = UNet(unet)
        x = torch.empty(micro, unet.in_channels, image_size, image_size)
        t = torch.zeros(micro, dtype=torch.long)
        labels = torch.zeros(micro, dtype=torch.long) if unet.num_classes else None
        side = image_size // unet.pixel_shuffle
        cond = torch.empty(micro, unet.cond_channels, side, side) if unet.cond_channels else None
    params = {id(p) for p in net.parameters()}
    saved: dict[int, Tensor] = {}  # by identity: a tensor saved by two operations is stored once

    def pack(tensor: Tensor) -> Tensor:
        if id(tensor) not in params:
            saved[id(tensor)] = tensor
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        net(x, t, labels, cond)
    activations = sum(tensor.numel() * tensor.element_size() for tensor in saved.values())
    return MemoryNeed(activations, 5 * 4 * sum(p.numel() for p in net.parameters()))


def check_memory(spec: ModelSpec, cfg: TrainConfig, device: torch.device, ranks: Ranks) -> None:
    """Refuse a run whose training step cannot fit in memory, with the estimate and the fix, rather than
    be killed for it later. The estimate errs high (it counts every saved tensor), so only clear misfits
    are refused."""
    available = available_memory(device)
    if available is None:
        return
    micro = cfg.batch_size // cfg.grad_accum // ranks.world
    need = training_memory(spec.unet, cfg.image_size, micro)
    activations = need.activations // (2 if trains_in_bf16(cfg.precision, device) else 1)
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1  # ranks on one machine
    total = activations + need.weights
    if sharing * total <= available:
        return
    fits = int((available / sharing - need.weights) // (activations / micro))
    fix = (f"at most {fits} image(s) per micro-batch fit: raise --grad-accum (a micro-batch is --batch-size / "
           "--grad-accum per process), or lower --batch-size or --image-size" if fits >= 1 else
           "not even one image of this size fits: lower --image-size or choose a smaller --preset")
    raise OptionError(
        f"--image-size {cfg.image_size} --batch-size {cfg.batch_size} --grad-accum {cfg.grad_accum}: training needs "
        f"about {gib(total)} ({gib(activations)} for a micro-batch of {micro}, {gib(need.weights)} for the weights "
        f"and optimizer){f' in each of {sharing} processes' if sharing > 1 else ''}, and {gib(available)} is "
        f"available on {device}; {fix}"
    )
