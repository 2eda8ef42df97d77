"""Evaluate a run's samples: class accuracy, FID/KID/IS, and quality-vs-setting sweeps.

    python -m ddpm_lib.evaluate --run-dir runs/digits                  # judges RUN/samples/samples.npz
    python -m ddpm_lib.evaluate --run-dir runs/digits --samples runs/digits/samples/eval.npz
    python -m ddpm_lib.evaluate --run-dir runs/digits --inception-weights weights-inception-2015-12-05-6726825d.pth
    python -m ddpm_lib.evaluate --run-dir runs/digits --sweep steps     # DDIM 2..250 steps (up to T) and the full DDPM chain
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
from .config import check_seed
from .data import ImageData, load_data
from .errors import DDPMError, cli
from .metrics import InceptionUnavailable, class_accuracy, domain_metrics, inception_metrics, load_or_train_classifier
from .sample import check_batch_size, check_sampling, generate, load_samples, sample_settings

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


MIN_SAMPLES = 2  # FID needs a covariance, which one image does not have


def check_samples_fit_run(images: torch.Tensor, image_shape: tuple[int, int, int], samples_path: Path,
                          run_dir: Path) -> None:
    """Refuse (:class:`DDPMError`) samples ``images`` (N, C, H, W) that cannot be judged against
    the run's real data of ``image_shape`` (C, H, W): another shape, or fewer than :data:`MIN_SAMPLES`."""
    remake = f"sample this run with python -m ddpm_lib.sample --run-dir {run_dir}"
    got = tuple(images.shape[1:])
    if got != tuple(image_shape):
        raise DDPMError(f"{samples_path} holds images of shape (C, H, W) = {got} but run {run_dir} makes "
                        f"{tuple(image_shape)} (model.in_channels, data.img_size); {remake}")
    if len(images) < MIN_SAMPLES:
        raise DDPMError(f"{samples_path} holds {len(images)} sample(s); FID/KID need at least {MIN_SAMPLES}: "
                        f"{remake} --per-class 2 or more")


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
    model, cfg, class_names, ckpt = load_run(run_dir)
    samples_path = Path(samples_path or run_dir / "samples" / "samples.npz")
    images, labels, sample_names = load_samples(samples_path)
    if sample_names != class_names:
        raise DDPMError(f"the samples' classes {sample_names} are not the run's classes {class_names}")
    check_samples_fit_run(images, (model.in_channels, cfg.data.img_size, cfg.data.img_size), samples_path, run_dir)
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


SWEEP_KEYS = ("sampler", "steps", "guidance", "eta")


def sweep_settings(kind: str, timesteps: int) -> list[dict]:
    """The settings of :data:`SWEEPS` ``[kind]`` that a run of ``timesteps`` diffusion steps can take:
    DDIM step counts above ``timesteps`` are left out (the full DDPM chain is then the longest setting)."""
    return [setting for setting in SWEEPS[kind] if setting.get("steps", 0) <= timesteps]


def resolve_sweep_settings(settings: list[dict], cfg) -> list[dict]:
    """Each sweep setting (a dict overriding some of :data:`SWEEP_KEYS`) completed with the run's
    ``cfg.sample`` values; ``steps`` is the full chain for the ddpm sampler. Refuses
    (:class:`DDPMError`) an unknown key or a value the samplers cannot use, naming the setting."""
    if not isinstance(settings, (list, tuple)) or not all(isinstance(x, dict) for x in settings):
        raise DDPMError(f"sweep settings must be a list of dicts such as {{'steps': 10}}; got {settings!r}")
    resolved = []
    for setting in settings:
        unknown = set(setting) - set(SWEEP_KEYS)
        if unknown:
            raise DDPMError(f"unknown sweep setting(s) {sorted(unknown)}; use {', '.join(SWEEP_KEYS)}")
        s = {"sampler": cfg.sample.sampler, "steps": cfg.sample.steps, "guidance": cfg.sample.guidance_scale,
             "eta": cfg.sample.eta, **setting}
        if s["sampler"] == "ddpm":
            s["steps"] = cfg.diffusion.timesteps
        try:
            check_sampling(s, cfg.diffusion.timesteps, prefix="")
        except DDPMError as err:
            raise DDPMError(f"sweep setting {setting}: {err}") from None
        resolved.append(s)
    return resolved


def check_device(device: str) -> torch.device:
    """``device`` (cpu, cuda, cuda:N) as a :class:`torch.device` this machine has; otherwise a :class:`DDPMError`."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise DDPMError(f"unknown device {device!r}; use cpu or cuda") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DDPMError(f"device {device} was asked for but PyTorch sees no CUDA device; use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise DDPMError(f"device {device} does not exist: this machine has {count} GPU(s); use cuda:0..cuda:{count - 1}")
    return parsed


def quality_sweep(run_dir: str | Path, settings: list[dict], per_class: int = 20, seed: int = 0,
                  batch_size: int = 512, progress: bool = True, device: str = "cpu") -> list[dict]:
    """Sample ``per_class`` images per class under each setting and judge them.

    A setting overrides the run's ``sampler``, ``steps``, ``guidance`` or ``eta``; all of them are
    checked (:func:`resolve_sweep_settings`) before anything is sampled or written. Every setting
    starts from the same seed. Each row holds the setting, ``nfe`` (network evaluations per
    image: steps, doubled when the guidance scale is neither 0 nor 1), seconds, class accuracy and the domain FID/KID/IS.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 2:
        raise DDPMError(f"per_class must be at least 2 images per class and setting; got {per_class!r}")
    check_seed(seed, "seed")
    check_batch_size(batch_size, "batch_size")
    device = check_device(device)
    model, cfg, class_names, _ = load_run(run_dir)
    resolved = resolve_sweep_settings(settings, cfg)  # every setting is checked before any work is done
    model = model.to(device)
    data = load_data(cfg.data, progress=False)
    classifier, _ = load_or_train_classifier(data, Path(run_dir) / "classifier.pt", progress=progress)
    labels = torch.arange(len(class_names)).repeat_interleave(per_class)
    rows = []
    for s in resolved:
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
    """:func:`quality_sweep` over :func:`sweep_settings` ``(kind, T)``, saved as ``RUN/eval/sweep_<kind>.json`` and ``.png``."""
    from .viz import plot_sweep, save_figure

    if kind not in SWEEPS:
        raise DDPMError(f"unknown sweep {kind!r}; choose one of: {', '.join(SWEEPS)}")
    _, cfg, _, _ = load_run(run_dir)
    rows = quality_sweep(run_dir, sweep_settings(kind, cfg.diffusion.timesteps), per_class=per_class,
                         progress=progress, device=device)
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
