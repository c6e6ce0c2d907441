"""What training minimises and how it steps: the loss, the learning rate and the EMA of the weights.

The loss is the DDPM objective (Ho et al. 2020) on the model's prediction target, weighted by Min-SNR-γ
(Hang et al. 2023), with a share of each batch at the pure noise where sampling starts. The learning rate
warms up linearly, then stays or decays on a cosine; sampling uses an EMA of the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffgen.checkpoint import ModelSpec
from diffgen.config import TrainConfig
from diffgen.enums import Prediction
from diffgen.schedule import min_snr_weight, q_sample, target


def trains_in_bf16(precision: str, device: torch.device) -> bool:
    """Whether the forward pass runs under bf16 autocast: by default on CUDA only. On a CPU with native bf16
    (AVX512-BF16) it trains about 1.2x faster, to the same PSNR in a fine-tune but slightly lower from
    scratch (docs/upscale.md), and elsewhere it is emulated and slower, so CPUs use it only when asked."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


@dataclass(frozen=True)
class DiffusionLoss:
    """The weighted denoising loss, holding its settings (as EDM's `loss_fn(net, images, labels)` does), so a
    training step passes it only the batch."""

    alphas_cumprod: Tensor  # ᾱ_t of the model's schedule
    prediction: Prediction
    min_snr_gamma: float = 5.0
    pure_noise_share: float = 0.0
    precision: str = "auto"

    @classmethod
    def of(cls, spec: ModelSpec, cfg: TrainConfig) -> DiffusionLoss:
        return cls(spec.make_schedule().alphas_cumprod.float(), spec.prediction, cfg.min_snr_gamma,
                   cfg.pure_noise_share, cfg.precision)

    def __call__(self, model, inputs, g: torch.Generator, s: slice, micro: int) -> Tensor:
        """The loss of this rank's slice s of a micro-batch of `micro` (x0, labels, cond), at random timesteps:
        uniform, but with a share of them at T-1, the pure noise where sampling starts. The random draws
        cover the whole micro-batch, in this order, so every rank and every resume draws the same."""
        x0, labels, cond = inputs
        T = len(self.alphas_cumprod)
        t = torch.randint(T, (micro,), generator=g)[s]
        if self.pure_noise_share:
            at_start = (torch.rand(micro, generator=g) < self.pure_noise_share)[s]
            t = t.masked_fill(at_start, T - 1)
        noise = torch.randn((micro, *x0.shape[1:]), generator=g)[s]
        device = next(model.parameters()).device
        x0, noise, t = x0.to(device), noise.to(device), t.to(device)
        ab = self.alphas_cumprod.to(device)[t]
        x_t = q_sample(ab, x0, noise)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=trains_in_bf16(self.precision, device)):
            out = model(x_t, t, None if labels is None else labels.to(device), None if cond is None else cond.to(device))
        per_sample = ((out.float() - target(self.prediction, x0, noise, ab)) ** 2).mean(dim=(1, 2, 3))
        return (min_snr_weight(self.prediction, ab, self.min_snr_gamma) * per_sample).mean()


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to cfg.lr, then constant or (lr_decay) a cosine down to zero at max_steps."""
    if step < cfg.warmup_steps or not cfg.lr_decay:
        return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    done = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
