"""Noise schedules: how much noise the forward process adds at each step.

The forward process of a DDPM (Ho et al. 2020, "Denoising Diffusion Probabilistic
Models", eq. 2) adds Gaussian noise in T small steps::

    q(x_t | x_{t-1}) = N(x_t; sqrt(1 - beta_t) x_{t-1}, beta_t I),   t = 1..T

and composes in closed form (eq. 4), with alpha_t = 1 - beta_t and
alpha_bar_t = prod_{s<=t} alpha_s::

    q(x_t | x_0) = N(x_t; sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)

The reverse step needs the posterior q(x_{t-1} | x_t, x_0) (eq. 6-7)::

    mean     = coef1_t x_0 + coef2_t x_t
    coef1_t  = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t)
    coef2_t  = sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)
    variance = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t

The formulas above use the paper's steps t = 1..T. Code indexes steps from 0: index
``t`` in ``[0, T)`` is the paper's step ``t + 1``, so ``alpha_bar[0]`` is the paper's
alpha_bar_1 = 1 - beta_1 (not 1), and every table at index ``t`` holds the paper's value
at step ``t + 1``. ``alpha_bar_prev[t]`` is ``alpha_bar[t - 1]``; at ``t = 0`` it is the
value "before the first step", the paper's step 0, where x is the clean image x_0 and
alpha_bar_0 = 1 (an empty product; in code indices alpha_bar_{-1} = 1, the convention
``t_prev = -1`` of ``diffusion.ddim_step`` also uses). So the posterior out of code
index 0 is a point mass on x_0: ``posterior_variance[0] = 0``, ``posterior_mean_coef1[0]
= 1`` (to rounding) and ``posterior_mean_coef2[0] = 0``, which is why ``diffusion.ddpm_step`` at
``t = 0`` (and ``ddim_step`` to ``t_prev = -1``) returns its estimate of x_0. Every
tensor here has shape ``(T,)`` and dtype float64; :meth:`NoiseSchedule.gather` hands
out float32 values broadcast against a batch.

"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import torch

MAX_BETA = 0.999


@dataclass(frozen=True)
class NoiseSchedule:
    """Precomputed per-step terms of a variance schedule ``betas`` (shape ``(T,)``)."""

    name: str
    betas: torch.Tensor
    _on_device: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def timesteps(self) -> int:
        return self.betas.numel()

    @cached_property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @cached_property
    def alpha_bar(self) -> torch.Tensor:
        """alpha_bar_t = prod_{s<=t} (1 - beta_s): the fraction of signal power left at step t."""
        return torch.cumprod(self.alphas, dim=0)

    @cached_property
    def alpha_bar_prev(self) -> torch.Tensor:
        """alpha_bar at the previous code index, t - 1; 1 at t = 0 (before the first step, at x_0)."""
        return torch.cat([self.betas.new_ones(1), self.alpha_bar[:-1]])

    @cached_property
    def sqrt_alpha_bar(self) -> torch.Tensor:
        return self.alpha_bar.sqrt()

    @cached_property
    def sqrt_one_minus_alpha_bar(self) -> torch.Tensor:
        return (1.0 - self.alpha_bar).sqrt()

    @cached_property
    def sqrt_recip_alpha_bar(self) -> torch.Tensor:
        """1 / sqrt(alpha_bar_t): x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        return self.alpha_bar.rsqrt()

    @cached_property
    def sqrt_recipm1_alpha_bar(self) -> torch.Tensor:
        """sqrt(1 / alpha_bar_t - 1), the coefficient of eps in the same x_0 formula."""
        return (1.0 / self.alpha_bar - 1.0).sqrt()

    @cached_property
    def posterior_variance(self) -> torch.Tensor:
        """beta_tilde_t (Ho eq. 7); 0 at code index t = 0, where the posterior is a point mass on x_0."""
        return self.betas * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)

    @cached_property
    def posterior_log_variance_clipped(self) -> torch.Tensor:
        """log beta_tilde_t with the t = 0 value replaced by t = 1's (log 0 is -inf)."""
        var = self.posterior_variance
        return torch.log(torch.cat([var[1:2], var[1:]]))

    @cached_property
    def posterior_mean_coef1(self) -> torch.Tensor:
        return self.betas * self.alpha_bar_prev.sqrt() / (1.0 - self.alpha_bar)

    @cached_property
    def posterior_mean_coef2(self) -> torch.Tensor:
        return (1.0 - self.alpha_bar_prev) * self.alphas.sqrt() / (1.0 - self.alpha_bar)

    @cached_property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) (Kingma et al. 2021)."""
        return self.alpha_bar / (1.0 - self.alpha_bar)

    @cached_property
    def log_snr(self) -> torch.Tensor:
        return torch.log(self.snr)

    def gather(self, name: str, t: torch.Tensor, ndim: int = 4) -> torch.Tensor:
        """The table ``name`` (e.g. ``"sqrt_alpha_bar"``) at steps ``t`` (shape ``(B,)``), as
        float32 of shape ``(B, 1, ..., 1)`` with ``ndim`` dimensions, on ``t``'s device."""
        key = (name, t.device)
        if key not in self._on_device:  # copy each table to each device once
            self._on_device[key] = getattr(self, name).to(t.device, torch.float32)
        return self._on_device[key][t].reshape(-1, *([1] * (ndim - 1)))


def linear(timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """Linear betas from Ho et al. 2020 (1e-4 to 0.02 over T = 1000 steps).

    For another T both ends are scaled by 1000 / T (as in Nichol & Dhariwal 2021's code),
    so the total noise sum(beta) and hence alpha_bar_T ~ 4e-5 stay about the same.
    """
    scale = 1000 / timesteps
    betas = torch.linspace(beta_start * scale, beta_end * scale, timesteps, dtype=torch.float64)
    return NoiseSchedule("linear", betas.clamp(max=MAX_BETA))


def cosine(timesteps: int = 1000, s: float = 0.008) -> NoiseSchedule:
    """Cosine schedule of Nichol & Dhariwal 2021 ("Improved DDPM", eq. 17).

        f(t) = cos^2( (t / T + s) / (1 + s) * pi / 2 ),   alpha_bar_t = f(t) / f(0)
        beta_t = min(1 - alpha_bar_t / alpha_bar_{t-1}, 0.999)

    The offset ``s`` stops beta from being vanishingly small near t = 0 (with s = 0 the
    first beta is ~2.5e-6, too little noise to learn from; s = 0.008 makes it ~4e-5);
    the clip at 0.999 avoids the singularity at t = T, where alpha_bar reaches exactly 0.
    """

    def f(step: int) -> float:
        return math.cos((step / timesteps + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1.0 - f(i + 1) / f(i), MAX_BETA) for i in range(timesteps)]
    return NoiseSchedule("cosine", torch.tensor(betas, dtype=torch.float64))


def zero_terminal_snr(schedule: NoiseSchedule) -> NoiseSchedule:
    """Rescale ``schedule`` so its last step leaves no signal (Lin et al. 2024, "Common Diffusion
    Noise Schedules and Sample Steps are Flawed", Algorithm 1)::

        sqrt(alpha_bar)' = (sqrt(alpha_bar) - sqrt(alpha_bar_T)) * sqrt(alpha_bar_1) / (sqrt(alpha_bar_1) - sqrt(alpha_bar_T))

    The first step keeps its value, the last becomes exactly 0 (beta_T = 1, SNR_T = 0), so
    training sees at t = T what sampling starts from: pure noise. Linear's alpha_bar_T is
    about 4e-5 (sqrt 6e-3, a visible trace of the image); cosine's is already about 1e-9.
    An eps prediction cannot give x_0 where alpha_bar = 0, so use it with v-prediction.
    """
    root = schedule.sqrt_alpha_bar
    first, last = root[0], root[-1]
    root = (root - last) * first / (first - last)
    alpha_bar = root**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return NoiseSchedule(f"{schedule.name}+zero_terminal_snr", 1.0 - alphas)


def make_schedule(name: str, timesteps: int, zero_terminal: bool = False) -> NoiseSchedule:
    """A schedule by name: ``"linear"`` or ``"cosine"``; ``zero_terminal`` applies :func:`zero_terminal_snr`."""
    builders = {"linear": linear, "cosine": cosine}
    if name not in builders:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(builders)}")
    schedule = builders[name](timesteps)
    return zero_terminal_snr(schedule) if zero_terminal else schedule


def schedule_of(cfg) -> NoiseSchedule:
    """The schedule a run's config (``cfg.diffusion``) trains and samples with."""
    d = cfg.diffusion
    return make_schedule(d.schedule, d.timesteps, d.zero_terminal_snr)
