"""Pictures: image grids with class labels, and training-loss curves.

Images come in as uint8 ``(N, C, H, W)`` (C = 1 or 3) or float in [-1, 1]; grids
go out as PIL images, so notebooks can display them and scripts can save them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def as_uint8(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) from uint8 or float-in-[-1, 1] images."""
    images = torch.as_tensor(images)
    if images.dtype == torch.uint8:
        return images
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def image_grid(images, nrow: int, scale: int = 1, pad: int = 2) -> Image.Image:
    """Tile images (N, C, H, W) into rows of ``nrow``, each pixel blown up ``scale`` times."""
    images = as_uint8(images)
    n, c, h, w = images.shape
    rows = max(1, -(-n // nrow))
    canvas = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, top:top + h, left:left + w] = images[i]
    array = canvas.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[:, :, 0] if c == 1 else array, mode="L" if c == 1 else "RGB")
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return picture


def class_grid(images, labels, class_names: list[str], per_row: int | None = None, scale: int | None = None) -> Image.Image:
    """One row per class present in ``labels`` with its name on the left: the sample grid.

    ``scale`` defaults to blowing small images up to about 48 px so they can be seen.
    """
    images, labels = as_uint8(images), torch.as_tensor(labels)
    h = images.shape[-1]
    scale = scale or max(1, 48 // h)
    classes = sorted(set(labels.tolist()))
    per_row = per_row or max(int((labels == c).sum()) for c in classes)
    font = ImageFont.load_default()
    label_width = 8 + 7 * max(len(class_names[c]) for c in classes)
    rows = [image_grid(images[labels == c][:per_row], nrow=per_row, scale=scale).convert("RGB") for c in classes]
    width = label_width + max(r.width for r in rows)
    sheet = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for c, row in zip(classes, rows):
        sheet.paste(row, (label_width, y))
        draw.text((4, y + row.height // 2 - 5), class_names[c], fill="black", font=font)
        y += row.height
    return sheet


def read_log(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/log.jsonl`` (one dict per logging step)."""
    path = Path(run_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_loss(run_dir: str | Path, ax=None):
    """Training loss against step from ``log.jsonl``, on a log scale; returns the axes."""
    import matplotlib.pyplot as plt

    records = read_log(run_dir)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], lw=1.5)
    ax.set(xlabel="step", ylabel="loss (MSE on noise)", yscale="log", title=f"training loss: {Path(run_dir).name}")
    ax.grid(alpha=0.3)
    return ax
