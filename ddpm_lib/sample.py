"""Sample class-conditional images from a trained run, on one process or many.

    python -m ddpm_lib.sample --run runs/digits                       # settings from the run's config
    python -m ddpm_lib.sample --run runs/digits --per-class 16 --sampler ddim --steps 50 --guidance 2
    python -m ddpm_lib.sample --run runs/digits --classes three seven --sampler ddpm
    python -m ddpm_lib.sample --run runs/digits --prompt "digit seven"    # text naming one class
    torchrun --standalone --nproc_per_node=2 -m ddpm_lib.sample --run-dir runs/digits

Loads ``ema.pt`` (self-describing: config, class names, EMA weights) and writes
``samples/samples.npz`` (``images`` uint8 (N, C, H, W), ``labels`` int64 (N,),
``class_names``, ``settings``: the sampling settings as JSON) and ``samples/grid.png`` (one row per class) into the run directory.

The requested labels are cut into chunks of ``--batch-size``; chunk c is drawn from
a generator seeded with ``seed + c`` and chunks are dealt round-robin to the ranks
(rank r takes chunks r, r + W, ...; with one chunk per rank, rank r uses seed + r).
Rank 0 gathers every chunk (``all_gather``) and writes the files. Because a chunk's
noise depends on its index, not on the rank that drew it, the same command gives
the same images with any number of ranks.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import numbers
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import atomic_write_bytes, load_run
from .config import check_seed
from .diffusion import sample
from .dist import DistEnv, distributed, exit_worker_if_distributed, gather_objects
from .errors import DDPMError, cli
from .prompt import class_from_prompt
from .schedules import schedule_of
from .viz import as_uint8, class_grid, png_bytes


def resolve_classes(requested: list[str] | None, class_names: list[str]) -> list[int]:
    """Class indices for names or numbers given on the command line (all classes if None)."""
    if not requested:
        return list(range(len(class_names)))
    indices = []
    for item in requested:
        if item in class_names:
            indices.append(class_names.index(item))
        elif item.isdigit() and int(item) < len(class_names):
            indices.append(int(item))
        else:
            raise DDPMError(f"unknown class {item!r}; classes are: {', '.join(class_names)}")
    return indices


SAMPLERS = ("ddpm", "ddim")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_sampling(settings: dict, timesteps: int, prefix: str = "--") -> None:
    """Refuse (:class:`DDPMError`) sampling settings the samplers cannot use.

    ``settings`` holds ``sampler``, ``steps``, ``guidance`` and ``eta``; ``timesteps`` is the
    run's ``diffusion.timesteps``. A message names the setting as ``prefix + key``: the
    command-line flag (``--steps``) or, with ``prefix=""``, the sweep setting's key.
    """
    sampler, steps, guidance, eta = (settings[k] for k in ("sampler", "steps", "guidance", "eta"))
    if sampler not in SAMPLERS:
        raise DDPMError(f"{prefix}sampler must be ddpm or ddim; got {sampler!r}")
    if not _is_whole(steps) or not 1 <= steps <= timesteps:
        raise DDPMError(f"{prefix}steps must be a whole number from 1 to {timesteps} (the run's "
                        f"diffusion.timesteps); got {steps!r}")
    if not _is_number(guidance) or not math.isfinite(guidance) or guidance < 0:
        raise DDPMError(f"{prefix}guidance must be a finite number >= 0 (0: ignore the class, 1: no guidance, "
                        f"2-5: typical); got {guidance!r}")
    if not _is_number(eta) or not 0 <= eta <= 1:  # NaN fails both comparisons
        raise DDPMError(f"{prefix}eta must be between 0 (deterministic DDIM) and 1 (DDPM-like noise); got {eta!r}")


def check_batch_size(batch_size, what: str = "--batch-size") -> int:
    """``batch_size`` if it is a whole number >= 1; otherwise a one-line :class:`DDPMError`."""
    if not _is_whole(batch_size) or batch_size < 1:
        raise DDPMError(f"{what} must be a whole number of images per forward pass, at least 1; got {batch_size!r}")
    return batch_size


# A plain file stem: no path separator, no "..", no leading dot, no characters a shell or
# another file system would mangle; short enough for "<stem>_grid.png" to be a legal name.
_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_name(name: str) -> str:
    """``name`` if it is a plain file stem that stays inside ``RUN/samples/``; otherwise a :class:`DDPMError`."""
    if not _STEM.fullmatch(name) or ".." in name:
        raise DDPMError(f"--name must be a plain file stem (letters, digits, '_', '-', '.'; no '/' or '..'; "
                        f"at most 100 characters), written under RUN/samples/; got {name!r}")
    return name


@torch.no_grad()
def generate(model, cfg, labels: torch.Tensor, sampler: str, steps: int, guidance_scale: float, eta: float,
             seed: int, batch_size: int, progress: bool = True, env: DistEnv | None = None) -> torch.Tensor:
    """Images uint8 (N, C, H, W) for ``labels`` (N,), in label order, on every rank.

    Chunk c of ``batch_size`` labels is sampled with a generator seeded ``seed + c``
    by rank ``c % world_size``; the chunks are then gathered (module docstring).
    """
    env = env or DistEnv()
    device = next(model.parameters()).device
    schedule = schedule_of(cfg)
    shape = (model.in_channels, cfg.data.img_size, cfg.data.img_size)
    chunks = labels.split(batch_size)
    mine = {}
    for c in range(env.rank, len(chunks), env.world_size):
        wrap = None
        if progress and env.is_main and sys.stdout.isatty():  # elsewhere, the summary line suffices
            desc = f"sample {c + 1}/{len(chunks)}"
            wrap = lambda it, d=desc: tqdm(it, desc=d, leave=False, file=sys.stdout)  # noqa: E731
        generator = torch.Generator(device).manual_seed(seed + c)
        result = sample(model, schedule, chunks[c].to(device), shape, model.null_class, sampler=sampler, steps=steps,
                        eta=eta, guidance_scale=guidance_scale, generator=generator, progress=wrap,
                        prediction=cfg.diffusion.prediction)
        mine[c] = as_uint8(result.x.cpu())
    gathered = {}
    for part in gather_objects(env, mine):
        gathered.update(part)
    return torch.cat([gathered[c] for c in range(len(chunks))])


def save_samples(images: torch.Tensor, labels: torch.Tensor, class_names: list[str], out_dir: Path,
                 name: str = "samples", settings: dict | None = None) -> tuple[Path, Path]:
    """Write ``<name>.npz`` and ``<name>_grid.png``-style files atomically; return their paths.
    ``settings`` (sampler, steps, guidance, ...) is stored beside the images as JSON."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images.numpy(), labels=labels.numpy(), class_names=np.array(class_names),
                        settings=np.array(json.dumps(settings or {})))
    npz_path = out_dir / f"{name}.npz"
    atomic_write_bytes(buffer.getvalue(), npz_path)
    grid_path = out_dir / ("grid.png" if name == "samples" else f"{name}_grid.png")
    grid = class_grid(images, labels, class_names, per_row=min(16, max(1, int(torch.bincount(labels).max()))))
    atomic_write_bytes(png_bytes(grid), grid_path)
    return npz_path, grid_path


SAMPLE_KEYS = ("images", "labels", "class_names", "settings")  # "settings" is optional


def _remake_hint(path: Path) -> str:
    """The command that writes ``path`` again (its run is the folder above ``samples/``)."""
    run = path.parent.parent if path.parent.name == "samples" else "RUN"
    name = "" if path.stem == "samples" else f" --name {path.stem}"
    return f"make it with python -m ddpm_lib.sample --run-dir {run}{name}"


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of :data:`SAMPLE_KEYS` that the ``.npz`` at ``path`` holds, read without ever
    unpickling; a one-line :class:`DDPMError` for anything ``np.load`` cannot read."""
    if not path.exists():
        raise DDPMError(f"{path} does not exist; {_remake_hint(path)}")
    if path.is_dir():
        raise DDPMError(f"{path} is a directory, not a samples .npz file; {_remake_hint(path)}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with loaded:
            return {key: loaded[key] for key in SAMPLE_KEYS if key in loaded.files}
    except Exception as err:  # not a zip, truncated, bad CRC, pickled objects, ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "pickle" in reason:  # numpy's advice (allow_pickle=True) is the wrong fix here
            reason = "not an .npz archive of plain arrays; a samples file never needs unpickling"
        raise DDPMError(f"{path} is not a readable samples .npz ({reason}); {_remake_hint(path)}") from None


def _samples_problem(arrays: dict[str, np.ndarray]) -> str | None:
    """What makes ``arrays`` (from :func:`_read_npz`) not a samples file, or None if nothing."""
    missing = [key for key in SAMPLE_KEYS[:3] if key not in arrays]
    if missing:
        return f"it lacks {', '.join(missing)}"
    images, labels, names = arrays["images"], arrays["labels"], arrays["class_names"]
    if images.dtype != np.uint8 or images.ndim != 4:
        return f"images must be uint8 (N, C, H, W); got {images.dtype} of shape {images.shape}"
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        return f"labels must be integers (N,); got {labels.dtype} of shape {labels.shape}"
    if len(labels) != len(images):
        return f"it holds {len(images)} images but {len(labels)} labels"
    if len(images) == 0:
        return "it holds no samples"
    if names.dtype.kind != "U" or names.ndim != 1 or len(names) == 0:
        return f"class_names must be a non-empty list of strings; got {names.dtype} of shape {names.shape}"
    if labels.min() < 0 or labels.max() >= len(names):
        return f"labels must lie in 0..{len(names) - 1} (one per class name); got {labels.min()}..{labels.max()}"
    if "settings" in arrays:
        try:
            if not isinstance(json.loads(str(arrays["settings"])), dict):
                return "settings must be a JSON object"
        except json.JSONDecodeError:
            return "settings is not valid JSON"
    return None


def _read_samples(path: str | Path) -> dict[str, np.ndarray]:
    """The checked arrays of a ``samples.npz``; a one-line :class:`DDPMError` naming the file,
    what is wrong and how to make it again for anything but a file :func:`save_samples` wrote."""
    path = Path(path)
    arrays = _read_npz(path)
    problem = _samples_problem(arrays)
    if problem:
        raise DDPMError(f"{path} is not a samples file: {problem}; {_remake_hint(path)}")
    return arrays


def load_samples(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read a ``samples.npz``: (images uint8 (N, C, H, W), labels int64 (N,), class names),
    N >= 1 and every label an index into the class names; refuses (:class:`DDPMError`) any other file."""
    arrays = _read_samples(path)
    labels = torch.from_numpy(arrays["labels"].astype(np.int64))
    return torch.from_numpy(arrays["images"]), labels, [str(c) for c in arrays["class_names"]]


def sample_settings(path: str | Path) -> dict:
    """The sampling settings stored in a ``samples.npz`` ({} for files written without them)."""
    arrays = _read_samples(path)
    return json.loads(str(arrays["settings"])) if "settings" in arrays else {}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m ddpm_lib.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", "--run", dest="run", required=True,
                   help="run directory holding ema.pt (under torchrun spell it --run-dir: torchrun's own parser takes --run for its --run-path)")
    p.add_argument("--per-class", type=int, help="images per class (default: the run's sample.per_class)")
    p.add_argument("--classes", nargs="+", help="class names or indices (default: every class)")
    p.add_argument("--prompt", help='text naming one class, e.g. "a striped texture" or "digit seven" '
                                    '(matched against the class names; see ddpm_lib.prompt)')
    p.add_argument("--sampler", choices=("ddpm", "ddim"), help="default: the run's sample.sampler")
    p.add_argument("--steps", type=int, help="DDIM steps (default: the run's sample.steps)")
    p.add_argument("--eta", type=float, help="DDIM eta: 0 deterministic, 1 DDPM-like (default: the run's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale s (1: none)")
    p.add_argument("--seed", type=int, help="sampling seed")
    p.add_argument("--batch-size", type=int, help="images per forward pass")
    p.add_argument("--name", default="samples", help="output file stem under RUN/samples/")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


@cli
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_name(args.name)
    model, cfg, class_names, ckpt = load_run(args.run)
    s = cfg.sample
    per_class = args.per_class if args.per_class is not None else s.per_class
    if per_class < 1:
        raise DDPMError(f"--per-class must be at least 1, got {per_class}")
    sampler = args.sampler or s.sampler
    steps = args.steps if args.steps is not None else s.steps
    batch_size = check_batch_size(args.batch_size if args.batch_size is not None else s.batch_size)
    seed = check_seed(args.seed if args.seed is not None else s.seed, "--seed")
    settings = {"sampler": sampler, "steps": steps if sampler == "ddim" else cfg.diffusion.timesteps,
                "eta": args.eta if args.eta is not None else s.eta,
                "guidance": args.guidance if args.guidance is not None else s.guidance_scale,
                "seed": seed, "train_step": ckpt["step"]}
    check_sampling({**settings, "steps": steps}, cfg.diffusion.timesteps)  # --steps is checked even for ddpm
    if args.prompt and args.classes:
        raise DDPMError("give either --classes or --prompt, not both")
    classes = [class_from_prompt(args.prompt, class_names)] if args.prompt else resolve_classes(args.classes, class_names)
    labels = torch.tensor(classes).repeat_interleave(per_class)
    with distributed("auto") as env:
        model = model.to(env.device)
        started = time.time()
        images = generate(model, cfg, labels, sampler=sampler, steps=steps, guidance_scale=settings["guidance"],
                          eta=settings["eta"], seed=settings["seed"], batch_size=batch_size,
                          progress=not args.quiet, env=env)
        if env.is_main:
            npz, grid = save_samples(images, labels, class_names, Path(args.run) / "samples", args.name, settings)
            if not args.quiet:
                print(f"[sample] {len(labels)} images ({sampler} {settings['steps']} steps, guidance "
                      f"{settings['guidance']}) on {env.world_size} rank(s) in {time.time() - started:.1f}s -> {npz}, {grid}")
    exit_worker_if_distributed()


if __name__ == "__main__":
    main()
