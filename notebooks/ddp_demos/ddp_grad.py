"""DDP averages gradients: 2 ranks on half a batch each = 1 process on the whole batch.

    torchrun --standalone --nproc_per_node=2 -m ddp_demos.ddp_grad --out grads.pt   # from notebooks/

Every rank builds the same small model and the same global batch (:func:`make_problem`,
seeded), keeps its own slice of the batch (rank r takes rows r*B/W .. (r+1)*B/W), wraps
the model in ``DistributedDataParallel`` and runs one backward. DDP all-reduces the
gradients and divides by the world size, so every rank holds the mean of the per-rank
gradients. Each rank writes its gradients to ``<out>.rank<r>``; the notebook compares
them with the single-process full-batch gradient.

With ``--accumulate K`` the same ranks then split their rows into K micro-batches and
accumulate the gradient over them twice, each time in a fresh DDP model whose
communication hook counts the all-reduces: once naively (every backward all-reduces),
once with ``DDP.no_sync()`` around the first K - 1 backwards (only the last one
all-reduces). Each rank writes ``<out>.accumulate_<naive|no_sync>.rank<r>``: the
gradients and the all-reduce calls and bytes.
"""

import argparse
import sys

import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel as DDP

from ddpm_lib.dist import cleanup, exit_worker_if_distributed, setup

BATCH = 8


def make_problem(seed: int = 0):
    """(model, x (BATCH, 4), y (BATCH, 1)): identical on every process for the same seed."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x = torch.randn(BATCH, 4, generator=g)
    y = torch.randn(BATCH, 1, generator=g)
    return model, x, y


def loss_fn(model, x, y):
    """Mean squared error over the rows of x: a *mean*, so half-batch losses average to the full one."""
    return ((model(x) - y) ** 2).mean()


def grads(model) -> dict:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def counting_hook(state: dict, bucket):
    """DDP's own all-reduce (sum, then divide by the world size), counting calls and bytes in ``state``."""
    state["allreduce_calls"] += 1
    state["allreduce_bytes"] += bucket.buffer().numel() * bucket.buffer().element_size()
    return allreduce_hook(None, bucket)


def accumulate(seed: int, x, y, k: int, use_no_sync: bool) -> dict:
    """Gradient of ``loss_fn`` over this rank's rows x, y, accumulated over k equal micro-batches.

    Each micro-batch loss is divided by k, so the accumulated gradient is the mean over all the
    rows; DDP then averages it over the ranks. With ``use_no_sync`` the first k - 1 backwards run
    inside ``no_sync()`` (forward included, as its docstring asks) and only the last all-reduces.
    """
    model, _, _ = make_problem(seed)
    ddp_model = DDP(model)
    state = {"allreduce_calls": 0, "allreduce_bytes": 0}
    ddp_model.register_comm_hook(state, counting_hook)
    micro = [slice(i * len(x) // k, (i + 1) * len(x) // k) for i in range(k)]
    for i, rows in enumerate(micro):
        last = i == k - 1
        if use_no_sync and not last:
            with ddp_model.no_sync():  # gradients accumulate in .grad, no all-reduce
                (loss_fn(ddp_model, x[rows], y[rows]) / k).backward()
        else:
            (loss_fn(ddp_model, x[rows], y[rows]) / k).backward()  # all-reduces (the accumulated) .grad
    return {"grads": grads(model), **state}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accumulate", type=int, default=0,
                        help="then accumulate over this many micro-batches, naively and with no_sync (0: skip)")
    args = parser.parse_args()
    env = setup("cpu", threads=1)
    model, x, y = make_problem(args.seed)
    shard = BATCH // env.world_size
    rows = slice(env.rank * shard, (env.rank + 1) * shard)
    ddp_model = DDP(model)  # broadcasts rank 0's weights, then averages gradients in backward
    loss = loss_fn(ddp_model, x[rows], y[rows])
    loss.backward()
    sys.stdout.write(f"[rank {env.rank}] rows {rows.start}..{rows.stop - 1}, local loss {loss.item():.6f}, "
                     f"grad[0,0] of the first layer after all-reduce {model[0].weight.grad[0, 0].item():.6f}\n")
    sys.stdout.flush()  # one write per line: the ranks share one pipe
    torch.save(grads(model), f"{args.out}.rank{env.rank}")
    if args.accumulate:
        for mode in ("naive", "no_sync"):
            result = accumulate(args.seed, x[rows], y[rows], args.accumulate, mode == "no_sync")
            sys.stdout.write(f"[rank {env.rank}] accumulate over {args.accumulate} micro-batches, {mode:7s}: "
                             f"{result['allreduce_calls']} all-reduce call(s), {result['allreduce_bytes']} bytes\n")
            sys.stdout.flush()
            torch.save(result, f"{args.out}.accumulate_{mode}.rank{env.rank}")
    cleanup(env)
    exit_worker_if_distributed()


if __name__ == "__main__":
    main()
