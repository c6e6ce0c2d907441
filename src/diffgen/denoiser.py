"""The bridge between a U-Net and the samplers.

`make_denoiser` turns a network that predicts ε, v or x0 into the function `denoise(x_t, t) -> x0`
that every sampler takes, with optional class labels, a conditioning image and classifier-free
guidance (Ho & Salimans 2022) done in one batched forward pass, optionally only within an interval of noise
levels (Kynkäänniemi et al. 2024: guidance at high noise costs variety, at low noise it does little).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from diffgen.samplers import Denoise
from diffgen.schedule import Prediction, Schedule, to_x0_eps


def make_denoiser(
    model: nn.Module,
    schedule: Schedule,
    prediction: Prediction,
    *,
    labels: Tensor | None = None,
    cond: Tensor | None = None,
    guidance: float = 0.0,
    interval: tuple[float, float] | None = None,
    null_label: int | None = None,
    clip: float | None = None,
) -> Denoise:
    """Build `denoise(x_t, t) -> x0_pred`.

    guidance: w of classifier-free guidance; the output is (1 + w) · conditional - w · unconditional,
    so w = 0 is plain conditional sampling. It needs labels and the model's "no label" index.
    interval: (low, high): guide only at timesteps whose noise level σ_t = √((1 - ᾱ_t) / ᾱ_t) lies in
    [low, high]; elsewhere one conditional pass. None guides at every step.
    clip: clamp x0 to [-clip, clip] (images live in [-1, 1]); None leaves it alone.
    """
    guided = guidance != 0 and labels is not None
    low, high = interval or (0.0, math.inf)
    # Where it guides, the conditional and unconditional halves share one forward pass.
    both_labels = torch.cat([labels, torch.full_like(labels, null_label)]) if guided else None
    both_cond = torch.cat([cond, cond]) if guided and cond is not None else None

    @torch.inference_mode()
    def denoise(x: Tensor, t: int) -> Tensor:
        alpha_bar = schedule.alpha_bar(t)
        if guided and low <= noise_level(alpha_bar) <= high:
            t_in = torch.full((2 * len(x),), t, dtype=torch.long, device=x.device)
            out_cond, out_uncond = model(torch.cat([x, x]), t_in, both_labels, both_cond).float().chunk(2)
            out = out_cond + guidance * (out_cond - out_uncond)
        else:
            t_in = torch.full((len(x),), t, dtype=torch.long, device=x.device)
            out = model(x, t_in, labels, cond).float()
        # Guidance mixes outputs linearly, and at fixed t the x0 of an output is linear in it.
        x0, _ = to_x0_eps(prediction, x, out, alpha_bar.to(x.device))
        return x0 if clip is None else x0.clamp(-clip, clip)

    return denoise


def noise_level(alpha_bar: Tensor) -> float:
    """σ = √((1 - ᾱ) / ᾱ), the noise-to-signal ratio of x_t: ∞ at pure noise, 0 at clean data."""
    alpha_bar = float(alpha_bar)
    return math.inf if alpha_bar == 0 else math.sqrt((1 - alpha_bar) / alpha_bar)
