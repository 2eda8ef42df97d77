"""DDP averages gradients: 2 ranks on half a batch each = 1 process on the whole batch.

    torchrun --standalone --nproc_per_node=2 -m ddp_demos.ddp_grad --out grads.pt   # from notebooks/

Every rank builds the same small model and the same global batch (:func:`make_problem`,
seeded), keeps its own slice of the batch (rank r takes rows r*B/W .. (r+1)*B/W), wraps
the model in ``DistributedDataParallel`` and runs one backward. DDP all-reduces the
gradients and divides by the world size, so every rank holds the mean of the per-rank
gradients. Each rank writes its gradients to ``<out>.rank<r>``; the notebook compares
them with the single-process full-batch gradient.
"""

import argparse
import sys

import torch
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
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
    cleanup(env)
    exit_worker_if_distributed()


if __name__ == "__main__":
    main()
