"""Train a class-conditional DDPM, on one process or many.

    python -m ddpm_lib.train --config digits                        # one process
    python -m ddpm_lib.train --config textures --set train.epochs=20 --run-dir runs/tex
    python -m ddpm_lib.train --config digits --resume never         # refuse to touch an existing run
    torchrun --standalone --nproc_per_node=2 -m ddpm_lib.train --config digits       # 2 ranks (GPUs or CPU)
    torchrun --standalone --nproc_per_node=4 --max-restarts=3 -m ddpm_lib.train ...  # survive crashes

Distributed rules: every rank computes; rank 0 alone logs and writes snapshots; the
batch size is per rank (global batch = batch_size x world size); each rank reads its
own shard of every epoch (``DistributedSampler``) and draws its own noise (seed + rank).
A snapshot holds every rank's RNG state, so a run interrupted at any step and resumed
with the same world size ends bitwise identical to an uninterrupted one. SIGTERM
(cluster preemption) saves a snapshot at the next step and exits cleanly.

The program reads top to bottom: configuration, data, model and optimizer, resume,
the loop, the final checkpoint. Outputs go to the run directory (``runs/<preset>`` by
default): ``config.yaml``, ``log.jsonl``, ``snapshot.pt`` (full state, every
``train.snapshot_every`` steps and at the end), ``ema.pt`` (weights for sampling).
Starting again in a run directory that holds a snapshot resumes from it
(``--resume auto``, the default).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm.auto import tqdm

from .checkpoint import atomic_save, ema_payload, load_checkpoint
from .config import Config, diff_configs, load_config, save_config
from .data import load_data
from .diffusion import diffusion_loss
from .dist import (DistEnv, any_rank, barrier, broadcast_module_, distributed, exit_worker_if_distributed,
                   gather_objects, mean_over_ranks)
from .ema import EMA
from .errors import DDPMError, cli
from .schedules import make_schedule
from .unet import build_unet, count_parameters

# The CPU backward of a 1x1 conv returns its weight gradient with transposed strides; DDP then
# copies that one small gradient into its bucket and warns on every rank. Harmless, so quiet.
warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

# Keys that may change when a run resumes; any other difference is refused.
RESUMABLE_KEYS = ("train.epochs", "train.max_steps", "train.log_every", "train.snapshot_every",
                  "train.threads", "train.device", "data.num_workers")


@dataclass
class TrainState:
    """Where the loop is: ``step`` optimizer steps done, ``batch`` batches into ``epoch``."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


class SkipFirst(Sampler):
    """Yield the indices of ``sampler`` after skipping the first ``skip`` of them (mid-epoch resume)."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(self.sampler)[self.skip:])

    def __len__(self):
        return max(len(self.sampler) - self.skip, 0)


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
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``: ``auto`` is bf16 on GPUs that support it, else off."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if amp == "fp16" and device.type != "cuda":
        raise DDPMError("train.amp=fp16 needs a CUDA device; use train.amp=bf16 or none on CPU")
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def prepare_run_dir(run_dir: Path, cfg: Config, resume: str, write: bool = True) -> dict | None:
    """Create ``run_dir`` (if ``write``) and return its snapshot to resume from, or None."""
    snapshot_path = run_dir / "snapshot.pt"
    if resume == "never" and (snapshot_path.exists() or (run_dir / "ema.pt").exists()):
        raise DDPMError(f"{run_dir} already holds a trained run; pass --resume auto to continue it "
                        f"or choose another --run-dir")
    snapshot = load_checkpoint(snapshot_path) if snapshot_path.exists() else None
    if snapshot is not None:
        changed = [k for k in diff_configs(snapshot["config"], cfg.to_dict())
                   if k not in RESUMABLE_KEYS and not k.startswith("sample.")]
        if changed:
            raise DDPMError(f"{snapshot_path} was trained with a different config ({', '.join(changed)} differ); "
                            f"use a new --run-dir or the original settings")
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    return snapshot


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
    with distributed(cfg.train.device, cfg.train.threads) as env, StopSignal() as stop:
        return _train(cfg, Path(run_dir), resume, progress, stop_after, env, stop)


def _train(cfg: Config, run_dir: Path, resume: str, progress: bool, stop_after: int | None,
           env: DistEnv, stop: StopSignal) -> Path:
    t = cfg.train
    device = env.device
    torch.manual_seed(t.seed + env.rank)  # each rank draws its own noise and timesteps
    random.seed(t.seed + env.rank)
    np.random.seed(t.seed + env.rank)

    # Data: held in memory; each rank reads its own shard, reshuffled every epoch from (seed, epoch).
    data = load_data(cfg.data, progress=progress and env.is_main)
    dataset = data.dataset(hflip=cfg.data.hflip)
    sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                 seed=t.seed, drop_last=True)
    batches_per_epoch = len(sampler) // t.batch_size
    if batches_per_epoch == 0:
        raise DDPMError(f"train.batch_size={t.batch_size} x {env.world_size} ranks is larger than the dataset "
                        f"({len(dataset)} images)")
    total_steps = t.epochs * batches_per_epoch
    if t.max_steps:
        total_steps = min(total_steps, t.max_steps)

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
    schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)

    # Resume from the run directory's snapshot, if any.
    state = TrainState()
    snapshot = prepare_run_dir(run_dir, cfg, resume, write=env.is_main)
    if snapshot is not None:
        net.load_state_dict(snapshot["model"])
        optimizer.load_state_dict(snapshot["optimizer"])
        scaler.load_state_dict(snapshot["scaler"])
        ema.load_state_dict(snapshot["ema"])
        state = TrainState(**snapshot["state"])
        if len(snapshot["rng"]) == env.world_size:
            set_rng_state(snapshot["rng"][env.rank])
        elif env.is_main and progress:
            print(f"[train] the snapshot was written by {len(snapshot['rng'])} ranks, this run has "
                  f"{env.world_size}: random streams restart, so the result will not be bitwise identical")
    barrier(env)  # rank 0 has created the run directory

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
    if state.step:
        say(f"[train] resuming from step {state.step} (epoch {state.epoch}, batch {state.batch})")

    log_file = open(run_dir / "log.jsonl", "a") if env.is_main else None
    bar = ProgressBar(total_steps, state.step, enabled=progress and env.is_main)
    loss_sum = torch.zeros((), device=device)
    grad_sum = torch.zeros((), device=device)
    steps_since_log, t_log, t_start = 0, time.time(), time.time()

    finished, interrupted = state.step >= total_steps, False  # a finished run just rewrites ema.pt
    while not (finished or interrupted):
        sampler.set_epoch(state.epoch)
        loader = DataLoader(dataset, batch_size=t.batch_size, sampler=SkipFirst(sampler, state.batch * t.batch_size),
                            drop_last=True, num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(t.seed + 1000 * state.epoch + env.rank))
        for x, y in loader:
            x = x.to(device, non_blocking=True, memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            lr = lr_at(state.step, total_steps, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = diffusion_loss(model, schedule, x, y, null_class=data.num_classes,
                                      p_uncond=cfg.diffusion.p_uncond)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
            scaler.step(optimizer)
            scaler.update()
            ema.update(net)
            state.step += 1
            state.batch += 1
            if t.ema_sync_every and state.step % t.ema_sync_every == 0:
                broadcast_module_(env, ema.model)  # rank 0's EMA is the truth
            loss_sum += loss.detach()
            grad_sum += grad_norm.detach()
            steps_since_log += 1
            bar.update(1)

            finished = state.step >= total_steps
            # stop at the same step on every rank: a SIGTERM on any rank, or stop_after
            interrupted = not finished and (any_rank(env, stop.requested) or
                                            (stop_after is not None and state.step >= stop_after))
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
            state.batch = 0

    bar.close()
    if log_file:
        log_file.close()
    if interrupted:
        why = "SIGTERM received" if stop.requested else "stop_after reached"
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ddpm_lib.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="digits", help="preset name (ddpm_lib/configs/*.yaml) or a YAML path")
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
    cfg = load_config(args.config, args.set)
    train(cfg, args.run_dir or Path("runs") / cfg.name, resume=args.resume, progress=not args.quiet,
          stop_after=args.stop_after)
    exit_worker_if_distributed()


if __name__ == "__main__":
    main()
