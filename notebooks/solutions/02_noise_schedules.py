"""Worked solutions for notebook 02 (Noise schedules: linear vs cosine). Try the cells yourself first;
with SOLUTIONS = True in the notebook's parameters cell the checks run these instead of your cells
(CI runs both ways).

Both functions return alpha_bar for the code steps t = 0..T-1 as a float64 tensor of shape (T,);
code step t is the paper's step t + 1.
"""

import math

import torch


def linear_alpha_bar(timesteps, beta_start, beta_end):
    """alpha_bar_t = prod_{s <= t} (1 - beta_s), betas linear from beta_start to beta_end. -> (T,) float64."""
    # Ho et al. 2020, sec. 4: T betas evenly spaced from beta_start (first step) to beta_end (last step).
    # (The library's schedules.linear(T) also scales both ends by 1000 / T; this one takes them as given.)
    betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    # alpha_t = 1 - beta_t is the fraction of signal power one step keeps; alpha_bar_t multiplies them
    # up to and including step t, so alpha_bar[0] is already 1 - beta_start.
    alphas = 1 - betas
    return torch.cumprod(alphas, dim=0)


def cosine_alpha_bar(timesteps, s=0.008):
    """alpha_bar_t = f(t + 1) / f(0), f(u) = cos^2((u / T + s) / (1 + s) * pi / 2). -> (T,) float64."""
    # Nichol & Dhariwal 2021, eq. 17, evaluated at u = 0, 1, ..., T.
    u = torch.arange(timesteps + 1, dtype=torch.float64)
    f = torch.cos((u / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    # Dividing by f(0) makes alpha_bar start at 1 before any noise; code step t is the paper's step
    # t + 1, so it takes f(t + 1): drop f(0) itself. (The library also clips beta_t at 0.999, which
    # changes only the last value, from about 4e-33 to about 2e-9.)
    return f[1:] / f[0]
