"""Collective checks run under torchrun by tests/test_dist.py: python -m torch.distributed.run ... dist_checks.py NAME.

Each check asserts on every rank; a failure exits non-zero and fails the test.
"""

import sys

import torch
from torch.utils.data import DistributedSampler

from ddpm_lib.dist import (any_rank, broadcast_module_, distributed, exit_worker_if_distributed, gather_objects,
                           mean_over_ranks)
from ddpm_lib.ema import EMA


def ema_sync(env):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        net.weight.add_(env.rank + 1.0)  # ranks see different weights: their EMAs drift apart
    ema.update(net)
    before = gather_objects(env, ema.model.weight.detach().clone())
    assert not torch.equal(before[0], before[1]), "without a sync the EMAs should differ"
    broadcast_module_(env, ema.model)
    after = gather_objects(env, ema.model.weight.detach().clone())
    assert all(torch.equal(after[0], w) for w in after), "after a sync every rank holds rank 0's EMA"
    assert torch.equal(after[0], before[0])


def sampler_shards(env):
    dataset = list(range(103))
    for epoch in (0, 1):
        sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=5,
                                     drop_last=True)
        sampler.set_epoch(epoch)
        shards = gather_objects(env, list(sampler))
        flat = [i for shard in shards for i in shard]
        assert len(set(flat)) == len(flat), "shards overlap"
        assert len(flat) == 103 // env.world_size * env.world_size, "shards do not cover the epoch"
        assert all(len(s) == len(shards[0]) for s in shards)
    # a new epoch reshuffles
    s0 = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, seed=5)
    s1 = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, seed=5)
    s1.set_epoch(1)
    assert list(s0) != list(s1)


def collectives(env):
    assert any_rank(env, env.rank == 1) and not any_rank(env, False)
    mean = mean_over_ranks(env, torch.tensor(float(env.rank)))
    assert mean.item() == sum(range(env.world_size)) / env.world_size
    assert gather_objects(env, {"rank": env.rank}) == [{"rank": r} for r in range(env.world_size)]


if __name__ == "__main__":
    with distributed("cpu") as env:
        assert env.world_size == 2 and env.backend == "gloo"
        globals()[sys.argv[1]](env)
    print(f"rank {env.rank}: {sys.argv[1]} ok", flush=True)
    exit_worker_if_distributed()
