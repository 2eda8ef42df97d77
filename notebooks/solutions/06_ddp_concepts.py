"""Worked solutions for notebook 06 (DDP concepts: processes, ranks and collectives).

Try the cells yourself first; with SOLUTIONS = True in the notebook's parameters cell the checks run these
instead of your cells (CI runs both ways).
"""

import torch


def shard_indices(n, world_size, rank, epoch, seed):
    """The dataset indices rank ``rank`` reads in ``epoch``: what
    ``DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)`` yields
    after ``set_epoch(epoch)``. Returns a list of ``ceil(n / world_size)`` ints."""
    # 1. One shuffled order of the whole dataset, the SAME on every rank: every rank seeds its own
    #    generator with seed + epoch, so no communication is needed, and set_epoch changes the order.
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    # 2. Pad the order to a multiple of world_size by repeating its first indices (drop_last=False), so
    #    that every rank gets equally many indices and all ranks take the same number of steps.
    total = -(-n // world_size) * world_size  # ceil(n / W) * W
    while len(order) < total:  # a loop, in case there are more ranks than images
        order += order[: total - len(order)]
    # 3. Deal the order out round-robin: rank r takes positions r, r + W, r + 2W, ...
    return order[rank:total:world_size]


def average_gradients(grads):
    """The gradient every rank holds after DDP's all-reduce, from the W ranks' own gradients (a list of W
    tensors of one shape): their mean (Li et al. 2020)."""
    # all_reduce(SUM) leaves the sum of the W gradients on every rank; DDP then divides by W. With a mean
    # loss over equal shards, that mean is exactly the gradient of the global batch (notebook section 4).
    return torch.stack(grads).sum(dim=0) / len(grads)
