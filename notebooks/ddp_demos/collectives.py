"""The three collectives DDP is built on, on 2+ CPU ranks (gloo).

    torchrun --standalone --nproc_per_node=2 -m ddp_demos.collectives     # from notebooks/

Every rank prints what it holds before and after each collective, prefixed by its rank.

With ``--hang-demo SECONDS`` the ranks then break the one rule all collectives share (every
rank makes the same calls, in the same order), twice, on groups with a SECONDS timeout:

1. mismatched collectives: rank 0 calls ``all_reduce`` while the others call ``broadcast``, on
   a group created under ``TORCH_DISTRIBUTED_DEBUG=DETAIL`` (set here with
   ``dist.set_debug_level``): every rank gets an error naming both calls at once;
2. a skipped collective: rank 0 calls ``all_reduce``, the others never do. Halfway through
   the timeout, ``faulthandler`` prints rank 0's Python stack (where it waits); at the
   timeout the call raises instead of waiting forever.
"""

import argparse
import faulthandler
import re
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from ddpm_lib.dist import cleanup, exit_worker_if_distributed, read_env, setup


def show(rank: int, what: str, value) -> None:
    # one write per line: the ranks share one pipe, and print() would write text and newline separately
    sys.stdout.write(f"[rank {rank}] {what}: {value}\n")
    sys.stdout.flush()


def summary(err: BaseException) -> str:
    """The gist of a collective's error: for a DETAIL mismatch, which rank was in which call."""
    text = " ".join(str(err).split())
    calls = re.findall(r"Rank (\d+) is running collective: CollectiveFingerPrint\(SequenceNumber=\d+, "
                       r"OpType=(\w+)", text)
    if calls:
        return text.split(". ")[0] + ": " + ", ".join(f"rank {r} in {op}" for r, op in calls)
    return text[:300] or type(err).__name__


def hang_demo(rank: int, seconds: float) -> None:
    """Break the same-calls-in-the-same-order rule twice; each broken call raises instead of hanging."""
    dist.set_debug_level(dist.DebugLevel.DETAIL)  # as TORCH_DISTRIBUTED_DEBUG=DETAIL: groups made now check calls
    checked = dist.new_group(backend="gloo", timeout=timedelta(seconds=seconds))
    dist.set_debug_level(dist.DebugLevel.OFF)
    plain = dist.new_group(backend="gloo", timeout=timedelta(seconds=seconds))
    x = torch.ones(2)

    # 1. mismatched collectives, caught by the DETAIL checks before any data moves
    try:
        if rank == 0:
            dist.all_reduce(x, group=checked)
        else:
            dist.broadcast(x, src=0, group=checked)
        show(rank, "hang demo 1 (mismatch)", "no error")
    except RuntimeError as err:
        show(rank, "hang demo 1 (mismatch) raised", summary(err))
    dist.barrier()

    # 2. a collective that only rank 0 calls: it waits until the group's timeout
    if rank == 0:
        faulthandler.dump_traceback_later(seconds / 2)  # a stack dump while it waits, as py-spy dump would show
        started = time.time()
        try:
            dist.all_reduce(x, group=plain)
            show(rank, "hang demo 2 (skipped)", "no error")
        except RuntimeError as err:
            show(rank, "hang demo 2 (skipped) raised", f"after {time.time() - started:.1f}s: {summary(err)}")
        faulthandler.cancel_dump_traceback_later()
    else:
        show(rank, "hang demo 2 (skipped)", "this rank skips the all_reduce (it took another branch)")
    dist.barrier()  # the default group: every rank meets again


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hang-demo", type=float, default=0.0,
                        help="then break the same-calls rule on groups with this timeout in seconds (0: skip)")
    args = parser.parse_args()
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
    if args.hang_demo:
        hang_demo(rank, args.hang_demo)
    cleanup(env)
    exit_worker_if_distributed()


if __name__ == "__main__":
    main()
    sys.exit(0)
