"""Samplers against closed-form facts: exact inversion and a Gaussian data distribution."""

import pytest
import torch

from diffgen.enums import Sampler, Spacing
from diffgen.errors import OptionError
from diffgen.samplers import (
    LAMBDA_MIN, SAMPLERS, SIGMA_MAX, ddim_step, log_snr_half, sample_ddim, sample_ddpm, sample_dpmpp_2m, sample_heun,
    sample_unipc, sampler_grid, solver_grid, timesteps, unipc_weights,
)
from diffgen.schedule import make_schedule

MU, STD = 0.5, 0.3  # the data distribution N(MU, STD²) per pixel


def gaussian_denoiser(schedule):
    """E[x0 | x_t] for Gaussian data: the exact denoiser."""

    def denoise(x, t):
        ab = schedule.alpha_bar(t)
        a = ab.sqrt()
        return MU + a * STD**2 / (ab * STD**2 + 1 - ab) * (x - a * MU)

    return denoise


@pytest.mark.parametrize("spacing", list(Spacing))
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_timesteps_descend_and_end_on_clean_data(spacing, kind):
    s = make_schedule(kind, 1000)
    for steps in (1, 5, 10, 50):
        ts = timesteps(s, steps, spacing)
        assert ts[-1] == -1 and 0 <= ts[-2] and ts[0] <= 999
        assert all(a > b for a, b in zip(ts, ts[1:]))
        assert len(ts) - 1 <= steps
    assert timesteps(s, 10, Spacing.UNIFORM)[:2] == [999, 888] and timesteps(s, 10)[-2] == 0
    assert timesteps(s, 10, Spacing.TRAILING)[:-1] == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert len(timesteps(s, 1000)) == 1001
    with pytest.raises(OptionError, match="--steps 1001: this model has 1000 timesteps"):
        timesteps(s, 1001)


def test_karras_spacing_follows_the_noise_levels():
    s = make_schedule("linear", 1000)
    ts = timesteps(s, 20, Spacing.KARRAS)
    sigma_first = ((1 - s.alpha_bar(ts[0])) / s.alpha_bar(ts[0])).sqrt()
    assert sigma_first == pytest.approx(SIGMA_MAX, rel=0.02)  # capped: the linear schedule reaches ~157
    assert ts[-2] == 0
    gaps = [a - b for a, b in zip(ts[:-1], ts[1:-1])]
    assert gaps[0] < gaps[len(gaps) // 2]  # EDM's ρ = 7 spends steps near both ends of σ


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_logsnr_spacing_takes_even_steps_in_lambda(kind):
    s = make_schedule(kind, 1000)
    ts = timesteps(s, 12, Spacing.LOGSNR)[:-1]
    lam = [float(log_snr_half(s.alpha_bar(t))) for t in ts]
    assert ts[-1] == 0 and lam[0] == pytest.approx(max(LAMBDA_MIN, float(log_snr_half(s.alpha_bar(999)))), abs=0.05)
    gaps = [b - a for a, b in zip(lam, lam[1:])]
    assert max(gaps) - min(gaps) < 0.25 * sum(gaps) / len(gaps)  # even, up to rounding to whole steps


def exact_ode_end(schedule, x, t):
    """Where the probability-flow ODE from x at timestep t ends for Gaussian data, in closed form.

    Along the ODE, (x_t - α_t MU) / sqrt(α_t² STD² + σ_t²) stays constant; at t = -1 that is (x0 - MU) / STD.
    """
    ab = schedule.alpha_bar(t).double()
    return MU + STD * (x.double() - ab.sqrt() * MU) / (ab * STD**2 + 1 - ab).sqrt()


@pytest.mark.parametrize("solver", [sample_dpmpp_2m, sample_unipc])
@pytest.mark.parametrize("spacing", list(Spacing))
def test_multistep_solvers_call_the_model_once_per_step_and_never_on_clean_data(solver, spacing):
    s = make_schedule("cosine", 1000)
    calls = []
    denoise = gaussian_denoiser(s)
    solver(lambda x, t: calls.append(t) or denoise(x, t), torch.zeros(2, 1, 1, 1), s, solver_grid(s, 10, spacing))
    assert len(calls) <= 10 and len(calls) >= 9  # Karras may merge two steps that round to one timestep
    assert calls == sorted(calls, reverse=True) and 0 not in calls[:-1]


def test_ddim_step_inverts_exactly():
    s = make_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    x_t, x0 = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    ab_t, ab_s = s.alpha_bar(700), s.alpha_bar(300)
    x_s = ddim_step(x_t, x0, ab_t, ab_s, 0.0, None)
    back = ddim_step(x_s, x0, ab_s, ab_t, 0.0, None)
    assert torch.allclose(back, x_t, atol=1e-5)


def test_ddim_eta_zero_is_deterministic():
    s = make_schedule("linear", 1000)
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = sample_ddim(gaussian_denoiser(s), x, s, timesteps(s, 20), generator=torch.Generator().manual_seed(1))
    b = sample_ddim(gaussian_denoiser(s), x, s, timesteps(s, 20), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


@pytest.mark.parametrize("sampler", [sample_ddpm, lambda *a, **k: sample_ddim(*a, eta=0.5, **k)])
def test_stochastic_samplers_reproduce_bit_for_bit_with_a_seed(sampler):
    s = make_schedule("linear", 100)
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    runs = [sampler(gaussian_denoiser(s), x, s, timesteps(s, 10), generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    other = sampler(gaussian_denoiser(s), x, s, timesteps(s, 10), generator=torch.Generator().manual_seed(8))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], other)


def test_per_sample_generators_make_samples_independent_of_the_batch():
    s = make_schedule("linear", 100)
    gens = lambda seeds: [torch.Generator().manual_seed(k) for k in seeds]
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    full = sample_ddpm(gaussian_denoiser(s), x, s, timesteps(s, 10), generator=gens([1, 2, 3]))
    prefix = sample_ddpm(gaussian_denoiser(s), x[:2], s, timesteps(s, 10), generator=gens([1, 2]))
    assert torch.allclose(full[:2], prefix)


@pytest.mark.parametrize(
    "run",
    [
        lambda d, x, s, g: sample_ddpm(d, x, s, timesteps(s, 1000), generator=g),  # all 1000 steps
        lambda d, x, s, g: sample_ddim(d, x, s, timesteps(s, 1000), generator=g),
        lambda d, x, s, g: sample_ddim(d, x, s, timesteps(s, 1000), eta=0.5, generator=g),
    ],
    ids=["ddpm-1000", "ddim-1000", "ddim-1000-eta0.5"],
)
def test_samplers_recover_a_gaussian(run):
    s = make_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 1, 1, 1, generator=g)
    out = run(gaussian_denoiser(s), x, s, g)
    assert out.mean().item() == pytest.approx(MU, abs=0.01)
    assert out.std().item() == pytest.approx(STD, rel=0.03)


def test_ddim_with_few_steps_is_the_exact_linear_map_for_gaussian_data():
    """For Gaussian data a DDIM step (t -> s) scales deviations from the mean by
    c = (α_s α_t STD² + σ_s σ_t) / (α_t² STD² + σ_t²); 50 steps shrink the spread by the product of c."""
    s = make_schedule("cosine", 1000)
    x = torch.randn(20_000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    out = sample_ddim(gaussian_denoiser(s), x, s, timesteps(s, 50))
    shrink = 1.0
    ts = timesteps(s, 50)
    for t, u in zip(ts[:-1], ts[1:]):
        ab_t, ab_u = s.alpha_bar(t).double(), s.alpha_bar(u).double()
        a_t, a_u, sig_t, sig_u = ab_t.sqrt(), ab_u.sqrt(), (1 - ab_t).sqrt(), (1 - ab_u).sqrt()
        shrink *= (a_u * a_t * STD**2 + sig_u * sig_t) / (ab_t * STD**2 + sig_t**2)
    assert out.std().item() == pytest.approx(float(shrink) * x.std().item(), rel=1e-4)
    assert out.std().item() < STD  # the discretisation error of few steps


@pytest.mark.parametrize("solver", [sample_dpmpp_2m, sample_heun, sample_unipc])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_second_order_solvers_beat_ddim_at_equal_steps(solver, kind):
    """On Gaussian data, 10 steps of a 2nd-order solver land closer to the exact ODE end point than DDIM."""
    s = make_schedule(kind, 1000)
    x = torch.randn(4_000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    exact = sample_ddim(gaussian_denoiser(s), x, s, timesteps(s, 1000))
    ddim_err = (sample_ddim(gaussian_denoiser(s), x, s, timesteps(s, 10)) - exact).abs().mean()
    name = next(name for name, fn in SAMPLERS.items() if fn is solver)
    err = (solver(gaussian_denoiser(s), x, s, sampler_grid(name, s, 10)) - exact).abs().mean()
    assert err < 0.6 * ddim_err
    out = solver(gaussian_denoiser(s), x, s, sampler_grid(name, s, 25))
    assert out.mean().item() == pytest.approx(MU, abs=0.01)
    assert out.std().item() == pytest.approx(STD, rel=0.04)


def test_each_sampler_walks_its_default_spacing_unless_given_another():
    s = make_schedule("cosine", 1000)
    assert sampler_grid(Sampler.DDIM, s, 10) == timesteps(s, 10, Spacing.UNIFORM)
    assert sampler_grid(Sampler.UNIPC, s, 10) == solver_grid(s, 10, Spacing.LOGSNR)
    assert sampler_grid(Sampler.DPMPP_2M, s, 10, Spacing.KARRAS) == solver_grid(s, 10, Spacing.KARRAS)
    with pytest.raises(OptionError, match="--steps 0: must be at least 1"):
        sampler_grid(Sampler.HEUN, s, 0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_dpmpp_is_more_accurate_with_even_steps_in_lambda_than_in_t(kind):
    s = make_schedule(kind, 1000)
    x = torch.randn(4_000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    exact = sample_ddim(gaussian_denoiser(s), x, s, timesteps(s, 1000))
    err = {sp: (sample_dpmpp_2m(gaussian_denoiser(s), x, s, solver_grid(s, 10, sp)) - exact).abs().mean() for sp in Spacing}
    assert err[Spacing.LOGSNR] < 0.5 * err[Spacing.UNIFORM]


def test_unipc_weights_become_adams_bashforth_and_adams_moulton_for_small_steps():
    """As h -> 0 the exponential integrator is a plain multistep method on x0: with D_k = (x0_k - x0) / r_k,
    3rd-order Adams-Bashforth is x0 + (4/3) D_1 - (5/6) D_2 (points at -1, -2 steps) and 3rd-order
    Adams-Moulton x0 + (1/12) D_1 + (5/12) D_new (points at -1 and +1)."""
    h = torch.tensor(1e-4, dtype=torch.float64)
    r = lambda *v: [torch.tensor(x, dtype=torch.float64) for x in v]
    assert unipc_weights(h, r(-1.0, -2.0)).tolist() == pytest.approx([4 / 3, -5 / 6], abs=1e-3)
    assert unipc_weights(h, r(-1.0, 1.0)).tolist() == pytest.approx([1 / 12, 5 / 12], abs=1e-3)
    assert unipc_weights(torch.tensor(2.0), r(-1.0)).tolist() == [0.5]  # one point: UniPC's choice at any h
    # Larger steps change the weights: the φ-functions of the exponential integrator, not a fixed formula.
    assert unipc_weights(torch.tensor(1.0, dtype=torch.float64), r(-1.0, 1.0))[1] > 5 / 12 + 0.05


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_unipc_converges_faster_than_dpmpp_2m_and_faster_with_higher_order(kind):
    """Errors against the closed-form ODE end point from the grid's first timestep (both start at λ_min)."""
    s = make_schedule(kind, 1000)
    x = torch.randn(4_000, 1, 1, 1, generator=torch.Generator().manual_seed(0))

    def err(solver, steps, **kw):
        exact = exact_ode_end(s, x, solver_grid(s, steps, Spacing.LOGSNR)[0])
        return (solver(gaussian_denoiser(s), x, s, solver_grid(s, steps, Spacing.LOGSNR), **kw).double() - exact).abs().mean().item()

    assert err(sample_unipc, 40) < 0.5 * err(sample_dpmpp_2m, 40)
    assert err(sample_unipc, 40, order=3) < 0.3 * err(sample_unipc, 40)
    assert err(sample_unipc, 40) < 0.3 * err(sample_unipc, 20)  # better than 2nd order in the step
    assert err(sample_unipc, 40, order=1) < 0.3 * err(sample_unipc, 20, order=1)  # UniC-1 makes DDIM 2nd order
