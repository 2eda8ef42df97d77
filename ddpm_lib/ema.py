"""Exponential moving average (EMA) of a model's weights, used for sampling.

After every optimizer step each EMA weight moves a little towards the live one::

    theta_ema <- d * theta_ema + (1 - d) * theta

Averaging over the last ~1 / (1 - d) steps smooths out the noise of SGD, and
diffusion samples from EMA weights are markedly better (Ho et al. 2020 use
d = 0.9999; Song & Ermon 2020 study why). With ``warmup`` the decay ramps up as
``d_n = min(d, (1 + n) / (10 + n))`` after n updates, so the early average is not
dominated by the random initial weights. Buffers (none in our U-Net, but e.g.
BatchNorm statistics) are copied, not averaged.

The EMA holds an independent copy of the *unwrapped* network: its state dict has no
``module.`` prefix, whether or not the live model is wrapped in DDP, so checkpoints
load in any world size.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DDP (``.module``) or ``torch.compile`` (``._orig_mod``) wrapper."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


class EMA:
    """EMA of ``model``'s parameters; ``ema.model`` is a frozen copy ready for sampling."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.model = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update will use."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the EMA towards ``model`` (wrapped or not) by one step."""
        live = unwrap(model)
        d = self.current_decay()
        ema_params = list(self.model.parameters())
        live_params = [p.detach() for p in live.parameters()]
        torch._foreach_lerp_(ema_params, live_params, 1.0 - d)
        for ema_buf, buf in zip(self.model.buffers(), live.buffers()):
            ema_buf.copy_(buf)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the EMA weights into ``model`` (e.g. to evaluate the live network with them)."""
        unwrap(model).load_state_dict(self.model.state_dict())
