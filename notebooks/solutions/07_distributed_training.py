"""Worked solutions for notebook 07 (distributed training: torchrun, fault tolerance, distributed sampling).

Try the cells yourself first; with SOLUTIONS = True in the notebook's parameters cell the checks run these
instead of your cells (CI runs both ways).
"""


def steps_per_epoch(n_images, batch_size, world_size):
    """Optimizer steps in one epoch of ``n_images`` on ``world_size`` ranks, ``batch_size`` images per rank."""
    # DistributedSampler(drop_last=True) gives each rank floor(n / W) images (the remainder is left out
    # this epoch, so every rank has the same number of batches) ...
    per_rank = n_images // world_size
    # ... and the DataLoader (drop_last=True) cuts them into whole batches: the partial last batch is dropped.
    # One optimizer step consumes one batch on every rank at once, so this is also the step count.
    return per_rank // batch_size


def skip_per_rank(seen, world_size):
    """Resuming an epoch after ``seen`` images (all ranks together): how many positions of its shard each
    rank skips."""
    # The epoch's order is dealt round-robin, so after `seen` images the first `seen` positions of the order
    # are used, seen / W of them in each rank's shard. If seen is not a multiple of W (a run resumed with
    # another world size), round UP: re-reading an image is worse than skipping at most W - 1 of them.
    return -(-seen // world_size)  # ceil(seen / W) with integers only
