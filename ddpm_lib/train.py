"""Train a class-conditional DDPM, on one process or many.

    python -m ddpm_lib.train --config digits                        # one process
    python -m ddpm_lib.train --config textures --set train.epochs=20 --run-dir runs/tex
    python -m ddpm_lib.train --run-dir runs/tex                     # continue a run: its own config
    python -m ddpm_lib.train --config digits --resume never         # refuse to touch an existing run
    torchrun --standalone --nproc_per_node=2 -m ddpm_lib.train --config digits       # 2 ranks (GPUs or CPU)
    torchrun --standalone --nproc_per_node=4 --max-restarts=3 -m ddpm_lib.train ...  # survive crashes

Distributed rules: every rank computes; rank 0 alone logs and writes snapshots; the
batch size is per rank (global batch = batch_size x world size); each rank reads its
own shard of every epoch (``DistributedSampler``) and draws its own noise (seed + rank).
A snapshot holds every rank's RNG state, so a run interrupted at any step and resumed
with the same world size ends bitwise identical to an uninterrupted one on the CPU (on
GPUs, where some kernels are nondeterministic, with ``train.deterministic=true``).
Resumed with another world size, the planned epochs complete (:func:`planned_steps`).
SIGTERM (cluster preemption) saves a snapshot at the next step and exits cleanly.

The program reads top to bottom: configuration, data, model and optimizer, resume,
the loop, the final checkpoint. Outputs go to the run directory (``runs/<preset>`` by
default): ``config.yaml``, ``log.jsonl``, ``snapshot.pt`` (full state, every
``train.snapshot_every`` steps and at the end), ``ema.pt`` (weights for sampling).
Training writes only into a new or empty folder or into its own run
(:func:`inspect_run_dir`). Starting again in a run directory that holds a snapshot
resumes from it (``--resume auto``, the default).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm.auto import tqdm

from .checkpoint import (atomic_save, atomic_write_bytes, ema_payload, is_temp_file_of, load_checkpoint,
                         remove_stale_temp_files)
from .config import Config, config_yaml, diff_configs, load_config, saved_config
from .data import load_data
from .diffusion import diffusion_loss
from .dist import (DistEnv, any_rank, barrier, broadcast_module_, distributed, exit_worker_if_distributed,
                   gather_objects, mean_over_ranks)
from .ema import EMA
from .errors import DDPMError, cli, writing
from .schedules import schedule_of
from .unet import build_unet, count_parameters

# The CPU backward of a 1x1 conv returns its weight gradient with transposed strides; DDP then
# copies that one small gradient into its bucket and warns on every rank. Harmless, so quiet.
warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

# Keys that may change when a run resumes; any other difference is refused.
RESUMABLE_KEYS = ("train.epochs", "train.max_steps", "train.log_every", "train.snapshot_every",
                  "train.threads", "train.device", "train.deterministic", "data.num_workers")


@dataclass
class TrainState:
    """Where the loop is: ``step`` optimizer steps done; ``seen`` images of ``epoch``'s shuffled
    order used so far, by all ranks together (``batches x batch_size x world size``)."""

    step: int = 0
    epoch: int = 0
    seen: int = 0


class SkipFirst(Sampler):
    """Yield the indices of ``sampler`` after skipping the first ``skip`` of them (mid-epoch resume)."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(self.sampler)[self.skip:])

    def __len__(self):
        return max(len(self.sampler) - self.skip, 0)


def skip_per_rank(seen: int, world_size: int) -> int:
    """How many of its shard's indices each rank skips to resume an epoch after ``seen`` images.

    ``DistributedSampler`` deals the epoch's permutation round-robin (rank r reads positions
    r, r + W, ...), so after k batches of B on each of W ranks exactly the first ``k B W`` positions
    were used, and ``seen / W`` per rank are skipped. Resumed with another world size W', rounding
    up to whole positions re-reads nothing and skips at most W' - 1 images of that epoch.
    """
    return -(-seen // world_size)


def planned_steps(state: TrainState, dataset_size: int, world_size: int, cfg: Config) -> int:
    """The optimizer step at which the run ends, planned from where ``state`` is.

    The rule for a run resumed with another world size: the planned *epochs* complete. The rest of
    the current epoch and the remaining epochs are counted in batches of the new world size, so a
    run started on 1 rank and resumed on 2 sees the same images, in about half the remaining steps;
    ``train.max_steps`` (if set) still caps the step count. With an unchanged world size this is
    ``epochs x batches per epoch``.
    """
    t = cfg.train
    per_rank = dataset_size // world_size  # DistributedSampler with drop_last
    per_epoch = per_rank // t.batch_size
    this_epoch = max(0, per_rank - skip_per_rank(state.seen, world_size)) // t.batch_size
    later = max(0, t.epochs - state.epoch - 1) * per_epoch
    total = state.step + (this_epoch + later if state.epoch < t.epochs else 0)
    return min(total, t.max_steps) if t.max_steps else total


def planned_steps_of(cfg: Config, world_size: int = 1) -> int:
    """The step count of a new run of ``cfg`` on ``world_size`` ranks (loads the data to count it)."""
    return planned_steps(TrainState(), len(load_data(cfg.data, progress=False)), world_size, cfg)


def lr_at(step: int, total_steps: int, cfg: Config) -> float:
    """Linear warm-up over ``lr_warmup_steps``, then constant or cosine decay to ``lr_min_ratio * lr``."""
    t = cfg.train
    if step < t.lr_warmup_steps:
        return t.lr * (step + 1) / t.lr_warmup_steps
    if t.lr_schedule == "constant":
        return t.lr
    progress = min(1.0, (step - t.lr_warmup_steps) / max(1, total_steps - t.lr_warmup_steps))
    return t.lr * (t.lr_min_ratio + (1 - t.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def rng_state() -> dict:
    """Every random stream of this process, as tensors and plain data (so snapshots load with
    ``weights_only=True``): torch's, Python's ``random`` and numpy's legacy global generator."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``: ``auto`` is bf16 on GPUs that support it, else off."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if amp == "fp16" and device.type != "cuda":
        raise DDPMError("train.amp=fp16 needs a CUDA device; use train.amp=bf16 or none on CPU")
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


RUN_FILES = ("config.yaml", "snapshot.pt", "ema.pt", "log.jsonl")  # what training writes into a run directory


def incompatible_keys(saved: dict, cfg: Config) -> list[str]:
    """Config keys that differ between a run's saved config and ``cfg`` and may not change on resume."""
    return [k for k in diff_configs(saved, cfg.to_dict()) if k not in RESUMABLE_KEYS and not k.startswith("sample.")]


def inspect_run_dir(run_dir: Path, cfg: Config, resume: str) -> dict | None:
    """Decide, reading only, whether training may write into ``run_dir``; return the snapshot to resume.

    Training writes only into a new or empty folder, or into a run of its own with a compatible
    config: one with ``snapshot.pt`` (resumed), or one killed before its first snapshot (only its
    ``config.yaml``, of a compatible config, and ``log.jsonl``). Anything else - a folder of the
    user's files, finished weights without a snapshot, another config - is refused with one line,
    before a byte is written.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise DDPMError(f"--run-dir {run_dir} is a file; give a folder: a new or empty one, or a run to resume")
    snapshot_path = run_dir / "snapshot.pt"
    if snapshot_path.exists() or (run_dir / "ema.pt").exists():
        if resume == "never":
            raise DDPMError(f"{run_dir} already holds a trained run; pass --resume auto to continue it "
                            f"or choose another --run-dir")
        if not snapshot_path.exists():
            raise DDPMError(f"{run_dir} holds trained weights (ema.pt) but no snapshot.pt to resume from; training "
                            f"there would overwrite them: choose another --run-dir")
        snapshot = load_checkpoint(snapshot_path)
        if not isinstance(snapshot.get("state"), dict) or "rng" not in snapshot:
            raise DDPMError(f"{snapshot_path} is not a training snapshot (no 'state' or 'rng' entry); "
                            f"choose another --run-dir")
        changed = incompatible_keys(saved_config(snapshot["config"]), cfg)
        if changed:
            raise DDPMError(f"{snapshot_path} was trained with a different config ({', '.join(changed)} differ); "
                            f"use a new --run-dir or the original settings")
        return snapshot
    contents = sorted(p.name for p in run_dir.iterdir() if not is_temp_file_of(p.name, RUN_FILES)) \
        if run_dir.is_dir() else []
    if contents and not _unfinished_run(run_dir, cfg, contents):
        listing = ", ".join(contents[:3]) + (f" and {len(contents) - 3} more" if len(contents) > 3 else "")
        raise DDPMError(f"{run_dir} is not empty and is not a run of this config to resume (it holds {listing}); "
                        f"training writes only into a new or empty folder or its own run: choose another --run-dir")
    return None


def _unfinished_run(run_dir: Path, cfg: Config, contents: list[str]) -> bool:
    """A run of a compatible config killed before its first snapshot: ``config.yaml`` [+ ``log.jsonl``]."""
    if "config.yaml" not in contents or not set(contents) <= {"config.yaml", "log.jsonl"}:
        return False
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(saved, dict) and not incompatible_keys(saved, cfg)


def claim_run_dir(run_dir: Path, cfg: Config, resume_step: int) -> None:
    """Rank 0, after :func:`inspect_run_dir` allowed it: create the folder, write ``config.yaml``,
    remove temporary files a killed write left, and drop the log records of steps after
    ``resume_step`` (they are trained again, so the log tells one history)."""
    with writing(run_dir, "create the run directory"):
        run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(run_dir, RUN_FILES)
    atomic_write_bytes(config_yaml(cfg).encode(), run_dir / "config.yaml")
    log = run_dir / "log.jsonl"
    if log.exists():
        lines = log.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _logged_step(line) <= resume_step]
        if kept != lines:
            atomic_write_bytes("".join(kept).encode(), log)


def _logged_step(line: str) -> float:
    """The step of a ``log.jsonl`` line; infinity for a line cut short by a kill (never kept)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


class ProgressBar:
    """A tqdm bar in a terminal; elsewhere (a notebook cell fed by ``launch``, papermill, a log
    file) one plain line per logging step, at most every ``every`` seconds, so chatty
    output never floods a pipe."""

    def __init__(self, total: int, initial: int, enabled: bool, every: float = 10.0):
        self.total, self.enabled, self.every, self.last = total, enabled, every, 0.0
        self.tty = sys.stdout.isatty()
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                        file=sys.stdout) if enabled and self.tty else None

    def update(self, n: int = 1) -> None:
        if self.bar:
            self.bar.update(n)

    def report(self, step: int, **values) -> None:
        if self.bar:
            self.bar.set_postfix(**values)
        elif self.enabled and (time.time() - self.last >= self.every or step == self.total):
            self.last = time.time()
            print(f"[train] step {step}/{self.total} " + " ".join(f"{k}={v}" for k, v in values.items()), flush=True)

    def close(self) -> None:
        if self.bar:
            self.bar.close()


class StopSignal:
    """Remember a SIGTERM (a cluster preempting the job) so the loop can stop cleanly at a step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train(cfg: Config, run_dir: str | Path, resume: str = "auto", progress: bool = True,
          stop_after: int | None = None) -> Path:
    """Train ``cfg`` into ``run_dir`` and return the run directory.

    Runs as one process, or as one rank of many under ``torchrun`` (see ``dist``).
    ``stop_after`` ends this call after that many steps (counted from the start of the
    run, not of this call) with a snapshot, as an interruption would: calling again
    resumes. Notebooks use it to train in chunks; tests to check exact resumption.
    """
    with distributed(cfg.train.device, cfg.train.threads) as env, StopSignal() as stop, \
            deterministic_kernels(cfg.train.deterministic):
        return _train(cfg, Path(run_dir), resume, progress, stop_after, env, stop)


@contextmanager
def deterministic_kernels(enabled: bool):
    """With ``enabled``, only deterministic kernels inside the block (``train.deterministic``).

    On the CPU our training is deterministic anyway. On GPUs some kernels (atomic adds in
    convolution and attention backward passes, cuDNN autotuning) are not, so two runs, or a
    run and its resumption, drift apart in the last bits; this switch trades some speed for
    repeatability (PyTorch's "Reproducibility" notes). An op without a deterministic kernel
    then raises instead of silently differing. The previous settings return afterwards.
    """
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's deterministic workspace
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


def _train(cfg: Config, run_dir: Path, resume: str, progress: bool, stop_after: int | None,
           env: DistEnv, stop: StopSignal) -> Path:
    t = cfg.train
    device = env.device
    torch.manual_seed(t.seed + env.rank)  # each rank draws its own noise and timesteps
    random.seed(t.seed + env.rank)
    np.random.seed(t.seed + env.rank)

    # Data: held in memory; each rank reads its own shard, reshuffled every epoch from (seed, epoch);
    # flips, if any, are a function of (seed, epoch, image index), wherever the image is loaded.
    data = load_data(cfg.data, progress=progress and env.is_main)
    dataset = data.dataset(hflip=cfg.data.hflip, seed=t.seed)
    sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                 seed=t.seed, drop_last=True)
    if len(sampler) < t.batch_size:
        raise DDPMError(f"train.batch_size={t.batch_size} x {env.world_size} ranks is larger than the dataset "
                        f"({len(dataset)} images)")

    # Model (DDP-wrapped when distributed: gradients are averaged over ranks in backward),
    # optimizer, EMA, schedule, mixed precision.
    # channels_last (NHWC) weights and batches: 0-7% more img/s on 2 CPU threads (scripts/bench.py, levers)
    net = build_unet(cfg.model, data.channels, data.num_classes, data.img_size)
    net = net.to(device, memory_format=torch.channels_last)
    model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None) if env.distributed else net
    # fused AdamW: one kernel for the whole update (3-11% more img/s on 2 CPU threads, 5 runs of scripts/bench.py)
    optimizer = torch.optim.AdamW(net.parameters(), lr=t.lr, weight_decay=t.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))
    amp_dtype = autocast_dtype(t.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = EMA(net, decay=t.ema_decay, warmup=t.ema_warmup)
    schedule = schedule_of(cfg)
    d = cfg.diffusion
    loss_options = dict(p_uncond=d.p_uncond, prediction=d.prediction, weighting=d.loss_weight, gamma=d.min_snr_gamma,
                        t_sampling=d.t_sampling)

    # Resume from the run directory's snapshot, if any. Every rank checks the folder before rank 0
    # writes anything into it.
    state = TrainState()
    snapshot = inspect_run_dir(run_dir, cfg, resume)
    if snapshot is not None:
        try:
            net.load_state_dict(snapshot["model"])
            optimizer.load_state_dict(snapshot["optimizer"])
            scaler.load_state_dict(snapshot["scaler"])
            ema.load_state_dict(snapshot["ema"])
            state = TrainState(**snapshot["state"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise DDPMError(f"{run_dir / 'snapshot.pt'} does not fit this run ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}); choose another --run-dir") from None
        if len(snapshot["rng"]) == env.world_size:
            set_rng_state(snapshot["rng"][env.rank])
    barrier(env)
    if env.is_main:
        claim_run_dir(run_dir, cfg, state.step)
    barrier(env)  # rank 0 has created the run directory
    total_steps = planned_steps(state, len(dataset), env.world_size, cfg)

    def save_snapshot() -> None:
        rngs = gather_objects(env, rng_state())  # every rank's random state, for exact resumption
        if env.is_main:
            atomic_save({
                "config": cfg.to_dict(), "class_names": data.class_names, "in_channels": data.channels,
                "model": net.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "ema": ema.state_dict(), "state": vars(state).copy(), "rng": rngs, "world_size": env.world_size,
            }, run_dir / "snapshot.pt")
        barrier(env)

    say = print if progress and env.is_main else (lambda *a, **k: None)
    say(f"[train] {cfg.name}: {len(data)} images, {data.num_classes} classes, {data.img_size}px x {data.channels}ch | "
        f"U-Net {count_parameters(net) / 1e6:.2f}M params | {cfg.diffusion.schedule} schedule, "
        f"T={cfg.diffusion.timesteps} | {env.world_size} rank(s) on {device.type}"
        f"{'' if env.backend is None else f' ({env.backend})'}, batch {t.batch_size}/rank = "
        f"{t.batch_size * env.world_size} global | amp {amp_dtype or 'off'} | {total_steps} steps | run dir {run_dir}")
    if device.type == "cpu" and not t.threads and not env.distributed and torch.get_num_threads() < (os.cpu_count() or 1):
        say(f"[train] other programs keep {(os.cpu_count() or 1) - torch.get_num_threads()} of {os.cpu_count()} cores busy: "
            f"training with {torch.get_num_threads()} thread(s), which is faster than sharing a core "
            f"(train.threads=N to choose)")
    if state.step:
        say(f"[train] resuming from step {state.step} (epoch {state.epoch}, image {state.seen} of its order)")
    if snapshot is not None and len(snapshot["rng"]) != env.world_size:
        say(f"[train] the snapshot was written by {len(snapshot['rng'])} rank(s), this run has {env.world_size}: "
            f"the remaining epochs are re-planned as {total_steps - state.step} steps of {t.batch_size * env.world_size}"
            f" images, and random streams restart, so the result is not bitwise identical to an uninterrupted run")

    if env.is_main:
        with writing(run_dir / "log.jsonl", "open"):
            log_file = open(run_dir / "log.jsonl", "a")
    else:
        log_file = None
    bar = ProgressBar(total_steps, state.step, enabled=progress and env.is_main)
    loss_sum = torch.zeros((), device=device)
    grad_sum = torch.zeros((), device=device)
    steps_since_log, t_log, t_start = 0, time.time(), time.time()

    finished, interrupted, signalled = state.step >= total_steps, False, False  # a finished run rewrites ema.pt
    while not (finished or interrupted):
        sampler.set_epoch(state.epoch)
        dataset.set_epoch(state.epoch)
        skip = skip_per_rank(state.seen, env.world_size)
        loader = DataLoader(dataset, batch_size=t.batch_size, sampler=SkipFirst(sampler, skip),
                            drop_last=True, num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(t.seed + 1000 * state.epoch + env.rank))
        for x, y in loader:
            x = x.to(device, non_blocking=True, memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            lr = lr_at(state.step, total_steps, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = diffusion_loss(model, schedule, x, y, null_class=data.num_classes, **loss_options)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
            scaler.step(optimizer)
            scaler.update()
            ema.update(net)
            state.step += 1
            state.seen += t.batch_size * env.world_size
            if t.ema_sync_every and state.step % t.ema_sync_every == 0:
                broadcast_module_(env, ema.model)  # rank 0's EMA is the truth
            loss_sum += loss.detach()
            grad_sum += grad_norm.detach()
            steps_since_log += 1
            bar.update(1)

            finished = state.step >= total_steps
            # stop at the same step on every rank: a SIGTERM on any rank, or stop_after
            signalled = any_rank(env, stop.requested)
            interrupted = not finished and (signalled or (stop_after is not None and state.step >= stop_after))
            if state.step % t.log_every == 0 or finished or interrupted or state.step % t.snapshot_every == 0:
                mean_loss = mean_over_ranks(env, loss_sum / steps_since_log).item()  # the one host sync
                if not math.isfinite(mean_loss):
                    raise DDPMError(f"loss became {mean_loss} within steps {state.step - steps_since_log + 1}-"
                                    f"{state.step}; the last good snapshot is kept; lower train.lr or check the data")
                now = time.time()
                if env.is_main:
                    record = {"step": state.step, "epoch": state.epoch, "loss": round(mean_loss, 6), "lr": lr,
                              "grad_norm": round((grad_sum / steps_since_log).item(), 4),
                              "img_per_s": round(steps_since_log * t.batch_size * env.world_size / (now - t_log), 1),
                              "seconds": round(now - t_start, 2)}
                    with writing(run_dir / "log.jsonl"):
                        log_file.write(json.dumps(record) + "\n")
                        log_file.flush()
                    bar.report(state.step, loss=f"{mean_loss:.4f}", lr=f"{lr:.1e}", img_s=record["img_per_s"])
                loss_sum.zero_()
                grad_sum.zero_()
                steps_since_log, t_log = 0, now
            if state.step % t.snapshot_every == 0 or finished or interrupted:
                save_snapshot()
            if finished or interrupted:
                break
        else:  # the epoch ran out (no break)
            state.epoch += 1
            state.seen = 0

    bar.close()
    if log_file:
        log_file.close()
    if interrupted:
        if not signalled:
            why = f"stop_after={stop_after} reached"
        else:
            why = "SIGTERM received" if stop.requested else "another rank received SIGTERM"
        say(f"[train] {why}: stopped at step {state.step} of {total_steps}; snapshot saved, "
            f"run again to resume from {run_dir / 'snapshot.pt'}")
        return run_dir
    if env.is_main:
        atomic_save(ema_payload(cfg, data.class_names, data.channels, ema.state_dict()["model"], state.step),
                    run_dir / "ema.pt")
    barrier(env)
    say(f"[train] done: {state.step} steps in {time.time() - t_start:.1f}s; weights {run_dir / 'ema.pt'}, "
        f"log {run_dir / 'log.jsonl'}")
    return run_dir


def run_config(run_dir: str | None) -> Path | None:
    """The ``config.yaml`` of the run in ``run_dir``, if there is one: continuing a run needs only its folder."""
    path = Path(run_dir) / "config.yaml" if run_dir else None
    return path if path is not None and path.is_file() else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ddpm_lib.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="preset name (ddpm_lib/configs/*.yaml) or a YAML path (default: the "
                                          "config of the run in --run-dir when it has one, else digits)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--run-dir", help="output directory (default: runs/<preset name>)")
    parser.add_argument("--resume", choices=("auto", "never"), default="auto",
                        help="auto: continue from run-dir/snapshot.pt if present; never: refuse an existing run")
    parser.add_argument("--stop-after", type=int, metavar="STEP",
                        help="stop with a snapshot once the run reaches STEP (train in chunks; run again to resume)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary lines")
    return parser.parse_args(argv)


@cli
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.config or run_config(args.run_dir) or "digits", args.set)
    train(cfg, args.run_dir or Path("runs") / cfg.name, resume=args.resume, progress=not args.quiet,
          stop_after=args.stop_after)
    exit_worker_if_distributed()


if __name__ == "__main__":
    main()
