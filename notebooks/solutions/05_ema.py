"""Worked solutions for notebook 05 (EMA: an exponential moving average of the weights). Try the cells
yourself first; with SOLUTIONS = True in the notebook's parameters cell the checks run these instead of
your cells (CI runs both ways)."""

import math


def ema_update(ema, live, decay, num_updates):
    """ema * d + live * (1 - d), d = min(decay, (1 + n) / (10 + n)). ema, live: tensors of one shape."""
    # The warm-up decay: after n = num_updates earlier updates, d_n = min(decay, (1 + n) / (10 + n)),
    # so the first updates (d = 0.1, 0.18, 0.25, ...) nearly copy the live weights and the average
    # forgets its random start; from n >= (10 decay - 1) / (1 - decay) on, the full decay applies.
    d = min(decay, (1 + num_updates) / (10 + num_updates))
    # Move the average a fraction 1 - d of the way to the live weights (the old average keeps weight d).
    return ema * d + live * (1 - d)


def ema_half_life(decay):
    """The n with decay ** n = 1/2: log(1/2) / log(decay) updates (a float, not rounded)."""
    # After n more updates a weight's share in the average has been multiplied by decay ** n.
    # Setting decay ** n = 1/2 and taking logarithms: n log(decay) = log(1/2).
    # (For decay near 1, log(decay) ~ -(1 - decay), so n ~ ln 2 / (1 - decay), about 0.69 of the
    # "window" 1 / (1 - decay).)
    return math.log(0.5) / math.log(decay)
