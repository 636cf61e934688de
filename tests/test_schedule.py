"""The schedule, the noise factor and the reverse steps against their formulas."""
import math

import pytest
import torch

from difformer.diffusion.schedule import Schedule, make_alphas_cumprod, vp_rescale
from difformer.diffusion.schedulers import DDIMScheduler, DDPMScheduler, make_sampler
from difformer.errors import DifformerError


def sqrt_abar(s: float) -> float:
    return 1.0 - math.sqrt(s + 1e-4)


@pytest.mark.parametrize("t", [0, 1, 500, 1000, 1500])
def test_sqrt_schedule_matches_formula_at_known_steps(t):
    T = 2000
    abar = make_alphas_cumprod("sqrt", T)
    # before the 0.999 clip the product of (1 - beta) telescopes to abar((t+1)/T) / abar(0)
    assert abar[t].item() == pytest.approx(sqrt_abar((t + 1) / T) / sqrt_abar(0.0), rel=1e-9)


def test_sqrt_schedule_is_decreasing_and_clipped_at_the_end():
    abar = make_alphas_cumprod("sqrt", 2000)
    assert abar.dtype == torch.float64
    assert torch.all(abar[1:] < abar[:-1])
    betas = 1 - abar[1:] / abar[:-1]
    assert betas.max().item() == pytest.approx(0.999)  # the last step hits the clip
    assert 0 < abar[-1].item() < 1e-3


def test_cosine_and_linear_schedules():
    cos = make_alphas_cumprod("cosine", 1000)
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    assert cos[100].item() == pytest.approx(f(101 / 1000) / f(0), rel=1e-9)
    lin = make_alphas_cumprod("linear", 1000)
    assert lin[0].item() == pytest.approx(1 - 1e-4)
    assert lin[1].item() == pytest.approx((1 - 1e-4) * (1 - (1e-4 + (0.02 - 1e-4) / 999)))


def test_noise_factor_scales_only_the_noise():
    s = Schedule("sqrt", 2000)
    z0, eps = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    t = torch.tensor([0, 700, 1999])
    a = s.alphas_cumprod[t].float()[:, None, None]
    for F in (1.0, 4.0):
        expected = a.sqrt() * z0 + F * (1 - a).sqrt() * eps
        assert torch.allclose(s.add_noise(z0, eps, t, F), expected, atol=1e-6)


def test_variance_preserving_noise_factor_keeps_the_snr_of_scaled_noise():
    abar = make_alphas_cumprod("sqrt", 2000)[[10, 500, 1500]]
    F = 4.0
    vp = vp_rescale(abar, F)
    snr_scaled = abar / (F ** 2 * (1 - abar))
    assert torch.allclose(vp / (1 - vp), snr_scaled, rtol=1e-10)
    s = Schedule("sqrt", 2000)
    z0, eps, t = torch.randn(3, 2, 4), torch.randn(3, 2, 4), torch.tensor([10, 500, 1500])
    out = s.add_noise(z0, eps, t, F, mode="vp")
    v = vp.float()[:, None, None]
    assert torch.allclose(out, v.sqrt() * z0 + (1 - v).sqrt() * eps, atol=1e-6)


def test_timesteps_are_evenly_spaced_from_T_minus_1_to_0():
    s = Schedule("sqrt", 2000)
    ts = s.timesteps_for(20)
    assert len(ts) == 20 and ts[0] == 1999 and ts[-1] == 0
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert s.timesteps_for(1) == [1999]
    ts = s.timesteps_for(20, min_t=0.1)  # a model trained with diffusion.min_t 0.1 never saw t < 200
    assert len(ts) == 20 and ts[0] == 1999 and ts[-1] == 200
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert s.timesteps_for(1800, min_t=0.1)[-1] == 200
    with pytest.raises(DifformerError, match=r"decode\.steps \(1801\) must be <= 1800, .* decode\.min_t T = 200"):
        s.timesteps_for(1801, min_t=0.1)


def test_min_t_moves_the_last_step_to_the_clean_end():
    s = Schedule("sqrt", 2000)
    z0, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    for sampler in (DDPMScheduler(s), DDIMScheduler(s)):
        sampler.set_timesteps(5, min_t=0.25)
        assert sampler.timesteps == [1999, 1624, 1250, 875, 500]
        assert not sampler.needs_noise(4)
        # decoding outputs the last step's z0_hat itself; a step from there (abar = 1) would agree with it
        zt = s.add_noise(z0, eps, torch.tensor([500, 500]))
        assert torch.allclose(sampler.step(4, z0, zt), z0, atol=1e-6)


def test_ddpm_step_is_the_posterior_of_one_step():
    s = Schedule("sqrt", 2000)
    sampler = DDPMScheduler(s)
    sampler.set_timesteps(2000)  # every step: t -> t - 1
    i = 1999 - 800  # the step at t = 800
    assert sampler.timesteps[i] == 800
    z0, zt = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    abar = s.alphas_cumprod
    t = 800
    beta = 1 - abar[t] / abar[t - 1]
    mean = (abar[t - 1].sqrt() * beta / (1 - abar[t])) * z0 + ((1 - beta).sqrt() * (1 - abar[t - 1]) / (1 - abar[t])) * zt
    var = beta * (1 - abar[t - 1]) / (1 - abar[t])
    noise = torch.randn(zt.shape)
    assert sampler.needs_noise(i)
    out = sampler.step(i, z0, zt, noise)
    assert torch.allclose(out, mean.float() + var.sqrt().float() * noise, atol=1e-5)


def test_strided_ddpm_moves_to_the_next_of_its_own_steps():
    s = Schedule("sqrt", 2000)
    sampler = DDPMScheduler(s)
    sampler.set_timesteps(5)
    t, prev = sampler.timesteps[1], sampler.timesteps[2]
    assert (t, prev) == (1499, 1000)
    abar_t, abar_s = s.alphas_cumprod[t], s.alphas_cumprod[prev]
    alpha = abar_t / abar_s
    z0, zt = torch.randn(3, 4), torch.randn(3, 4)
    mean = abar_s.sqrt() * (1 - alpha) / (1 - abar_t) * z0 + alpha.sqrt() * (1 - abar_s) / (1 - abar_t) * zt
    std = ((1 - alpha) * (1 - abar_s) / (1 - abar_t)).sqrt()
    noise = torch.randn(3, 4)
    assert torch.allclose(sampler.step(1, z0, zt, noise), (mean + std * noise).float(), atol=1e-5)


def test_last_step_returns_the_prediction_and_ddim_is_deterministic():
    s = Schedule("sqrt", 2000)
    z0, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    ddpm = DDPMScheduler(s)
    ddpm.set_timesteps(4)
    zt = s.add_noise(z0, eps, torch.tensor([900, 900]))
    assert not ddpm.needs_noise(3)  # t = 0 -> the clean end adds no noise
    assert torch.allclose(ddpm.step(3, z0, zt), z0, atol=1e-6)
    # with the true z0, DDIM re-noises it with the very same eps at the next step
    ddim = DDIMScheduler(s)
    ddim.set_timesteps(5)
    assert ddim.timesteps[2:4] == [1000, 500]
    zt = s.add_noise(z0, eps, torch.tensor([1000, 1000]))
    a = s.alphas_cumprod[500].item()
    assert not ddim.needs_noise(2)
    assert torch.allclose(ddim.step(2, z0, zt), math.sqrt(a) * z0 + math.sqrt(1 - a) * eps, atol=1e-4)


def test_early_stop_keeps_the_first_steps_and_coefficients_live_on_the_device():
    s = Schedule("sqrt", 2000)
    sampler = DDPMScheduler(s)
    sampler.set_timesteps(10, early_stop=4)
    full = s.timesteps_for(10)
    assert sampler.timesteps == full[:4]
    assert sampler.coef.shape == (10, 3) and sampler.coef.dtype == torch.float32
    assert torch.allclose(sampler.model_times, torch.tensor(full[:4]) * 0.5)
    assert sampler.needs_noise(3)  # step 4 of 10 is not the clean end: early stop just outputs z0_hat there
    assert type(make_sampler("ddim", s)) is DDIMScheduler and type(make_sampler("ddpm", s)) is DDPMScheduler
