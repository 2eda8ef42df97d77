"""Worked solutions for notebook 10 (failure modes, made measurable).

Try the cells yourself first; with SOLUTIONS = True in the notebook's parameters cell the checks run these
instead of your cells (CI runs both ways).
"""

import torch


def balanced_weights(labels, num_classes):
    """One weight per image for ``torch.utils.data.WeightedRandomSampler``: ``1 / (num_classes * n_c)``
    for an image of class c with n_c images, so every class present draws the same share. ``labels``
    int64 (N,) -> weights float (N,)."""
    # n_c for every class (minlength: classes with no image still get a slot, count 0, never looked up)
    counts = torch.bincount(labels, minlength=num_classes).double()
    # each image's weight falls with its class's size; the n_c images of class c add up to 1 / num_classes
    return 1.0 / (num_classes * counts[labels])


def allreduce_bytes(nbytes, world_size):
    """Bytes each rank sends in a ring all-reduce of a buffer of ``nbytes`` on ``world_size`` ranks."""
    # The buffer is cut into W chunks of nbytes / W. Reduce-scatter: W - 1 steps, each sending one chunk to
    # the next rank in the ring (afterwards each rank holds one fully summed chunk). All-gather: W - 1 more
    # steps passing the summed chunks round (Patarasuk & Yuan 2009). One rank sends nothing.
    chunk = nbytes / world_size
    return 2 * (world_size - 1) * chunk
