"""Noise schedules and forward noising with the noise factor F; the samplers that walk them backwards are
in schedulers.py.

Kept apart from the network (as diffusers does) so a sampler can be added without touching the model.
All schedule arithmetic is float64; tensors handed to the model are float32.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from difformer.config import check_steps, lowest_t


def _alpha_bar_fn(name: str) -> Callable[[float], float]:
    if name == "sqrt":  # Diffusion-LM: abar(s) = 1 - sqrt(s + 1e-4)
        return lambda s: 1.0 - math.sqrt(s + 1e-4)
    if name == "cosine":  # Nichol & Dhariwal
        return lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    raise ValueError(name)


def make_alphas_cumprod(name: str, timesteps: int) -> torch.Tensor:
    """abar_i for i = 0..T-1 (float64), through betas beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999)."""
    if name == "linear":  # DDPM's 1e-4..0.02 for T = 1000, rescaled to T
        scale = 1000.0 / timesteps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    else:
        f = _alpha_bar_fn(name)
        betas = torch.tensor([min(1.0 - f((i + 1) / timesteps) / f(i / timesteps), 0.999)
                              for i in range(timesteps)], dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def vp_rescale(alphas_cumprod: torch.Tensor, noise_factor: float) -> torch.Tensor:
    """Variance-preserving noise factor: abar' = abar / (F^2 - (F^2 - 1) abar), the SNR of F-scaled noise."""
    f2 = noise_factor ** 2
    return alphas_cumprod / (f2 - (f2 - 1.0) * alphas_cumprod)


class Schedule:
    """A T-step Gaussian schedule. `add_noise` is training's q(z_t | z0)."""

    def __init__(self, name: str = "sqrt", timesteps: int = 2000):
        self.timesteps = timesteps
        self.alphas_cumprod = make_alphas_cumprod(name, timesteps)  # (T,) float64
        self._abar_device = self.alphas_cumprod  # a copy on the training device, made once, not every step

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the network is fed for step t: t * 1000 / T."""
        return t.float() * (1000.0 / self.timesteps)

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """abar_t (B,) float64 on t's device."""
        if self._abar_device.device != t.device:
            self._abar_device = self.alphas_cumprod.to(t.device)
        return self._abar_device[t]

    def noise_level(self, t: torch.Tensor) -> torch.Tensor:
        """sqrt(1 - abar_t) (B,) float32: the noise's share of z_t, F aside."""
        return (1.0 - self.abar(t)).sqrt().float()

    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, noise_factor: float = 1.0,
                  mode: str = "scale") -> torch.Tensor:
        """z_t = sqrt(abar_t) z0 + F sqrt(1 - abar_t) eps ("scale"), or the VP schedule with the same SNR."""
        abar = self.abar(t)  # (B,)
        if mode == "vp":
            abar, noise_factor = vp_rescale(abar, noise_factor), 1.0
        a = abar.sqrt().float()[:, None, None]
        s = ((1.0 - abar).sqrt() * noise_factor).float()[:, None, None]
        return a * z0 + s * noise

    def timesteps_for(self, steps: int, min_t: float = 0.0) -> list[int]:
        """K evenly spaced steps from T-1 down to round(min_t T) (integer positions on the T-step schedule)."""
        check_steps(steps, self.timesteps, min_t)
        last = lowest_t(self.timesteps, min_t)
        ts = torch.linspace(self.timesteps - 1, last, steps, dtype=torch.float64).round().long()
        return ts.tolist()
