"""Evaluate a run's samples: class accuracy by a domain classifier.

    python -m ddpm_lib.evaluate --run runs/digits                 # judges runs/digits/samples/samples.npz
    python -m ddpm_lib.evaluate --run runs/digits --samples other.npz

Trains (once, cached as ``classifier.pt`` in the run directory) a small classifier
on the run's real data and reports its held-out accuracy beside the samples' class
accuracy, overall and per class, in ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .checkpoint import atomic_write_bytes, load_run
from .data import load_data
from .errors import DDPMError, cli
from .metrics import class_accuracy, load_or_train_classifier
from .sample import load_samples


def evaluate(run_dir: str | Path, samples_path: str | Path | None = None, progress: bool = True) -> dict:
    """Class accuracy of ``samples_path`` (default ``RUN/samples/samples.npz``); returns and saves metrics."""
    run_dir = Path(run_dir)
    _, cfg, class_names, ckpt = load_run(run_dir)
    images, labels, sample_names = load_samples(samples_path or run_dir / "samples" / "samples.npz")
    if sample_names != class_names:
        raise DDPMError(f"the samples' classes {sample_names} are not the run's classes {class_names}")
    data = load_data(cfg.data, progress=progress)
    classifier, heldout = load_or_train_classifier(data, run_dir / "classifier.pt", progress=progress)
    acc = class_accuracy(classifier, images, labels, len(class_names))
    metrics = {
        "step": ckpt["step"],
        "num_samples": len(labels),
        "classifier_heldout_accuracy": round(heldout, 4),
        "class_accuracy": round(acc.overall, 4),
        "per_class_accuracy": {name: round(a, 4) for name, a, n in zip(class_names, acc.per_class, acc.counts) if n},
    }
    path = run_dir / "metrics.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    atomic_write_bytes((json.dumps({**old, **metrics}, indent=2) + "\n").encode(), path)
    if progress:
        worst = min(metrics["per_class_accuracy"].items(), key=lambda kv: kv[1])
        print(f"[evaluate] class accuracy {acc.overall:.1%} over {len(labels)} samples "
              f"(classifier held-out accuracy {heldout:.1%}; weakest class {worst[0]} {worst[1]:.0%}) -> {path}")
    return metrics


@cli
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ddpm_lib.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", "--run", dest="run", required=True, help="run directory")
    p.add_argument("--samples", help="samples .npz (default: RUN/samples/samples.npz)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    evaluate(args.run, args.samples, progress=not args.quiet)


if __name__ == "__main__":
    main()
