"""Pictures: image grids with class labels, and training-loss curves.

Images come in as uint8 ``(N, C, H, W)`` (C = 1 or 3) or float in [-1, 1]; grids
go out as PIL images, so notebooks can display them and scripts can save them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .data import to_uint8


def as_uint8(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) from uint8 or float-in-[-1, 1] images."""
    images = torch.as_tensor(images)
    return images if images.dtype == torch.uint8 else to_uint8(images)


def png_bytes(picture: Image.Image) -> bytes:
    """A PIL image encoded as PNG, in memory (for widgets and atomic writes)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


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


def read_log(run_dir: str | Path, latest_only: bool = True) -> list[dict]:
    """The records of ``run_dir/log.jsonl``, one dict per logging step, in step order.

    Training appends to it, and on resuming drops the records past the snapshot it
    resumes from, so each step is logged once. ``latest_only`` keeps the last record of
    each step all the same (logs written before ddpm_lib did that hold the steps redone
    after a crash twice); ``False`` returns the lines as they are.
    """
    path = Path(run_dir) / "log.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    if not latest_only:
        return records
    return sorted({r["step"]: r for r in records}.values(), key=lambda r: r["step"])


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


# ---------------------------------------------------------------------------------
# forward noising: strips, a GIF, schedule curves
# ---------------------------------------------------------------------------------


def _noised(schedule, x0: torch.Tensor, steps, seed: int) -> torch.Tensor:
    """x_t (len(steps), C, H, W) of one image x0 (C, H, W) at each step, all with the same noise."""
    from .diffusion import q_sample

    x0 = torch.as_tensor(x0, dtype=torch.float32)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    n = len(steps)
    t = torch.as_tensor(list(steps), dtype=torch.long)
    return q_sample(schedule, x0.expand(n, *x0.shape), t, noise.expand(n, *x0.shape))


def _labelled_row(tiles: list[Image.Image], labels: list[str], pad: int = 2) -> Image.Image:
    """Tiles (PIL images of one size) side by side, each with a text label underneath."""
    font = ImageFont.load_default()
    w, h = tiles[0].size
    label_h = 14
    sheet = Image.new("RGB", (len(tiles) * (w + pad) + pad, h + 2 * pad + label_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        left = pad + i * (w + pad)
        sheet.paste(tile.convert("RGB"), (left, pad))
        draw.text((left + 1, pad + h + 1), label, fill="black", font=font)
    return sheet


def _tile(image: torch.Tensor, scale: int) -> Image.Image:
    """One float (C, H, W) image in [-1, 1] as a PIL image blown up ``scale`` times."""
    return image_grid(image[None], nrow=1, scale=scale, pad=0)


def noising_strip(schedule, x0, steps: list[int], seed: int = 0, scale: int | None = None) -> Image.Image:
    """The forward process on one image: x_t for each step in ``steps``, left to right.

    ``x0``: float (C, H, W) in [-1, 1] (C = 1 or 3). Each x_t is drawn with
    :func:`ddpm_lib.diffusion.q_sample` (x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps)
    with the *same* noise eps ~ N(0, I) (fixed by ``seed``) at every step, so the
    strip shows the signal fading rather than fresh noise. Values outside [-1, 1]
    are clipped for display. ``steps`` are code indices in [0, T); each tile is
    labelled ``t=<step>``. ``scale`` (default: up to about 64 px) enlarges small images.
    Returns an RGB PIL image of width ``len(steps) * (scale * W + 2) + 2``.
    """
    x0 = torch.as_tensor(x0, dtype=torch.float32)
    if x0.ndim != 3:
        raise ValueError(f"x0 must be one image (C, H, W), got shape {tuple(x0.shape)}")
    steps = [int(s) for s in steps]
    if any(not 0 <= s < schedule.timesteps for s in steps):
        raise ValueError(f"steps must lie in [0, {schedule.timesteps}), got {steps}")
    scale = scale or max(1, 64 // x0.shape[-1])
    x_t = _noised(schedule, x0, steps, seed)
    return _labelled_row([_tile(x, scale) for x in x_t], [f"t={s}" for s in steps])


def schedule_destruction_gif(schedules: dict, x0, path, frames: int = 40, seed: int = 0, duration_ms: int = 80,
                             scale: int | None = None) -> Path:
    """An animated GIF of one image destroyed under each schedule, side by side.

    ``schedules``: {name: NoiseSchedule}; ``x0``: float (C, H, W) in [-1, 1]. Frame k
    (of ``frames``) shows, for every schedule, x_t at t = round(k / (frames - 1) * (T - 1))
    of that schedule's own T, drawn with :func:`ddpm_lib.diffusion.q_sample` and the
    same noise eps (fixed by ``seed``) for every schedule and frame, so the only
    difference between the panels is the schedule. Each panel is labelled with
    ``"<name> t=<step>"``. Frames last ``duration_ms`` each and the GIF loops
    forever. Writes ``path`` (parent folders created) and returns it as a Path.
    """
    x0 = torch.as_tensor(x0, dtype=torch.float32)
    if x0.ndim != 3:
        raise ValueError(f"x0 must be one image (C, H, W), got shape {tuple(x0.shape)}")
    if frames < 2:
        raise ValueError(f"frames must be at least 2, got {frames}")
    scale = scale or max(1, 96 // x0.shape[-1])
    names = list(schedules)
    fractions = np.linspace(0.0, 1.0, frames)
    steps = {n: [int(round(f * (schedules[n].timesteps - 1))) for f in fractions] for n in names}
    noised = {n: _noised(schedules[n], x0, steps[n], seed) for n in names}  # (frames, C, H, W) each
    pictures = []
    for k in range(frames):
        tiles = [_tile(noised[n][k], scale) for n in names]
        pictures.append(_labelled_row(tiles, [f"{n} t={steps[n][k]}" for n in names]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=duration_ms, loop=0)
    return path


def plot_schedules(schedules: dict, ax=None):
    """beta_t, alpha_bar_t and log-SNR_t = log(alpha_bar_t / (1 - alpha_bar_t)) against step t.

    ``schedules``: {name: NoiseSchedule}, each with tables of shape (T,). ``ax``: three
    matplotlib axes to draw into (default: a new 1 x 3 figure). beta is on a log
    scale; log-SNR is in nats. Returns the figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = list(np.ravel(ax))
    if len(ax) != 3:
        raise ValueError(f"plot_schedules needs three axes, got {len(ax)}")
    for name, schedule in schedules.items():
        t = np.arange(schedule.timesteps)
        ax[0].plot(t, schedule.betas.numpy(), label=name)
        ax[1].plot(t, schedule.alpha_bar.numpy(), label=name)
        ax[2].plot(t, schedule.log_snr.numpy(), label=name)
    ax[0].set(title="noise added per step", xlabel="step t", ylabel="beta_t", yscale="log")
    ax[1].set(title="signal power left", xlabel="step t", ylabel="alpha_bar_t")
    ax[2].set(title="signal-to-noise ratio", xlabel="step t", ylabel="log SNR_t (nats)")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend()
    fig = ax[0].figure
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------
# evaluation: confusion matrix, quality-vs-setting curves
# ---------------------------------------------------------------------------------


def plot_confusion(confusion, class_names: list[str], ax=None, title: str = "requested vs recognised class"):
    """Confusion matrix (K, K) of counts, rows = requested class, columns = what the
    classifier saw, shown as row fractions with the counts written in; returns the axes."""
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion, dtype=float)
    fractions = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    k = len(class_names)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 + 0.5 * k, 0.8 + 0.5 * k))
    ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if counts[i, j]:
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if fractions[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set(xlabel="classifier says", ylabel="requested", title=title)
    return ax


def plot_sweep(rows: list[dict], x: str, axes=None, title: str = ""):
    """Class accuracy and domain FID (with its real-vs-real floor) against setting ``x``
    ("steps" or "guidance") for rows from :func:`ddpm_lib.evaluate.quality_sweep`.
    The full DDPM chain, if present, is drawn as a dashed reference line. Returns the axes."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    curve = [r for r in rows if r["sampler"] == "ddim" or x != "steps"]
    full = [r for r in rows if r["sampler"] == "ddpm" and x == "steps"]
    xs = [r[x] for r in curve]
    for ax, key, label in ((axes[0], "class_accuracy", "class accuracy"), (axes[1], "fid", "domain FID (lower is better)")):
        ax.plot(xs, [r[key] for r in curve], "o-", label="DDIM" if x == "steps" else "samples")
        for r in full:
            ax.axhline(r[key], color="C3", ls="--", label=f"DDPM, {r['steps']} steps")
        if key == "fid":
            ax.axhline(rows[0]["fid_real"], color="gray", ls=":", label="real vs real")
            ax.set_ylim(bottom=0)
        else:  # a 0.5-point dip should not fill the panel
            ax.set_ylim(min(0.9, min(r[key] for r in rows) - 0.02), 1.01)
        ax.set(xlabel="sampling steps" if x == "steps" else "guidance scale s", ylabel=label)
        if x == "steps":
            ax.set_xscale("log")
            ax.set_xticks(xs, [str(v) for v in xs])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        axes[0].figure.suptitle(title)
    return axes


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG atomically (a crash never leaves half a file)."""
    from .checkpoint import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(buffer.getvalue(), path)
    return Path(path)
