"""Worked solutions for notebook 01 (Forward noising: how a DDPM destroys an image). Try the cells
yourself first; with SOLUTIONS = True in the notebook's parameters cell the checks run these instead of
your cells (CI runs both ways).

Shapes: images x0, x_t, noise (B, C, H, W); steps t int64 (B,), one per image. Steps are code indices
in [0, T): index t is the paper's step t + 1, so alpha_bar[0] is already 1 - beta_1, not 1.
"""

import torch


def q_sample(x0, t, noise, schedule):
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise. x0, noise (B, C, H, W); t (B,) -> (B, C, H, W)."""
    # alpha_bar_t = prod_{s <= t} (1 - beta_s): the whole product up to step t, not one step's alpha_t.
    # Index it at each image's own step, then shape it (B, 1, 1, 1) so it broadcasts over C, H, W.
    # (The schedule's tables live on the CPU in float64: index them there, then move the values to
    # x0's device and dtype with .to(x0).)
    alpha_bar = schedule.alpha_bar[t.cpu()].to(x0).view(-1, 1, 1, 1)
    # The closed form q(x_t | x_0) (Ho et al. 2020, eq. 4) as a reparameterised sample: both
    # coefficients are standard deviations (square roots), and the two variances add up to 1.
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


def posterior(x0, x_t, t, schedule):
    """Mean and variance of q(x_{t-1} | x_t, x_0). x0, x_t (B, C, H, W); t (B,) -> mean (B, C, H, W), variance (B,)."""
    # The per-step numbers at each image's step t: the float64 tables of shape (T,), indexed to (B,).
    steps = t.cpu()  # the tables live on the CPU
    beta = schedule.betas[steps]
    alpha = schedule.alphas[steps]
    alpha_bar = schedule.alpha_bar[steps]
    # alpha_bar_{t-1}: the table shifted by one step, with 1 before the first step (x_{-1} is x_0 itself).
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alpha_bar[:-1]])[steps]
    # Ho et al. 2020, eq. 7: the mean mixes x_0 and x_t with these two weights ...
    coef_x0 = alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)
    coef_xt = alpha.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)
    # ... and the variance beta_tilde_t is smaller than the forward step's beta_t (0 at the first step).
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
    # Shape the weights (B, 1, 1, 1) so each image uses its own step's values.
    shape = (-1,) + (1,) * (x0.ndim - 1)
    mean = coef_x0.to(x0).view(shape) * x0 + coef_xt.to(x0).view(shape) * x_t
    return mean, variance.to(x0)
