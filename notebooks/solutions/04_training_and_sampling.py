"""Worked solutions for notebook 04 (Training and sampling a class-conditional DDPM). Try the cells
yourself first; with SOLUTIONS = True in the notebook's parameters cell the checks run these instead of
your cells (CI runs both ways).

Shapes: images (B, C, H, W); labels y and steps t int64 (B,) for the loss; the samplers take one int
step t for the whole batch. Steps are code indices in [0, T): index t is the paper's step t + 1.
"""

import torch


def eps_loss(model, x0, y, t, noise, drop, null_class, schedule):
    """mean((noise - model(x_t, t, y'))^2), y' = null_class where drop, else y. Returns a scalar."""
    # 1. Noise the clean images in one jump (Ho et al. 2020, eq. 4):
    #    x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, with alpha_bar_t shaped (B, 1, 1, 1)
    #    so that each image gets its own step's value.
    alpha_bar = schedule.alpha_bar[t].to(x0.dtype).view(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    # 2. Label dropout (classifier-free guidance training): where drop is True the model sees the
    #    null class instead of the label.
    y_in = torch.where(drop, torch.full_like(y, null_class), y)
    # 3. The "simple" loss (eq. 14): the network predicts the noise; average over every pixel and image.
    return ((noise - model(x_t, t, y_in)) ** 2).mean()


def ddpm_step(x_t, t, eps, noise, schedule):
    """x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) + sigma_t noise. All (B, C, H, W)."""
    # This step's numbers (0-dim float64 tensors; multiplying a float32 image by them keeps float32).
    alpha_t = schedule.alphas[t]
    alpha_bar_t = schedule.alpha_bar[t]
    beta_t = schedule.betas[t]
    # sigma_t^2 = beta_tilde_t, the posterior variance (Ho et al. 2020, eq. 7); it is 0 at t = 0,
    # so the last step adds no noise whatever `noise` holds.
    sigma_t = schedule.posterior_variance[t].sqrt()
    # Ho et al. 2020, eq. 11 (Algorithm 2, line 4): remove the predicted noise, rescale, add fresh noise.
    mean = (x_t - beta_t / (1 - alpha_bar_t).sqrt() * eps) / alpha_t.sqrt()
    return mean + sigma_t * noise


def ddim_step(x_t, t, t_prev, eps, noise, eta, schedule):
    """x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma noise, a = alpha_bar. All (B, C, H, W)."""
    # alpha_bar at both ends of the jump; t_prev = -1 is the clean image, where alpha_bar = 1
    # (alpha_bar[-1] would be the LAST step's value in Python, the opposite end of the chain).
    a_t = schedule.alpha_bar[t]
    a_prev = schedule.alpha_bar[t_prev] if t_prev >= 0 else torch.ones((), dtype=torch.float64)
    # The model's guess of the clean image: invert eq. 4 for x0 (Song et al. 2021, eq. 12, first term).
    x0_hat = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    # How much fresh noise to add (eq. 16): eta = 0 is deterministic DDIM, eta = 1 is DDPM-like.
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    # Point back along the predicted noise, with the variance that sigma adds taken out of it
    # (clamped at 0 against rounding when the two nearly cancel).
    direction = (1 - a_prev - sigma ** 2).clamp(min=0).sqrt()
    return a_prev.sqrt() * x0_hat + direction * eps + sigma * noise


def guidance(eps_cond, eps_uncond, scale):
    """eps = eps_uncond + scale * (eps_cond - eps_uncond). Both inputs and the output (B, C, H, W)."""
    # Classifier-free guidance (Ho & Salimans 2022), written so that scale 0 is the unconditional
    # estimate and scale 1 the conditional one; scale > 1 extrapolates past the conditional estimate
    # (the paper's w is scale - 1).
    return eps_uncond + scale * (eps_cond - eps_uncond)
