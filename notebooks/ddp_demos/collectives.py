"""The three collectives DDP is built on, on 2+ CPU ranks (gloo).

    torchrun --standalone --nproc_per_node=2 -m ddp_demos.collectives     # from notebooks/

Every rank prints what it holds before and after each collective, prefixed by its rank.
"""

import sys

import torch
import torch.distributed as dist

from ddpm_lib.dist import cleanup, exit_worker_if_distributed, read_env, setup


def show(rank: int, what: str, value) -> None:
    # one write per line: the ranks share one pipe, and print() would write text and newline separately
    sys.stdout.write(f"[rank {rank}] {what}: {value}\n")
    sys.stdout.flush()


def main() -> None:
    rank, local_rank, world_size = read_env()
    env = setup("cpu", threads=1)  # joins the gloo process group (world size > 1)
    show(rank, "read_env", f"rank={rank} local_rank={local_rank} world_size={world_size} backend={env.backend}")
    dist.barrier()

    # all_reduce: every rank ends with the SUM of every rank's tensor (DDP does this to gradients).
    x = torch.tensor([float(rank + 1), 10.0 * (rank + 1)])
    show(rank, "all_reduce before", x.tolist())
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    show(rank, "all_reduce after ", x.tolist())
    expected = torch.tensor([sum(r + 1 for r in range(world_size)), 10.0 * sum(r + 1 for r in range(world_size))])
    assert torch.equal(x, expected), (x, expected)
    dist.barrier()

    # broadcast: every rank ends with rank 0's tensor (DDP does this to the weights at start-up).
    w = torch.full((3,), 7.0) if rank == 0 else torch.full((3,), float(rank))  # only rank 0 holds 7s
    show(rank, "broadcast before", w.tolist())
    dist.broadcast(w, src=0)
    show(rank, "broadcast after ", w.tolist())
    assert torch.equal(w, torch.full((3,), 7.0))
    dist.barrier()

    # all_gather: every rank ends with the list of every rank's tensor (sampling gathers images so).
    mine = torch.arange(2) + 10 * rank
    out = [torch.zeros_like(mine) for _ in range(world_size)]
    dist.all_gather(out, mine)
    show(rank, "all_gather mine", mine.tolist())
    show(rank, "all_gather got ", [t.tolist() for t in out])
    assert [t.tolist() for t in out] == [[10 * r, 10 * r + 1] for r in range(world_size)]
    dist.barrier()
    show(rank, "collectives", "ok")
    cleanup(env)
    exit_worker_if_distributed()


if __name__ == "__main__":
    main()
    sys.exit(0)
