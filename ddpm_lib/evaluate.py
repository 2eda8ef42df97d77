"""Evaluate a run's samples: class accuracy, FID/KID/IS, and quality-vs-setting sweeps.

    python -m ddpm_lib.evaluate --run-dir runs/digits                  # judges RUN/samples/samples.npz
    python -m ddpm_lib.evaluate --run-dir runs/digits --samples runs/digits/samples/eval.npz
    python -m ddpm_lib.evaluate --run-dir runs/digits --inception-weights weights-inception-2015-12-05-6726825d.pth
    python -m ddpm_lib.evaluate --run-dir runs/digits --sweep steps     # DDIM 2..250 steps and the full DDPM chain
    python -m ddpm_lib.evaluate --run-dir runs/digits --sweep guidance  # guidance scale 0..8

Every number is judged against the run's real data:

- **class accuracy**: a small classifier, trained once on the real data and cached as
  ``RUN/classifier.pt`` (its held-out accuracy is reported too), labels every sample;
  overall, per class and a confusion matrix (``RUN/eval/confusion.png``);
- **domain FID / KID / IS**: torchmetrics' metrics with that classifier's penultimate
  features (FID, KID) and logits (IS) in place of Inception-v3, so they work offline;
- **Inception FID / KID / IS**: the standard ones, when the Inception weights are at hand
  (downloaded by torch-fidelity when online, or a local file via ``--inception-weights``
  or ``$DDPM_INCEPTION_WEIGHTS``); otherwise one line says how to provide them.

The real data is split in two halves (stratified, seed 0): the *reference* half is what
samples are compared with, and from the other half as many real images per class as there
are samples per class give the real-vs-real baseline printed beside every FID/KID/IS
(``fid_real`` ...). FID is biased upward for small sets, so only "samples vs baseline at
the same size" means something.

Results go to ``RUN/metrics.json``; a sweep writes ``RUN/eval/sweep_<kind>.json`` and
``.png`` (class accuracy and domain FID against the setting).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .checkpoint import atomic_write_bytes, load_run
from .data import ImageData, load_data
from .errors import DDPMError, cli
from .metrics import InceptionUnavailable, class_accuracy, domain_metrics, inception_metrics, load_or_train_classifier
from .sample import generate, load_samples, sample_settings

SWEEPS = {
    # DDIM with the run's eta and guidance at growing step counts, then the full ancestral chain
    "steps": [{"sampler": "ddim", "steps": s} for s in (2, 5, 10, 20, 50, 100, 250)] + [{"sampler": "ddpm"}],
    # guidance scale at the run's sampler and steps; s = 0 ignores the class, s = 1 is the plain conditional model
    "guidance": [{"guidance": s} for s in (0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0)],
}


def reference_split(data: ImageData) -> tuple[ImageData, ImageData]:
    """(reference half, baseline half) of the real data: stratified and fixed (seed 0)."""
    return data.split(test_fraction=0.5, seed=0)


def matched_baseline(baseline: ImageData, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Real images from ``baseline`` with the class counts of ``labels`` (as far as each class
    has images). A random real subset would carry chance class imbalance, which alone moves
    FID in a class-aware feature space; the samples are exactly balanced, so the baseline is too."""
    g = torch.Generator().manual_seed(seed)
    wanted = torch.bincount(labels, minlength=baseline.num_classes)
    picks = []
    for c in range(baseline.num_classes):
        members = torch.nonzero(baseline.labels == c).flatten()
        picks.append(members[torch.randperm(len(members), generator=g)[: int(wanted[c])]])
    return baseline.images[torch.cat(picks)]


def _rounded(metrics: dict, digits: int = 4) -> dict:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in metrics.items()}


def judge(images: torch.Tensor, labels: torch.Tensor, classifier, data: ImageData) -> tuple[dict, torch.Tensor]:
    """Class accuracy and domain FID/KID/IS of uint8 ``images`` generated for ``labels``.
    Returns (flat metrics dict, confusion matrix (K, K))."""
    acc = class_accuracy(classifier, images, labels, data.num_classes)
    reference, baseline = reference_split(data)
    baseline_images = matched_baseline(baseline, labels)
    metrics = {"class_accuracy": acc.overall,
               "per_class_accuracy": {name: round(a, 4) for name, a, n in zip(data.class_names, acc.per_class, acc.counts) if n},
               "domain": _rounded(domain_metrics(classifier, reference.images, images, baseline_images))}
    return metrics, acc.confusion


def evaluate(run_dir: str | Path, samples_path: str | Path | None = None, inception: str = "auto",
             inception_weights: str | Path | None = None, progress: bool = True) -> dict:
    """Judge ``samples_path`` (default ``RUN/samples/samples.npz``); return and save ``RUN/metrics.json``.

    ``inception``: ``"auto"`` computes the standard Inception metrics when the weights can be
    had (else records why not), ``"off"`` skips them, ``"on"`` makes their absence an error.
    """
    from .viz import plot_confusion, save_figure

    if inception not in ("auto", "on", "off"):
        raise DDPMError(f"--inception must be auto, on or off, got {inception!r}")
    run_dir = Path(run_dir)
    _, cfg, class_names, ckpt = load_run(run_dir)
    samples_path = Path(samples_path or run_dir / "samples" / "samples.npz")
    images, labels, sample_names = load_samples(samples_path)
    if sample_names != class_names:
        raise DDPMError(f"the samples' classes {sample_names} are not the run's classes {class_names}")
    data = load_data(cfg.data, progress=progress)
    classifier, heldout = load_or_train_classifier(data, run_dir / "classifier.pt", progress=progress)
    judged, confusion = judge(images, labels, classifier, data)
    metrics = {
        "step": ckpt["step"],
        "samples": str(samples_path),
        "num_samples": len(labels),
        "sampling": sample_settings(samples_path),
        "classifier_heldout_accuracy": round(heldout, 4),
        "class_accuracy": round(judged["class_accuracy"], 4),
        "per_class_accuracy": judged["per_class_accuracy"],
        "domain": judged["domain"],
    }
    if inception != "off":
        reference, baseline = reference_split(data)
        try:
            metrics["inception"] = _rounded(inception_metrics(reference.images, images, matched_baseline(baseline, labels),
                                                              inception_weights))
        except InceptionUnavailable as err:
            if inception == "on":
                raise DDPMError(str(err)) from None
            metrics["inception"] = {"skipped": str(err)}
            print(f"[evaluate] standard FID/KID/IS skipped: {err}", flush=True)
    plot = plot_confusion(confusion, class_names, title=f"class accuracy {judged['class_accuracy']:.1%}")
    save_figure(plot.figure, run_dir / "eval" / "confusion.png")
    atomic_write_bytes((json.dumps(metrics, indent=2) + "\n").encode(), run_dir / "metrics.json")
    if progress:
        d = metrics["domain"]
        worst = min(metrics["per_class_accuracy"].items(), key=lambda kv: kv[1])
        print(f"[evaluate] class accuracy {judged['class_accuracy']:.1%} over {len(labels)} samples "
              f"(classifier held-out accuracy {heldout:.1%}; weakest class {worst[0]} {worst[1]:.0%})\n"
              f"[evaluate] domain FID {d['fid']:.4g} (real vs real {d['fid_real']:.4g}), "
              f"KID {d['kid']:.4g} (real {d['kid_real']:.4g}), IS {d['is']:.3g} (real {d['is_real']:.3g}) "
              f"-> {run_dir / 'metrics.json'}, {run_dir / 'eval' / 'confusion.png'}", flush=True)
    return metrics


def quality_sweep(run_dir: str | Path, settings: list[dict], per_class: int = 20, seed: int = 0,
                  batch_size: int = 512, progress: bool = True, device: str = "cpu") -> list[dict]:
    """Sample ``per_class`` images per class under each setting and judge them.

    A setting overrides the run's ``sampler``, ``steps``, ``guidance`` or ``eta``. Every setting
    starts from the same seed. Each row holds the setting, ``nfe`` (network evaluations per
    image: steps, doubled when the guidance scale is neither 0 nor 1), seconds, class accuracy and the domain FID/KID/IS.
    """
    model, cfg, class_names, _ = load_run(run_dir)
    model = model.to(device)
    data = load_data(cfg.data, progress=False)
    classifier, _ = load_or_train_classifier(data, Path(run_dir) / "classifier.pt", progress=progress)
    labels = torch.arange(len(class_names)).repeat_interleave(per_class)
    rows = []
    for setting in settings:
        unknown = set(setting) - {"sampler", "steps", "guidance", "eta"}
        if unknown:
            raise DDPMError(f"unknown sweep setting(s) {sorted(unknown)}; use sampler, steps, guidance, eta")
        s = {"sampler": cfg.sample.sampler, "steps": cfg.sample.steps, "guidance": cfg.sample.guidance_scale,
             "eta": cfg.sample.eta, **setting}
        if s["sampler"] == "ddpm":
            s["steps"] = cfg.diffusion.timesteps
        started = time.time()
        images = generate(model, cfg, labels, sampler=s["sampler"], steps=s["steps"], guidance_scale=s["guidance"],
                          eta=s["eta"], seed=seed, batch_size=batch_size, progress=False)
        seconds = time.time() - started
        judged, _ = judge(images, labels, classifier, data)
        row = {**s, "nfe": s["steps"] * (1 if s["guidance"] in (0, 1) else 2), "seconds": round(seconds, 2),
               "class_accuracy": round(judged["class_accuracy"], 4), **judged["domain"]}
        rows.append(row)
        if progress:
            print(f"[sweep] {s['sampler']} {s['steps']} steps, guidance {s['guidance']}: "
                  f"class accuracy {row['class_accuracy']:.1%}, domain FID {row['fid']:.4g} "
                  f"(real {row['fid_real']:.4g}) in {seconds:.0f}s", flush=True)
    return rows


def run_sweep(run_dir: str | Path, kind: str, per_class: int = 20, progress: bool = True,
              device: str = "cpu") -> list[dict]:
    """:func:`quality_sweep` over :data:`SWEEPS` ``[kind]``, saved as ``RUN/eval/sweep_<kind>.json`` and ``.png``."""
    from .viz import plot_sweep, save_figure

    if kind not in SWEEPS:
        raise DDPMError(f"unknown sweep {kind!r}; choose one of: {', '.join(SWEEPS)}")
    rows = quality_sweep(run_dir, SWEEPS[kind], per_class=per_class, progress=progress, device=device)
    out = Path(run_dir) / "eval"
    atomic_write_bytes((json.dumps(rows, indent=2) + "\n").encode(), out / f"sweep_{kind}.json")
    axes = plot_sweep(rows, "steps" if kind == "steps" else "guidance",
                      title=f"{Path(run_dir).name}: {per_class} samples per class per setting")
    save_figure(axes[0].figure, out / f"sweep_{kind}.png")
    return rows


@cli
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ddpm_lib.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", "--run", dest="run", required=True, help="run directory")
    p.add_argument("--samples", help="samples .npz (default: RUN/samples/samples.npz)")
    p.add_argument("--inception", default="auto", choices=("auto", "on", "off"),
                   help="standard Inception FID/KID/IS: auto = when the weights can be had (default)")
    p.add_argument("--inception-weights", metavar="FILE",
                   help="local copy of torch-fidelity's weights-inception-2015-12-05-6726825d.pth "
                        "(default: $DDPM_INCEPTION_WEIGHTS, else download)")
    p.add_argument("--sweep", choices=tuple(SWEEPS), help="instead of judging a samples file, sweep a sampling setting")
    p.add_argument("--per-class", type=int, default=20, help="images per class and setting in a sweep")
    p.add_argument("--device", default="cpu", help="where a sweep samples: cpu or cuda")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.sweep:
        if args.per_class < 2:
            raise DDPMError(f"--per-class must be at least 2 for a sweep, got {args.per_class}")
        run_sweep(args.run, args.sweep, per_class=args.per_class, progress=not args.quiet, device=args.device)
    else:
        evaluate(args.run, args.samples, args.inception, args.inception_weights, progress=not args.quiet)


if __name__ == "__main__":
    main()
