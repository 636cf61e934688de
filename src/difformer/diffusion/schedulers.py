"""Samplers in the diffusers style: `set_timesteps(steps, early_stop)`, then `step(i, z0_hat, z_t, noise)`.

A scheduler walks K evenly strided steps of the T-step `Schedule` and moves z_t to the next step given the
network's z0 prediction. Every step is z_prev = a_i z0_hat + b_i z_t + c_i noise; the coefficients are
computed once in float64 by `set_timesteps` and kept on the decoding device as float32, so a step makes no
host-device copy or synchronisation. A new sampler is a new `coefficients`; the loop and the model stay.
"""
from __future__ import annotations

import torch

from difformer.diffusion.schedule import Schedule


class Scheduler:
    """K strided steps t_0 = T-1 > ... > t_{K-1} = min_t T (0 by default) of `schedule`; then the clean end."""

    stochastic = False  # whether step() takes fresh noise

    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    def set_timesteps(self, steps: int, early_stop: int = 0, device: torch.device | str = "cpu",
                      min_t: float = 0.0) -> None:
        """Prepare `steps` strided steps from T-1 down to min_t T; with `early_stop` k, the network runs k
        times and the k-th z0 prediction is the output. Sets `timesteps` (ints), `model_times` and the step
        coefficients (the last step moves to the clean end, abar = 1)."""
        ts = self.schedule.timesteps_for(steps, min_t)
        self.timesteps = ts[: early_stop or steps]
        abar = self.schedule.alphas_cumprod
        abar_t = abar[ts]
        abar_s = torch.cat([abar[ts[1:]], abar.new_ones(1)])  # the step each one moves to; 1 at the end
        a, b, c = self.coefficients(abar_t, abar_s)
        self.coef = torch.stack([a, b, c], 1).float().to(device)  # (K, 3)
        self.model_times = self.schedule.model_time(torch.tensor(self.timesteps)).to(device)

    def coefficients(self, abar_t: torch.Tensor, abar_s: torch.Tensor):
        """(a, b, c), each (K,) float64, of z_prev = a z0_hat + b z_t + c noise."""
        raise NotImplementedError

    def step(self, i: int, z0_hat: torch.Tensor, z_t: torch.Tensor, noise: torch.Tensor | None = None):
        """z at the step after the i-th, from the i-th step's z_t and its prediction z0_hat."""
        a, b, c = self.coef[i]
        z = a * z0_hat + b * z_t
        return z + c * noise if noise is not None else z

    def needs_noise(self, i: int) -> bool:
        """Whether step i adds noise (the last step of the full schedule never does)."""
        return self.stochastic and i + 1 < self.coef.shape[0]


class DDPMScheduler(Scheduler):
    """Ancestral sampling: the posterior q(z_s | z_t, z0_hat) of the strided step, fixed-small variance."""

    stochastic = True

    def coefficients(self, abar_t, abar_s):
        alpha = abar_t / abar_s  # the strided step's alpha
        beta = 1.0 - alpha
        a = abar_s.sqrt() * beta / (1.0 - abar_t)
        b = alpha.sqrt() * (1.0 - abar_s) / (1.0 - abar_t)
        return a, b, (beta * (1.0 - abar_s) / (1.0 - abar_t)).sqrt()


class DDIMScheduler(Scheduler):
    """DDIM with eta = 0: z0_hat re-noised deterministically with the noise that z_t implies."""

    def coefficients(self, abar_t, abar_s):
        b = ((1.0 - abar_s) / (1.0 - abar_t)).sqrt()  # of eps = (z_t - sqrt(abar_t) z0_hat) / sqrt(1 - abar_t)
        a = abar_s.sqrt() - b * abar_t.sqrt()
        return a, b, torch.zeros_like(a)


SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}


def make_sampler(name: str, schedule: Schedule) -> Scheduler:
    """The sampler `decode.sampler` names, over `schedule`."""
    return SCHEDULERS[name](schedule)
