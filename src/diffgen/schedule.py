"""The noise schedule of a discrete-time diffusion model and the algebra around it.

The forward process q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I) is fixed by the betas
(Ho et al. 2020, "Denoising Diffusion Probabilistic Models"). The cosine schedule is that of
Nichol & Dhariwal 2021 ("Improved DDPM"); v-prediction is from Salimans & Ho 2022.

Code names: `alphas_cumprod` is ᾱ_t; `alpha` is sqrt(ᾱ_t) and `sigma` is sqrt(1 - ᾱ_t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffgen.enums import Prediction, ScheduleKind


@dataclass(frozen=True)
class Schedule:
    kind: ScheduleKind
    betas: Tensor  # (T,) float64, β_t for t = 0 .. T-1
    alphas_cumprod: Tensor  # (T,) float64, ᾱ_t, strictly decreasing in (0, 1)

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def alpha_bar(self, t: Tensor | int) -> Tensor:
        """ᾱ_t as float32; t = -1 means the clean data (ᾱ = 1)."""
        t = torch.as_tensor(t, dtype=torch.long)
        padded = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod])
        return padded[t + 1].float()


def make_schedule(kind: ScheduleKind | str = ScheduleKind.LINEAR, num_timesteps: int = 1000) -> Schedule:
    kind = ScheduleKind(kind)
    if kind is ScheduleKind.LINEAR:
        # DDPM's 1e-4 .. 0.02 for T = 1000, rescaled so other T give the same ᾱ curve.
        scale = 1000 / num_timesteps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
    else:
        offset = 0.008
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    betas = betas.clamp(max=0.999)
    return Schedule(kind=kind, betas=betas, alphas_cumprod=torch.cumprod(1 - betas, dim=0))


def expand_like(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample (B,) or scalar tensor to broadcast against x (B, C, H, W)."""
    return v.reshape(-1, *([1] * (x.ndim - 1))).to(x)


def q_sample(alpha_bar: Tensor, x0: Tensor, noise: Tensor) -> Tensor:
    """Draw x_t ~ q(x_t | x_0) given ᾱ_t per sample (DDPM eq. 4)."""
    a = expand_like(alpha_bar, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def snr(alpha_bar: Tensor) -> Tensor:
    """Signal-to-noise ratio ᾱ / (1 - ᾱ)."""
    return alpha_bar / (1 - alpha_bar)


def target(prediction: Prediction, x0: Tensor, noise: Tensor, alpha_bar: Tensor) -> Tensor:
    """What a network of this prediction type should output for (x0, ε)."""
    if prediction is Prediction.EPS:
        return noise
    if prediction is Prediction.X0:
        return x0
    a = expand_like(alpha_bar, x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0  # v = α ε - σ x0


def to_x0_eps(prediction: Prediction, x_t: Tensor, output: Tensor, alpha_bar: Tensor) -> tuple[Tensor, Tensor]:
    """Turn a network output into the pair (x0, ε) it implies, given x_t = α x0 + σ ε."""
    a = expand_like(alpha_bar, x_t)
    alpha, sigma = a.sqrt(), (1 - a).sqrt()
    if prediction is Prediction.EPS:
        return (x_t - sigma * output) / alpha, output
    if prediction is Prediction.X0:
        return output, (x_t - alpha * output) / sigma
    return alpha * x_t - sigma * output, sigma * x_t + alpha * output


def min_snr_weight(prediction: Prediction, alpha_bar: Tensor, gamma: float) -> Tensor:
    """Loss weight of Min-SNR-γ (Hang et al. 2023) for each prediction type; γ = 0 disables it."""
    s = snr(alpha_bar)
    if gamma <= 0:
        # Unweighted MSE on the network's own target.
        return torch.ones_like(s)
    clipped = s.clamp(max=gamma)
    if prediction is Prediction.EPS:
        return clipped / s
    if prediction is Prediction.V:
        return clipped / (s + 1)
    return clipped
