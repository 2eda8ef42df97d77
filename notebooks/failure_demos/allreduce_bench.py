"""Time one all-reduce of a gradient-sized float32 tensor across the ranks.

    python -m torch.distributed.run --standalone --nproc_per_node=2 failure_demos/allreduce_bench.py \
        --numel 1160000 --repeats 10 --out ../runs/10_failure_modes/allreduce.json

DDP all-reduces every gradient once per step (in buckets, overlapped with backward);
this measures the cost of doing it in one piece, without overlap, with the same
``torch.distributed.all_reduce`` (gloo on CPU) that DDP uses. Rank 0 writes the median
and every repeat's seconds to ``--out``. ``ema_drift.py --allreduce-numel N`` runs the
same measurement at the end of its own launch (:func:`time_allreduce`), which spares the
notebook the start-up of a second ``torchrun``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ddpm_lib.dist import barrier, distributed, exit_worker_if_distributed


def time_allreduce(env, numel: int, repeats: int) -> list[float]:
    """Seconds of ``repeats`` all-reduces of ``numel`` float32 on every rank (after 2 warm-up ones)."""
    tensor = torch.ones(numel)
    times = []
    for i in range(repeats + 2):  # the first two are warm-up: connections, buffers
        barrier(env)
        started = time.perf_counter()
        if env.distributed:
            dist.all_reduce(tensor)
        elapsed = time.perf_counter() - started
        if i >= 2:
            times.append(elapsed)
    return times


def write_result(env, numel: int, times: list[float], out: str | Path) -> None:
    """Rank 0 writes the median and every repeat's seconds to ``out`` (JSON) and prints one line."""
    if env.is_main:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        result = {"world_size": env.world_size, "numel": numel, "bytes": numel * 4,
                  "median_seconds": statistics.median(times), "seconds": times}
        out.write_text(json.dumps(result, indent=1))
        print(f"[allreduce] {env.world_size} ranks, {numel * 4 / 1e6:.2f} MB float32: "
              f"median {statistics.median(times) * 1e3:.2f} ms over {len(times)} repeats", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--numel", type=int, required=True, help="elements (e.g. the model's parameter count)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    with distributed("cpu", threads=1) as env:
        write_result(env, args.numel, time_allreduce(env, args.numel, args.repeats), args.out)
    exit_worker_if_distributed()


if __name__ == "__main__":
    main()
