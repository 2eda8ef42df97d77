"""Regenerate the committed figures in figures/ (shown by the README and the lessons).

    python scripts/make_figures.py                       # every figure; sample grid and loss from runs/digits
    python scripts/make_figures.py --run runs/digits     # the trained run to draw samples and the loss curve from

Figures that need no trained model (noising strips, the linear-vs-cosine GIF, schedule
curves, the DistributedSampler sharding picture) are always made; the sample grid and
the loss curve are made when the run directory exists (``make course`` creates it), and
the confusion matrix and the DDIM-steps / guidance curves when its ``eval/`` holds them
(``python -m ddpm_lib.evaluate --run-dir runs/digits --sweep steps`` and ``--sweep guidance``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DistributedSampler  # noqa: E402

from ddpm_lib.data import load_digits, make_textures, to_float  # noqa: E402
from ddpm_lib.schedules import cosine, linear  # noqa: E402
from ddpm_lib.viz import (noising_strip, plot_loss, plot_schedules, plot_sweep,  # noqa: E402
                          schedule_destruction_gif)

FIGURES = Path(__file__).resolve().parents[1] / "figures"
STEPS = [0, 50, 100, 200, 300, 500, 700, 999]


def noising_figures() -> list[Path]:
    digit = to_float(load_digits(16).images[7])
    texture = to_float(make_textures(32, 4).images[0])  # a stripes image (class 0)
    schedules = {"linear": linear(1000), "cosine": cosine(1000)}
    paths = []
    for name, schedule in schedules.items():
        path = FIGURES / f"noising_strip_{name}.png"
        noising_strip(schedule, texture, STEPS).save(path)
        paths.append(path)
    path = FIGURES / "noising_strip_digit_cosine.png"
    noising_strip(schedules["cosine"], digit, STEPS).save(path)
    paths.append(path)
    paths.append(schedule_destruction_gif(schedules, texture, FIGURES / "noising_linear_vs_cosine.gif", frames=40))
    fig = plot_schedules(schedules)
    path = FIGURES / "schedules.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths + [path]


def sharding_figure(n: int = 20, ranks: int = 2, epochs: int = 2) -> Path:
    """Which dataset index each rank reads, epoch by epoch (DistributedSampler, shuffle on)."""
    fig, axes = plt.subplots(epochs, 1, figsize=(8, 1.3 * epochs), sharex=True)
    colours = plt.get_cmap("tab10")
    for epoch, ax in enumerate(axes):
        for rank in range(ranks):
            sampler = DistributedSampler(range(n), num_replicas=ranks, rank=rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            order = list(sampler)
            ax.bar(order, [1] * len(order), color=colours(rank), label=f"rank {rank}" if epoch == 0 else None)
            for position, index in enumerate(order):
                ax.text(index, 0.5, str(position), ha="center", va="center", fontsize=7, color="white")
        ax.set(yticks=[], ylabel=f"epoch {epoch}")
    axes[-1].set(xlabel="dataset index (number: position in that rank's batch order)", xticks=range(n))
    fig.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=ranks)
    fig.suptitle(f"DistributedSampler: {n} images over {ranks} ranks, reshuffled each epoch (set_epoch)", y=1.02)
    path = FIGURES / "sharding.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def run_figures(run_dir: Path) -> list[Path]:
    paths = []
    grid = run_dir / "samples" / "grid.png"
    if grid.exists():
        path = FIGURES / "digits_samples.png"
        path.write_bytes(grid.read_bytes())
        paths.append(path)
    if (run_dir / "log.jsonl").exists():
        ax = plot_loss(run_dir)
        path = FIGURES / "digits_loss.png"
        ax.figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(ax.figure)
        paths.append(path)
    confusion = run_dir / "eval" / "confusion.png"
    if confusion.exists():
        path = FIGURES / "digits_confusion.png"
        path.write_bytes(confusion.read_bytes())
        paths.append(path)
    for kind, name in (("steps", "ddim_steps"), ("guidance", "guidance")):
        sweep = run_dir / "eval" / f"sweep_{kind}.json"
        if sweep.exists():
            rows = json.loads(sweep.read_text())
            axes = plot_sweep(rows, kind, title=f"default digits model: {rows[0]['n']} samples per setting "
                                                f"(python -m ddpm_lib.evaluate --sweep {kind})")
            path = FIGURES / f"{name}.png"
            axes[0].figure.savefig(path, dpi=120, bbox_inches="tight")
            plt.close(axes[0].figure)
            paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/digits", help="trained run for the sample grid and loss curve")
    args = parser.parse_args()
    torch.set_num_threads(2)
    FIGURES.mkdir(exist_ok=True)
    made = noising_figures() + [sharding_figure()] + run_figures(Path(args.run))
    for path in made:
        print(f"[figures] {path.relative_to(FIGURES.parent)}")


if __name__ == "__main__":
    main()
