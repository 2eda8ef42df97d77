"""Train a class-conditional DDPM.

    python -m ddpm_lib.train --config digits                        # the default recipe
    python -m ddpm_lib.train --config textures --set train.epochs=20 --run-dir runs/tex
    python -m ddpm_lib.train --config digits --resume never         # refuse to touch an existing run

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
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm.auto import tqdm

from .checkpoint import atomic_save, ema_payload, load_checkpoint
from .config import Config, diff_configs, load_config, save_config
from .data import load_data
from .diffusion import diffusion_loss
from .ema import EMA, unwrap
from .errors import DDPMError, cli
from .schedules import make_schedule
from .unet import build_unet, count_parameters

# Keys that may change when a run resumes; any other difference is refused.
RESUMABLE_KEYS = ("train.epochs", "train.max_steps", "train.log_every", "train.snapshot_every",
                  "train.threads", "data.num_workers")


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


def prepare_run_dir(run_dir: Path, cfg: Config, resume: str) -> dict | None:
    """Create ``run_dir`` and return its snapshot to resume from (or None for a fresh run)."""
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
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return snapshot


def train(cfg: Config, run_dir: str | Path, resume: str = "auto", progress: bool = True,
          stop_after: int | None = None) -> Path:
    """Train ``cfg`` into ``run_dir`` and return the run directory.

    ``stop_after`` ends this call after that many steps (counted from the start of the
    run, not of this call) with a snapshot, as an interruption would: calling again
    resumes. Notebooks use it to train in chunks; tests to check exact resumption.
    """
    run_dir = Path(run_dir)
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(t.seed)
    random.seed(t.seed)
    np.random.seed(t.seed)

    # Data: held in memory; the sampler reshuffles every epoch from (seed, epoch).
    data = load_data(cfg.data, progress=progress)
    dataset = data.dataset(hflip=cfg.data.hflip)
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=t.seed, drop_last=True)
    batches_per_epoch = len(sampler) // t.batch_size
    if batches_per_epoch == 0:
        raise DDPMError(f"train.batch_size={t.batch_size} is larger than the dataset ({len(dataset)} images)")
    total_steps = t.epochs * batches_per_epoch
    if t.max_steps:
        total_steps = min(total_steps, t.max_steps)

    # Model, optimizer, EMA, schedule.
    model = build_unet(cfg.model, data.channels, data.num_classes, data.img_size).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    ema = EMA(model, decay=t.ema_decay, warmup=t.ema_warmup)
    schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)

    # Resume from the run directory's snapshot, if any.
    state = TrainState()
    snapshot = prepare_run_dir(run_dir, cfg, resume)
    if snapshot is not None:
        model.load_state_dict(snapshot["model"])
        optimizer.load_state_dict(snapshot["optimizer"])
        ema.load_state_dict(snapshot["ema"])
        state = TrainState(**snapshot["state"])
        set_rng_state(snapshot["rng"])

    def save_snapshot() -> None:
        atomic_save({
            "config": cfg.to_dict(), "class_names": data.class_names, "in_channels": data.channels,
            "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "ema": ema.state_dict(),
            "state": vars(state).copy(), "rng": rng_state(),
        }, run_dir / "snapshot.pt")

    say = print if progress else (lambda *a, **k: None)
    say(f"[train] {cfg.name}: {len(data)} images, {data.num_classes} classes, {data.img_size}px x {data.channels}ch | "
        f"U-Net {count_parameters(model) / 1e6:.2f}M params | {cfg.diffusion.schedule} schedule, "
        f"T={cfg.diffusion.timesteps} | batch {t.batch_size} | {total_steps} steps | {device} | run dir {run_dir}")
    if state.step:
        say(f"[train] resuming from step {state.step} (epoch {state.epoch}, batch {state.batch})")

    log_file = open(run_dir / "log.jsonl", "a")
    bar = tqdm(total=total_steps, initial=state.step, disable=not progress, desc="train", unit="step",
               dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 10.0, file=sys.stdout)
    loss_sum = torch.zeros((), device=device)
    grad_sum = torch.zeros((), device=device)
    steps_since_log, t_log, t_start = 0, time.time(), time.time()

    interrupted = False
    while state.step < total_steps and not interrupted:
        sampler.set_epoch(state.epoch)
        loader = DataLoader(dataset, batch_size=t.batch_size, sampler=SkipFirst(sampler, state.batch * t.batch_size),
                            drop_last=True, num_workers=cfg.data.num_workers,
                            generator=torch.Generator().manual_seed(t.seed + state.epoch))
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            lr = lr_at(state.step, total_steps, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = diffusion_loss(model, schedule, x, y, null_class=data.num_classes, p_uncond=cfg.diffusion.p_uncond)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
            optimizer.step()
            ema.update(model)
            state.step += 1
            state.batch += 1
            loss_sum += loss.detach()
            grad_sum += grad_norm.detach()
            steps_since_log += 1
            bar.update(1)

            last = state.step == total_steps
            interrupted = stop_after is not None and state.step >= stop_after and not last
            if state.step % t.log_every == 0 or last or interrupted or state.step % t.snapshot_every == 0:
                mean_loss = (loss_sum / steps_since_log).item()  # the only host sync, every log_every steps
                if not math.isfinite(mean_loss):
                    raise DDPMError(f"loss became {mean_loss} within steps {state.step - steps_since_log + 1}-"
                                    f"{state.step}; the last good snapshot is kept; lower train.lr or check the data")
                now = time.time()
                record = {"step": state.step, "epoch": state.epoch, "loss": round(mean_loss, 6), "lr": lr,
                          "grad_norm": round((grad_sum / steps_since_log).item(), 4),
                          "img_per_s": round(steps_since_log * t.batch_size / (now - t_log), 1),
                          "seconds": round(now - t_start, 2)}
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.1e}")
                loss_sum.zero_()
                grad_sum.zero_()
                steps_since_log, t_log = 0, now
            if state.step % t.snapshot_every == 0 or last or interrupted:
                save_snapshot()
            if last or interrupted:
                break
        else:  # the epoch ran out (no break)
            state.epoch += 1
            state.batch = 0

    bar.close()
    log_file.close()
    if state.step < total_steps:
        say(f"[train] stopped at step {state.step} of {total_steps}; run again to resume from {run_dir / 'snapshot.pt'}")
        return run_dir
    atomic_save(ema_payload(cfg, data.class_names, data.channels, ema.state_dict()["model"], state.step),
                run_dir / "ema.pt")
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
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary lines")
    return parser.parse_args(argv)


@cli
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.config, args.set)
    train(cfg, args.run_dir or Path("runs") / cfg.name, resume=args.resume, progress=not args.quiet)


if __name__ == "__main__":
    main()
