"""Worked solutions for notebook 03 (The class-conditional U-Net). Try the cells yourself first; with
SOLUTIONS = True in the notebook's parameters cell the checks run these instead of your cells (CI runs
both ways)."""

import math

import torch


def timestep_embedding(t, dim):
    """[cos(t w_k), sin(t w_k)], w_k = 10000^(-k / (dim/2)), k = 0..dim/2-1, zero-padded if dim is odd.
    t (B,) integer steps -> (B, dim) float32."""
    half = dim // 2
    # The dim/2 frequencies fall geometrically from 1 (k = 0: about a radian per step) to almost
    # 1/10000 (a slow clock that separates early steps from late ones). Vaswani et al. 2017, sec. 3.5.
    k = torch.arange(half, dtype=torch.float64, device=t.device)
    freqs = torch.exp(-math.log(10000.0) * k / half)
    # Angles t * w_k, (B, dim/2). Computed in float64: an angle near 1000 rad keeps its precision.
    angles = t.double()[:, None] * freqs[None, :]
    # All the cosines first, then all the sines (the order the U-Net's MLP was built for).
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:  # an odd width: one zero column on the right
        emb = torch.cat([emb, torch.zeros(len(t), 1, dtype=emb.dtype, device=emb.device)], dim=1)
    return emb.float()


def scale_shift_norm(h, scale, shift, norm):
    """norm(h) * (1 + scale) + shift. h (B, C, H, W); scale, shift (B, C); norm a GroupNorm -> (B, C, H, W)."""
    # Adaptive GroupNorm (Dhariwal & Nichol 2021, sec. 3): normalise first, so the modulation is not
    # undone by the norm; then one scale and one shift per image and channel, given two trailing
    # dimensions so they broadcast over H and W. "1 +": a scale of 0 leaves plain GroupNorm.
    return norm(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
