"""Samplers: plain functions that run a denoiser from noise to data.

A denoiser is any callable `denoise(x_t, t) -> x0_pred` for an integer timestep t; see
`denoiser.py` for the one built from a U-Net. Every sampler walks a descending list of timesteps that
ends at -1 (the clean data, ᾱ = 1), one step for each consecutive pair (t, s).

DDIM is Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12; with η = 1 its step is the
DDPM ancestral step of Ho et al. 2020 on the (possibly respaced) chain, which is how `sample_ddpm` works.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum

import torch
from torch import Tensor

from diffgen.schedule import Schedule

Denoise = Callable[[Tensor, int], Tensor]
Callback = Callable[[int, int], None]  # (steps done, total steps)
Generators = torch.Generator | Sequence[torch.Generator] | None


class Sampler(str, Enum):
    DDPM = "ddpm"
    DDIM = "ddim"


def timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` evenly spaced timesteps from T-1 down to 0, followed by -1 (the clean data)."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be between 1 and {num_timesteps}, got {steps}")
    ts = torch.linspace(num_timesteps - 1, 0, steps).round().long().tolist()
    return ts + [-1]


def randn_like(x: Tensor, generator: Generators) -> Tensor:
    """Standard normal noise shaped like x; with one generator per sample, sample i uses generator i."""
    # Noise is drawn on the CPU, so a seed gives the same images on every device.
    if generator is None or isinstance(generator, torch.Generator):
        noise = torch.randn(x.shape, generator=generator)
    elif len(generator) != len(x):
        raise ValueError(f"got {len(generator)} generators for a batch of {len(x)}")
    else:
        noise = torch.cat([torch.randn((1, *x.shape[1:]), generator=g) for g in generator])
    return noise.to(x.device, x.dtype)


def ddim_step(x: Tensor, x0: Tensor, ab_t: Tensor, ab_s: Tensor, eta: float, noise: Tensor | None) -> Tensor:
    """One step from x_t to x_s (s < t) given the predicted x0 (DDIM eq. 12).

    Names: ab_t = ᾱ_t, ab_s = ᾱ_s, sigma = σ_t(η) of DDIM eq. 16.
    """
    eps = (x - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
    if eta == 0:
        # Deterministic, and valid for s > t too: then it is the DDIM inversion step.
        return ab_s.sqrt() * x0 + (1 - ab_s).sqrt() * eps
    sigma = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).sqrt()
    x_s = ab_s.sqrt() * x0 + (1 - ab_s - sigma**2).clamp(min=0).sqrt() * eps
    return x_s if noise is None else x_s + sigma * noise


def sample_ddim(
    denoise: Denoise,
    x: Tensor,
    schedule: Schedule,
    steps: int,
    *,
    eta: float = 0.0,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """Sample with DDIM; η = 0 is deterministic given the starting noise x."""
    ts = timesteps(schedule.num_timesteps, steps)
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        x0 = denoise(x, t)
        noise = randn_like(x, generator) if eta > 0 and s >= 0 else None
        x = ddim_step(x, x0, schedule.alpha_bar(t), schedule.alpha_bar(s), eta, noise)
        if callback is not None:
            callback(i + 1, steps)
    return x


def sample_ddpm(
    denoise: Denoise,
    x: Tensor,
    schedule: Schedule,
    steps: int | None = None,
    *,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """Ancestral sampling from the posterior q(x_s | x_t, x0) with variance β̃ (DDPM eq. 6-7).

    With fewer steps than T this samples the respaced chain. DDIM with η = 1 is exactly this step.
    """
    steps = schedule.num_timesteps if steps is None else steps
    return sample_ddim(denoise, x, schedule, steps, eta=1.0, generator=generator, callback=callback)


def sample(
    sampler: Sampler,
    denoise: Denoise,
    x: Tensor,
    schedule: Schedule,
    steps: int,
    *,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """Run the named sampler."""
    fn = {Sampler.DDPM: sample_ddpm, Sampler.DDIM: sample_ddim}[Sampler(sampler)]
    return fn(denoise, x, schedule, steps, generator=generator, callback=callback)
