"""Samplers: plain functions that run a denoiser from noise to data.

A denoiser is any callable `denoise(x_t, t) -> x0_pred` for an integer timestep t; see
`denoiser.py` for the one built from a U-Net. Every sampler walks a descending list of timesteps that
ends at -1 (the clean data, ᾱ = 1), one step for each consecutive pair (t, s).

- DDIM: Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12; with η = 1 its step is the
  DDPM ancestral step of Ho et al. 2020 on the (possibly respaced) chain, which is how `sample_ddpm` works.
- DPM-Solver++(2M): Lu et al. 2022, "DPM-Solver++", Algorithm 2 (multistep, second order, data prediction).
- Heun: Karras et al. 2022 ("EDM"), Algorithm 1 without churn, on the DDIM ODE in σ̃ = σ/α.
- UniPC: Zhao et al. 2023, "UniPC", the predictor-corrector with B(h) = e^h - 1 ("bh2") in data
  prediction; its corrector reuses the next step's model call, so it costs nothing.
- Spacing of the timesteps: uniform, trailing (Lin et al. 2024, "Common Diffusion Noise Schedules and
  Sample Steps are Flawed"), Karras (EDM eq. 5, ρ = 7) or uniform in λ (DPM-Solver's "logSNR" spacing),
  all computed from the schedule's own T steps.

Code names: ab = ᾱ, alpha = sqrt(ᾱ), sigma = sqrt(1 - ᾱ), lam = λ = log(alpha / sigma).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffgen.enums import Sampler, Spacing
from diffgen.errors import OptionError
from diffgen.events import Advance
from diffgen.schedule import Schedule

Denoise = Callable[[Tensor, int], Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None


def check_steps(steps: int, num_timesteps: int) -> None:
    """Refuse a step count the model's chain cannot take: the one check of --steps for every command."""
    if steps < 1:
        raise OptionError(f"--steps {steps}: must be at least 1")
    if steps > num_timesteps:
        raise OptionError(f"--steps {steps}: this model has {num_timesteps} timesteps; use at most that")


def timesteps(schedule: Schedule, steps: int, spacing: Spacing = Spacing.UNIFORM) -> list[int]:
    """`steps` descending timesteps of the schedule, followed by -1 (the clean data)."""
    T = schedule.num_timesteps
    check_steps(steps, T)
    if spacing is Spacing.UNIFORM:
        ts = torch.linspace(T - 1, 0, steps).round().long()
    elif spacing is Spacing.TRAILING:
        ts = (torch.arange(T, 0, -T / steps).round() - 1).long()[:steps]
    elif spacing is Spacing.KARRAS:
        ts = karras_timesteps(schedule, steps)
    else:
        ts = logsnr_timesteps(schedule, steps)
    return list(dict.fromkeys(ts.tolist())) + [-1]


SIGMA_MAX = 80.0  # EDM's largest noise level; beyond it x_t is pure noise for any practical purpose


def karras_timesteps(schedule: Schedule, steps: int, rho: float = 7.0) -> Tensor:
    """Timesteps whose noise levels σ̃ = σ/α are spaced as in EDM eq. 5, mapped to the nearest timestep.

    σ̃ is capped at SIGMA_MAX: a cosine schedule reaches σ̃ ~ 1e4, which would spend every step there.
    """
    log_sigmas = (((1 - schedule.alphas_cumprod) / schedule.alphas_cumprod).sqrt()).log()
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    hi = min(float(log_sigmas[-1].exp()), SIGMA_MAX) ** (1 / rho)
    lo = log_sigmas[0].exp() ** (1 / rho)
    targets = ((hi + ramp * (lo - hi)) ** rho).log()
    # log σ̃ grows with t: find, for each target, the nearest timestep by its log σ̃.
    return (log_sigmas[None, :] - targets[:, None]).abs().argmin(dim=1)


LAMBDA_MIN = -5.1  # DPM-Solver's clip of λ for cosine schedules; below it x_t is noise for any practical purpose


def logsnr_timesteps(schedule: Schedule, steps: int) -> Tensor:
    """Timesteps evenly spaced in λ = log(α/σ), from max(λ_T, LAMBDA_MIN) up to λ_0, mapped to the nearest step.

    Even steps in λ are what the exponential-integrator solvers (DPM-Solver++) assume. A cosine schedule's
    last 50 steps span λ from -2.6 to -9.9, where x_t is all but pure noise: below LAMBDA_MIN no step is spent.
    """
    lam = log_snr_half(schedule.alphas_cumprod.double())
    targets = torch.linspace(max(float(lam[-1]), LAMBDA_MIN), float(lam[0]), steps, dtype=torch.float64)
    return (lam[None, :] - targets[:, None]).abs().argmin(dim=1)


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


def eps_of(x: Tensor, x0: Tensor, ab: Tensor) -> Tensor:
    """The noise ε implied by x_t = sqrt(ᾱ) x0 + sqrt(1 - ᾱ) ε."""
    return (x - ab.sqrt() * x0) / (1 - ab).sqrt()


def ddim_step(x: Tensor, x0: Tensor, ab_t: Tensor, ab_s: Tensor, eta: float, noise: Tensor | None) -> Tensor:
    """One step from x_t to x_s (s < t) given the predicted x0 (DDIM eq. 12).

    Names: ab_t = ᾱ_t, ab_s = ᾱ_s, sigma = σ_t(η) of DDIM eq. 16.
    """
    eps = eps_of(x, x0, ab_t)
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
    ts: list[int],
    *,
    eta: float = 0.0,
    generator: Generators = None,
    callback: Advance | None = None,
) -> Tensor:
    """Sample with DDIM; η = 0 is deterministic given the starting noise x."""
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        x0 = denoise(x, t)
        noise = randn_like(x, generator) if eta > 0 and s >= 0 else None
        x = ddim_step(x, x0, schedule.alpha_bar(t), schedule.alpha_bar(s), eta, noise)
        if callback is not None:
            callback(i + 1, len(ts) - 1)
    return x


def sample_ddpm(
    denoise: Denoise,
    x: Tensor,
    schedule: Schedule,
    ts: list[int],
    *,
    generator: Generators = None,
    callback: Advance | None = None,
) -> Tensor:
    """Ancestral sampling from the posterior q(x_s | x_t, x0) with variance β̃ (DDPM eq. 6-7).

    With fewer steps than T this samples the respaced chain. DDIM with η = 1 is exactly this step.
    """
    return sample_ddim(denoise, x, schedule, ts, eta=1.0, generator=generator, callback=callback)


def solver_grid(schedule: Schedule, steps: int, spacing: Spacing) -> list[int]:
    """The timesteps an ODE solver with `steps` model calls walks.

    When the spacing reaches t = 0 (all but trailing do), the grid has steps + 1 points ending there and
    the solver stops at t = 0 without a call: x_0 is the data up to noise of σ/α ≈ 0.006 (cosine), so a
    call spent denoising it would be wasted. Otherwise the last call jumps to the clean data (-1).

    Multistep solvers take their last step at first order, as DPM-Solver and UniPC do for few steps
    ("lower order final"). Measured on digits at n = 2,000, UniPC's FD is then monotonic in the steps:
    2.65, 2.46, 2.04, 1.33 at 5, 6, 8, 10 steps, against 2.43, 3.25, 2.09, 1.32 with a second-order
    last step.
    """
    ts = timesteps(schedule, min(steps + 1, schedule.num_timesteps), spacing)
    return ts[:-1] if ts[-2] == 0 and len(ts) > 2 else timesteps(schedule, steps, spacing)


def sample_dpmpp_2m(
    denoise: Denoise,
    x: Tensor,
    schedule: Schedule,
    ts: list[int],
    *,
    generator: Generators = None,
    callback: Advance | None = None,
) -> Tensor:
    """DPM-Solver++(2M): a second-order multistep solver of the probability-flow ODE, one call per step.

    Its extrapolation assumes steps of similar size in λ, which logSNR spacing gives exactly; uniform
    spacing in t makes the last steps jump in λ and the extrapolation overshoot (see the tests).
    """
    x0_prev, h_prev = None, None
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        x0 = denoise(x, t)
        if s < 0:
            x = x0  # the last step lands on the data itself (first order, as λ_s = ∞)
        else:
            ab_t, ab_s = schedule.alpha_bar(t), schedule.alpha_bar(s)
            h = log_snr_half(ab_s) - log_snr_half(ab_t)
            d = x0
            if x0_prev is not None and s != ts[-1]:  # the last step is first order (see solver_grid)
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev  # DPM-Solver++ eq. for D_i
            # x_s = (σ_s/σ_t) x_t - α_s (e^{-h} - 1) D
            x = ((1 - ab_s) / (1 - ab_t)).sqrt() * x - ab_s.sqrt() * torch.expm1(-h) * d
            x0_prev, h_prev = x0, h
        if callback is not None:
            callback(i + 1, len(ts) - 1)
    return x / schedule.alpha_bar(ts[-1]).sqrt() if ts[-1] >= 0 else x


def log_snr_half(ab: Tensor) -> Tensor:
    """λ = log(α / σ) = ½ log SNR."""
    return 0.5 * (ab.log() - (1 - ab).log())


def sample_heun(
    denoise: Denoise,
    x: Tensor,
    schedule: Schedule,
    ts: list[int],
    *,
    generator: Generators = None,
    callback: Advance | None = None,
) -> Tensor:
    """Heun's second-order method on the DDIM ODE: two denoiser calls per step, one on the last.

    Steps that start above SIGMA_MAX stay first order: there the correction multiplies the ε error by σ̃.
    """
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        ab_t, ab_s = schedule.alpha_bar(t), schedule.alpha_bar(s)
        x0 = denoise(x, t)
        # In y = x/α and σ̃ = σ/α the ODE is dy/dσ̃ = ε; an Euler step there is a DDIM step.
        x_euler = ddim_step(x, x0, ab_t, ab_s, 0.0, None)
        if s >= 0 and (1 - ab_t) / ab_t <= SIGMA_MAX**2:
            eps_avg = 0.5 * (eps_of(x, x0, ab_t) + eps_of(x_euler, denoise(x_euler, s), ab_s))
            y_s = x / ab_t.sqrt() + (((1 - ab_s) / ab_s).sqrt() - ((1 - ab_t) / ab_t).sqrt()) * eps_avg
            x_euler = ab_s.sqrt() * y_s
        x = x_euler
        if callback is not None:
            callback(i + 1, len(ts) - 1)
    return x


def unipc_weights(h: Tensor, rks: Sequence[Tensor]) -> Tensor:
    """The weights a_k of the differences D_k in a UniPC step (its eq. 9-10, bh2).

    rks: the other points' offsets in λ, in units of the step h = λ_s - λ_t (earlier calls: rk < 0; the
    corrector's new call: 1). The a_k solve Σ_k a_k r_k^(i-1) = i! φ_{i+1}(-h) / φ_1(-h) for i = 1..K, the
    exponential integrator's order conditions; as h → 0 they become the Adams-Bashforth (predictor) and
    Adams-Moulton (corrector) weights. With one point UniPC takes the limit, 1/2, for any h.
    """
    if len(rks) == 1:
        return torch.full((1,), 0.5, dtype=torch.float64)
    hh = -h.double()
    rows, rhs = [], []
    phi, factorial = torch.expm1(hh) / hh - 1, 1.0  # phi = (-h) φ_{i+1}(-h), from i = 1 on
    for i in range(1, len(rks) + 1):
        rows.append(torch.stack([r.double() ** (i - 1) for r in rks]))
        rhs.append(phi * factorial / torch.expm1(hh))
        factorial *= i + 1
        phi = phi / hh - 1 / factorial
    return torch.linalg.solve(torch.stack(rows), torch.stack(rhs))


def unipc_terms(schedule: Schedule, s: int, h: Tensor, rks: Sequence[Tensor], diffs: Sequence[Tensor]) -> Tensor:
    """α_s (e^-h - 1) Σ_k a_k D_k: what a UniPC step ending at s takes off its first-order (DDIM) result."""
    weights = unipc_weights(h, rks).float()
    return schedule.alpha_bar(s).sqrt() * torch.expm1(-h).float() * sum(w * d for w, d in zip(weights, diffs))


def sample_unipc(
    denoise: Denoise,
    x: Tensor,
    schedule: Schedule,
    ts: list[int],
    *,
    order: int = 2,
    generator: Generators = None,
    callback: Advance | None = None,
) -> Tensor:
    """UniPC: a multistep predictor of the given order, one call per step, corrected one order higher.

    The corrector needs the model at the predicted point, which is the call the next step makes anyway,
    so it is free; the last step, which ends without a call, is not corrected.
    """
    if order < 1:
        raise ValueError(f"order must be at least 1, got {order}")
    lam = {t: log_snr_half(schedule.alpha_bar(t)).double() for t in ts if t >= 0}
    one = torch.ones((), dtype=torch.float64)
    calls: list[tuple[int, Tensor]] = []  # the last `order` model calls, (t, x0), newest last
    last = None  # the previous step, for its correction: (its first-order result, differences, rks, h)
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        x0 = denoise(x, t)
        if last is not None:
            base, diffs, rks, h = last
            x = base - unipc_terms(schedule, t, h, [*rks, one], [*diffs, x0 - calls[-1][1]])
        calls = [*calls, (t, x0)][-order:]
        if s < 0:
            x = x0  # the last step lands on the data itself
        else:
            h = lam[s] - lam[t]
            base = ddim_step(x, x0, schedule.alpha_bar(t), schedule.alpha_bar(s), 0.0, None)  # first order
            earlier = calls[:-1] if s != ts[-1] else []  # the last step is first order (see solver_grid)
            rks = [(lam[tk] - lam[t]) / h for tk, _ in earlier]
            diffs = [(xk - x0) / r.float() for (_, xk), r in zip(earlier, rks)]
            x = base - unipc_terms(schedule, s, h, rks, diffs) if rks else base
            last = (base, diffs, rks, h)
        if callback is not None:
            callback(i + 1, len(ts) - 1)
    return x / schedule.alpha_bar(ts[-1]).sqrt() if ts[-1] >= 0 else x


SAMPLERS = {
    Sampler.DDPM: sample_ddpm,
    Sampler.DDIM: sample_ddim,
    Sampler.DPMPP_2M: sample_dpmpp_2m,
    Sampler.HEUN: sample_heun,
    Sampler.UNIPC: sample_unipc,
}


# The spacing each sampler walks unless told otherwise: one table, so no sampler picks its own.
DEFAULT_SPACING = {
    Sampler.DDPM: Spacing.UNIFORM,
    Sampler.DDIM: Spacing.UNIFORM,
    Sampler.DPMPP_2M: Spacing.LOGSNR,
    Sampler.HEUN: Spacing.UNIFORM,
    Sampler.UNIPC: Spacing.LOGSNR,
}
MULTISTEP = {Sampler.DPMPP_2M, Sampler.UNIPC}  # ODE solvers that stop at t = 0 without a call (solver_grid)


def sampler_grid(sampler: Sampler, schedule: Schedule, steps: int, spacing: Spacing | None = None) -> list[int]:
    """The timesteps `sampler` walks with `steps` model calls: in its default spacing unless one is given."""
    sampler = Sampler(sampler)
    spacing = DEFAULT_SPACING[sampler] if spacing is None else Spacing(spacing)
    return (solver_grid if sampler in MULTISTEP else timesteps)(schedule, steps, spacing)


def sample(
    sampler: Sampler,
    denoise: Denoise,
    x: Tensor,
    schedule: Schedule,
    steps: int,
    *,
    spacing: Spacing | None = None,
    generator: Generators = None,
    callback: Advance | None = None,
) -> Tensor:
    """Run the named sampler over its grid (`sampler_grid`)."""
    ts = sampler_grid(sampler, schedule, steps, spacing)
    return SAMPLERS[Sampler(sampler)](denoise, x, schedule, ts, generator=generator, callback=callback)
