"""EMA math, warm-up, buffers, wrapped models and state round trips."""

import pytest
import torch
from torch import nn

from ddpm_lib.ema import EMA, unwrap


class Wrapper(nn.Module):  # stands in for DDP, which needs a process group
    def __init__(self, module):
        super().__init__()
        self.module = module


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_update_is_exponential_average():
    model = make_model()
    ema = EMA(model, decay=0.9, warmup=False)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    for _ in range(3):
        ema.update(model)
    # theta_ema = 0.9^3 * start + (1 - 0.9^3) * (start + 1)
    torch.testing.assert_close(ema.model[0].weight, start + (1 - 0.9**3))


def test_warmup_decay_schedule():
    ema = EMA(make_model(), decay=0.999, warmup=True)
    decays = []
    for _ in range(3):
        decays.append(ema.current_decay())
        ema.update(make_model())
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    ema.num_updates = 10**6
    assert ema.current_decay() == 0.999


def test_buffers_are_copied_and_ema_is_frozen():
    model = make_model()
    ema = EMA(model, decay=0.5)
    model.train()
    model(torch.randn(16, 3))  # moves BatchNorm running stats
    ema.update(model)
    torch.testing.assert_close(ema.model[1].running_mean, model[1].running_mean)
    assert not any(p.requires_grad for p in ema.model.parameters())
    assert not ema.model.training


def test_wrapped_model_keys_have_no_module_prefix():
    model = make_model()
    ema = EMA(Wrapper(model))
    assert unwrap(Wrapper(Wrapper(model))) is model
    assert all(not k.startswith("module.") for k in ema.state_dict()["model"])
    ema.update(Wrapper(model))  # updating through the wrapper works too
    plain = EMA(make_model())
    plain.load_state_dict(ema.state_dict())
    assert plain.num_updates == 1


def test_state_dict_round_trip_and_copy_to():
    model = make_model()
    ema = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model[0].bias.fill_(2.0)
    ema.update(model)
    other = EMA(make_model(), decay=0.5)
    other.load_state_dict(ema.state_dict())
    torch.testing.assert_close(other.model[0].bias, ema.model[0].bias)
    target = make_model()
    ema.copy_to(target)
    torch.testing.assert_close(target[0].bias, ema.model[0].bias)


def test_bad_decay():
    with pytest.raises(ValueError):
        EMA(make_model(), decay=1.5)
