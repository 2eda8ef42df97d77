"""The class-conditional U-Net that predicts the noise eps_theta(x_t, t, y).

The layout follows the DDPM U-Net (Ho et al. 2020, appendix B, itself a PixelCNN++
backbone) with the improvements of Nichol & Dhariwal 2021:

    x_t (B, C, H, W) -> 3x3 conv -> [ResBlock x n (+ attention) -> downsample] per level
                     -> middle: ResBlock, attention, ResBlock
                     -> [ResBlock x (n+1) on [h, skip] (+ attention) -> upsample] per level
                     -> GroupNorm, SiLU, 3x3 conv -> eps (B, C, H, W)

Conditioning: the step t goes through a sinusoidal embedding (Vaswani et al. 2017)
and an MLP; the class y through an ``nn.Embedding`` with ``num_classes + 1`` rows,
the last being the *null class* for classifier-free guidance (Ho & Salimans 2022).
Their sum ``emb`` (B, 4 * base_channels) sets a per-channel scale and shift after
each ResBlock's second GroupNorm ("adaptive group norm", Nichol & Dhariwal 2021).
Self-attention uses ``F.scaled_dot_product_attention`` at the feature-map sizes
listed in ``attn_resolutions``.

Zero initialisation: the last layer of every residual branch (``ResBlock.conv2``,
``SelfAttention.proj``) and the output conv ``conv_out`` start with zero weights and
bias. At initialisation every residual branch therefore outputs 0 and each block
computes only its skip path: an attention layer is the identity, and a ResBlock is
the identity only where ``in_ch == out_ch``; where the channel count changes its skip
is a randomly initialised 1x1 conv (7 of the 11 ResBlocks of the ``tiny`` preset: the
first block of a level that widens, and every up block, whose input is [h, skip]
concatenated). The network as a whole outputs eps = 0 for every input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of steps ``t`` (B,) -> (B, dim):
    ``[cos(t * w_k), sin(t * w_k)]`` with frequencies ``w_k = max_period^(-k / (dim/2))``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return F.pad(emb, (0, dim % 2))


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (the DDPM choice), fewer for narrow layers."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN-SiLU-conv, then GN with scale/shift from ``emb``, SiLU, dropout, conv; plus a skip::

        h   = conv1(SiLU(GN1(x)));   [scale, shift] = emb_proj(SiLU(emb))
        out = skip(x) + conv2(Dropout(SiLU(GN2(h) * (1 + scale) + shift)))

    ``skip`` is the identity when C_in == C_out, a 1x1 conv otherwise; ``conv2`` starts at
    zero, so a fresh block returns ``skip(x)``. x (B, C_in, H, W), emb (B, E) -> (B, C_out, H, W).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual.

    x (B, C, H, W) -> (B, C, H, W); each head attends with softmax(q k^T / sqrt(d)) v,
    d = C / num_heads, over the HW positions.

    Which SDPA kernel runs depends on the layout: q, k, v are views of the qkv conv's
    output, so their last dimension has stride 1 only when that output is channels_last
    (model and x moved with ``.to(memory_format=torch.channels_last)``). Then a
    fused kernel can run (on CPU a tiled flash-style kernel; on CUDA FlashAttention or
    memory-efficient attention, each with its own dtype rules), which works through the
    keys block by block and never holds the whole (HW, HW) weight matrix. With a
    contiguous (NCHW) x the stride is HW, the fused kernels refuse it (PyTorch requires
    stride 1 for all of them), and SDPA falls back to its math path, which materialises
    the (B, heads, HW, HW) weights. ``ddpm_lib.train`` and ``checkpoint.load_run`` use
    channels_last; notebook 03 shows which kernels qualify in each layout.
    """

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, d)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ConditionalUNet(nn.Module):
    """eps_theta(x_t, t, y): x (B, C, H, W) float, t (B,) int64, y (B,) int64 in [0, K] -> (B, C, H, W).

    ``y == num_classes`` is the null class (no label). H and W must be divisible by
    ``2 ** (len(channel_mult) - 1)``; ``img_size`` only names the resolution at which
    ``attn_resolutions`` are counted (the network itself is fully convolutional).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        img_size: int,
        base_channels: int = 32,
        channel_mult: tuple[int, ...] | list[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attn_resolutions: tuple[int, ...] | list[int] = (8,),
        num_heads: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.null_class = num_classes
        self.base_channels = base_channels
        emb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [base_channels]
        ch, res = base_channels, img_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, base_channels * mult, emb_dim, dropout)]
                ch = base_channels * mult
                if res in attn_resolutions:
                    layers.append(SelfAttention(ch, num_heads))
                self.down.append(nn.ModuleList(layers))
                skip_channels.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skip_channels.append(ch)
                res //= 2

        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout), SelfAttention(ch, num_heads),
                                  ResBlock(ch, ch, emb_dim, dropout)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), base_channels * mult, emb_dim, dropout)]
                ch = base_channels * mult
                if res in attn_resolutions:
                    layers.append(SelfAttention(ch, num_heads))
                if level > 0 and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    res *= 2
                self.up.append(nn.ModuleList(layers))

        self.norm_out = group_norm(ch)
        self.conv_out = zero_init(nn.Conv2d(ch, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.base_channels)) + self.class_emb(y)
        h = self.conv_in(x)
        skips = [h]
        for layers in self.down:
            for layer in layers:
                h = layer(h, emb)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layers in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            for layer in layers:
                h = layer(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def build_unet(model_cfg, in_channels: int, num_classes: int, img_size: int) -> ConditionalUNet:
    """A ``ConditionalUNet`` from a resolved ``config.ModelConfig``."""
    return ConditionalUNet(
        in_channels=in_channels,
        num_classes=num_classes,
        img_size=img_size,
        base_channels=model_cfg.base_channels,
        channel_mult=tuple(model_cfg.channel_mult),
        num_res_blocks=model_cfg.num_res_blocks,
        attn_resolutions=tuple(model_cfg.attn_resolutions),
        num_heads=model_cfg.num_heads,
        dropout=model_cfg.dropout,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
