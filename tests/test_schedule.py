import pytest
import torch

from diffgen.schedule import Prediction, ScheduleKind, make_schedule, min_snr_weight, q_sample, snr, target, to_x0_eps


@pytest.mark.parametrize("kind", list(ScheduleKind))
@pytest.mark.parametrize("T", [10, 1000])
def test_alphas_cumprod_strictly_decreasing_in_unit_interval(kind, T):
    ab = make_schedule(kind, T).alphas_cumprod
    assert ab.shape == (T,)
    assert (ab > 0).all() and (ab < 1).all()
    assert (ab[1:] < ab[:-1]).all()


@pytest.mark.parametrize("kind", list(ScheduleKind))
def test_alphas_cumprod_is_product_of_one_minus_beta(kind):
    s = make_schedule(kind, 100)
    assert torch.allclose(s.alphas_cumprod[37], torch.prod(1 - s.betas[:38]))


def test_alpha_bar_of_clean_data_is_one():
    s = make_schedule("linear", 50)
    assert s.alpha_bar(-1) == 1.0
    assert s.alpha_bar(0) == s.alphas_cumprod[0].float()


def test_q_sample_has_the_right_mean_and_variance():
    g = torch.Generator().manual_seed(0)
    ab = torch.tensor(0.3)
    x0 = torch.full((200_000, 1, 1, 1), 0.8)
    xt = q_sample(ab.expand(len(x0)), x0, torch.randn(x0.shape, generator=g))
    assert xt.mean().item() == pytest.approx(0.3**0.5 * 0.8, abs=0.01)
    assert xt.var().item() == pytest.approx(0.7, rel=0.02)


@pytest.mark.parametrize("prediction", list(Prediction))
def test_prediction_conversions_round_trip(prediction):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    ab = torch.tensor([0.99, 0.5, 0.1, 0.001])
    xt = q_sample(ab, x0, eps)
    x0_hat, eps_hat = to_x0_eps(prediction, xt, target(prediction, x0, eps, ab), ab)
    assert torch.allclose(x0_hat, x0, atol=1e-3)
    assert torch.allclose(eps_hat, eps, atol=1e-3)


def test_snr_and_min_snr_weights():
    ab = torch.tensor([0.9, 0.5, 0.1])
    assert torch.allclose(snr(ab), torch.tensor([9.0, 1.0, 1 / 9]))
    # With eps-prediction, Min-SNR-5 weights min(snr, 5) / snr.
    assert torch.allclose(min_snr_weight(Prediction.EPS, ab, 5.0), torch.tensor([5 / 9, 1.0, 1.0]))
    assert torch.allclose(min_snr_weight(Prediction.X0, ab, 0.0), torch.ones(3))
