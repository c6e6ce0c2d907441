"""The denoiser bridge: classifier-free guidance, everywhere or only within an interval of noise levels."""

import math

import pytest
import torch
from torch import nn

from diffgen.denoiser import make_denoiser, noise_level
from diffgen.schedule import Prediction, make_schedule

NULL = 3  # the toy model's "no label" index


class LabelEcho(nn.Module):
    """Predicts ε = label + 1 everywhere, so that a guided output has a closed form; counts its batch sizes."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x, t, labels, cond):
        self.batches.append(len(x))
        return (labels.float() + 1).view(-1, 1, 1, 1).expand_as(x)


def x0_of(schedule, x, t, eps):
    ab = schedule.alpha_bar(t)
    return (x - (1 - ab).sqrt() * eps) / ab.sqrt()


def test_noise_level_is_the_noise_to_signal_ratio():
    assert noise_level(torch.tensor(0.5)) == pytest.approx(1.0)
    assert noise_level(torch.tensor(0.8)) == pytest.approx(0.5)
    assert noise_level(torch.tensor(1.0)) == 0.0 and noise_level(torch.tensor(0.0)) == math.inf


@pytest.mark.parametrize("w", [0.5, 2.0])
def test_guidance_is_applied_inside_its_interval_only_and_costs_a_pass_only_there(w):
    schedule = make_schedule("cosine", 1000)
    sigmas = {t: noise_level(schedule.alpha_bar(t)) for t in (100, 500, 900)}
    assert sigmas[100] < 0.3 < sigmas[500] < 1.1 < sigmas[900]  # one step below, in and above (0.3, 1.1)
    model, x, labels = LabelEcho(), torch.randn(2, 1, 4, 4), torch.tensor([0, 2])
    denoise = make_denoiser(model, schedule, Prediction.EPS, labels=labels, guidance=w, interval=(0.3, 1.1),
                            null_label=NULL)
    conditional = (labels.float() + 1).view(-1, 1, 1, 1)
    guided = conditional + w * (conditional - (NULL + 1))  # (1 + w) · cond - w · uncond
    for t in (100, 500, 900):
        eps = guided if t == 500 else conditional
        assert torch.allclose(denoise(x, t), x0_of(schedule, x, t, eps), atol=1e-5)
    assert model.batches == [2, 4, 2]  # conditional and unconditional halves in one pass, where it guides


def test_guidance_without_an_interval_is_applied_at_every_noise_level():
    schedule, model, x = make_schedule("linear", 1000), LabelEcho(), torch.zeros(1, 1, 2, 2)
    denoise = make_denoiser(model, schedule, Prediction.EPS, labels=torch.tensor([1]), guidance=1.0,
                            null_label=NULL)
    for t in (0, 999):
        assert torch.allclose(denoise(x, t), x0_of(schedule, x, t, torch.tensor(2.0 + (2.0 - 4.0))), atol=1e-5)
    assert model.batches == [2, 2]
