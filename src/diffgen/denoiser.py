"""The bridge between a U-Net and the samplers.

`make_denoiser` turns a network that predicts ε, v or x0 into the function `denoise(x_t, t) -> x0`
that every sampler takes, with optional class labels, a conditioning image and classifier-free
guidance (Ho & Salimans 2022) done in one batched forward pass.
"""

from __future__ import annotations

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
    null_label: int | None = None,
    clip: float | None = None,
) -> Denoise:
    """Build `denoise(x_t, t) -> x0_pred`.

    guidance: w of classifier-free guidance; the output is (1 + w) · conditional - w · unconditional,
    so w = 0 is plain conditional sampling. It needs labels and the model's "no label" index.
    clip: clamp x0 to [-clip, clip] (images live in [-1, 1]); None leaves it alone.
    """
    guided = guidance != 0 and labels is not None
    if guided:
        # Conditional and unconditional halves share one forward pass.
        labels = torch.cat([labels, torch.full_like(labels, null_label)])
        cond = None if cond is None else torch.cat([cond, cond])

    @torch.inference_mode()
    def denoise(x: Tensor, t: int) -> Tensor:
        x_in = torch.cat([x, x]) if guided else x
        t_in = torch.full((len(x_in),), t, dtype=torch.long, device=x.device)
        out = model(x_in, t_in, labels, cond).float()
        if guided:
            out_cond, out_uncond = out.chunk(2)
            out = out_cond + guidance * (out_cond - out_uncond)
        # Guidance mixes outputs linearly, and at fixed t the x0 of an output is linear in it.
        x0, _ = to_x0_eps(prediction, x, out, schedule.alpha_bar(t).to(x.device))
        return x0 if clip is None else x0.clamp(-clip, clip)

    return denoise
