"""Measure how far the ranks' EMA weights drift apart, with and without gradient averaging.

    python -m torch.distributed.run --standalone --nproc_per_node=2 failure_demos/ema_drift.py \
        --steps 40 --every 5 --sync-every 10 --out ../runs/10_failure_modes/ema_drift.json

(from a notebook: ``ddpm_lib.launch.launch(...)`` with the same arguments.)

Every rank builds the same tiny conditional U-Net (same seed), keeps its own
``ddpm_lib.ema.EMA`` and trains on its own shard of 8 px digits with its own noise
(seed + rank), exactly like ``ddpm_lib.train``. Three situations, one after another:

``ddp``        the model is wrapped in DDP: gradients are averaged over ranks in
               backward, so every rank applies the same update.
``local``      no gradient averaging (each rank steps on its own gradients, as in
               local SGD between averaging rounds): the live weights, hence the
               EMAs, differ across ranks.
``local_sync`` like ``local``, and rank 0's EMA is broadcast every ``--sync-every``
               steps (``ddpm_lib.dist.broadcast_module_``, what ``train.ema_sync_every``
               does in ``ddpm_lib.train``).

Every ``--every`` steps (before any sync at that step is applied) the EMA weights are
all-gathered (``ddpm_lib.dist.gather_objects``) and rank 0 records the max absolute
difference between rank 0's and every other rank's EMA (and live) weights. Rank 0
writes the curves to ``--out`` as JSON.

With ``--allreduce-numel N`` the same ranks then time an all-reduce of N float32, exactly as
``allreduce_bench.py`` does, and rank 0 writes it to ``--allreduce-out``: starting 2 ranks
costs seconds, so the notebook measures both in one launch.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ddpm_lib.config import load_config
from ddpm_lib.data import load_digits, to_float
from ddpm_lib.diffusion import diffusion_loss
from ddpm_lib.dist import broadcast_module_, distributed, exit_worker_if_distributed, gather_objects
from ddpm_lib.ema import EMA
from ddpm_lib.schedules import make_schedule
from ddpm_lib.unet import build_unet

try:
    from failure_demos.allreduce_bench import time_allreduce, write_result
except ImportError:  # run as a script path: failure_demos/ itself is on sys.path
    from allreduce_bench import time_allreduce, write_result

warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")  # harmless, see ddpm_lib.train


def flat(module: torch.nn.Module) -> torch.Tensor:
    """All parameters of ``module`` as one float32 vector on the CPU."""
    return torch.cat([p.detach().reshape(-1).cpu() for p in module.parameters()])


def max_diff_to_rank0(vectors: list[torch.Tensor]) -> float:
    return max((v - vectors[0]).abs().max().item() for v in vectors[1:]) if len(vectors) > 1 else 0.0


def run(mode: str, args, env, data) -> dict:
    cfg = load_config("base", ["data.img_size=8", "model.base_channels=16", "model.attn_resolutions=[]"])
    torch.manual_seed(0)  # the same initial weights on every rank
    net = build_unet(cfg.model, data.channels, data.num_classes, data.img_size)
    model = DDP(net) if mode == "ddp" else net
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr)
    ema = EMA(net, decay=args.decay, warmup=True)
    schedule = make_schedule("cosine", 1000)
    generator = torch.Generator().manual_seed(100 + env.rank)  # each rank: its own batches and noise
    shard = torch.arange(env.rank, len(data), env.world_size)
    x_all, y_all = to_float(data.images[shard]), data.labels[shard]
    steps, ema_drift, live_drift = [], [], []
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(shard), (args.batch_size,), generator=generator)
        loss = diffusion_loss(model, schedule, x_all[idx], y_all[idx], null_class=data.num_classes,
                              generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP: gradients all-reduced (averaged) here
        optimizer.step()
        ema.update(net)
        if step % args.every == 0:
            emas = gather_objects(env, flat(ema.model))
            lives = gather_objects(env, flat(net))
            steps.append(step)
            ema_drift.append(max_diff_to_rank0(emas))
            live_drift.append(max_diff_to_rank0(lives))
        if mode == "local_sync" and step % args.sync_every == 0:
            broadcast_module_(env, ema.model)  # rank 0's EMA is the truth
    final = gather_objects(env, flat(ema.model))
    return {"steps": steps, "ema_max_abs_diff": ema_drift, "live_max_abs_diff": live_drift,
            "final_ema_max_abs_diff": max_diff_to_rank0(final),
            "final_ema_bitwise_equal": all(torch.equal(v, final[0]) for v in final),
            "ema_abs_mean": final[0].abs().mean().item(), "num_params": final[0].numel()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--every", type=int, default=5, help="measure the drift every this many steps")
    p.add_argument("--sync-every", type=int, default=10, help="EMA broadcast period in local_sync")
    p.add_argument("--batch-size", type=int, default=16, help="per rank")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--decay", type=float, default=0.999)
    p.add_argument("--out", required=True)
    p.add_argument("--allreduce-numel", type=int, default=0,
                   help="then time an all-reduce of this many float32 (0: don't), as allreduce_bench.py does")
    p.add_argument("--allreduce-repeats", type=int, default=10)
    p.add_argument("--allreduce-out", help="JSON for the all-reduce timing (with --allreduce-numel)")
    args = p.parse_args()
    if args.allreduce_numel and not args.allreduce_out:
        p.error("--allreduce-numel needs --allreduce-out")
    with distributed("cpu", threads=1) as env:
        data = load_digits(8)
        results = {}
        for mode in ("ddp", "local", "local_sync"):
            started = time.time()
            results[mode] = run(mode, args, env, data)
            results[mode]["seconds"] = round(time.time() - started, 2)
            if env.is_main:
                print(f"[ema_drift] {mode}: final max |EMA_rank0 - EMA_rank1| = "
                      f"{results[mode]['final_ema_max_abs_diff']:.3e} "
                      f"(bitwise equal: {results[mode]['final_ema_bitwise_equal']})", flush=True)
        if env.is_main:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"world_size": env.world_size, "args": vars(args), **results}, indent=1))
        if args.allreduce_numel:
            times = time_allreduce(env, args.allreduce_numel, args.allreduce_repeats)
            write_result(env, args.allreduce_numel, times, args.allreduce_out)
    exit_worker_if_distributed()


if __name__ == "__main__":
    main()
