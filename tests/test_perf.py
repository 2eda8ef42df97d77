import math

import pytest
import torch
from torch import nn

from ddpm_lib import perf


def test_count_flops_of_a_linear_layer_is_two_flops_per_multiply_add():
    layer = nn.Linear(8, 4)
    x = torch.randn(3, 8)
    assert perf.count_flops(lambda: layer(x)) == 2 * 3 * 8 * 4


def test_count_flops_of_a_convolution_matches_the_formula():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, 6, 6)
    assert perf.count_flops(lambda: conv(x)) == 2 * 2 * 3 * 5 * 9 * 6 * 6


def test_backward_costs_twice_the_forward_when_the_input_needs_a_gradient():
    layer = nn.Linear(16, 16)
    x = torch.randn(4, 16, requires_grad=True)
    forward = perf.count_flops(lambda: layer(x))
    both = perf.count_flops(lambda: layer(x).sum().backward())
    assert both == 3 * forward


def test_saved_activation_bytes_counts_saved_tensors_but_not_parameters():
    layer = nn.Linear(256, 8)
    x = torch.randn(32, 256)  # saved for the weight gradient; the weight itself is a parameter
    assert perf.saved_activation_bytes(lambda: layer(x)) == x.numel() * 4
    y = torch.randn(100, requires_grad=True)
    assert perf.saved_activation_bytes(lambda: torch.sigmoid(y)) == 100 * 4  # sigmoid keeps its output


def test_time_per_call_runs_warmup_plus_iters_times_repeats():
    calls = []
    seconds = perf.time_per_call(lambda: calls.append(1), torch.device("cpu"), iters=4, warmup=2, repeats=3)
    assert len(calls) == 2 + 4 * 3
    assert 0 <= seconds < 0.1


def test_matmul_peak_is_a_plausible_rate():
    peak = perf.matmul_peak(torch.device("cpu"), size=256, seconds=0.1)
    assert 1e8 < peak < 1e14  # FLOP/s: between a very slow CPU and far beyond any CPU


def test_peak_rss_grows_when_memory_is_touched():
    before = perf.peak_rss_bytes()
    block = torch.ones(64 * 2 ** 20 // 4 * 4)  # 256 MiB, written, so resident
    after = perf.peak_rss_bytes()
    assert block.sum() > 0
    assert after - before > 200 * 2 ** 20 or before > 256 * 2 ** 20 + after - before


def test_ring_allreduce_time_follows_the_two_n_minus_one_over_n_law():
    nbytes, bw = 1e9, 1e10
    assert perf.ring_allreduce_seconds(nbytes, 1, bw) == 0
    assert perf.ring_allreduce_seconds(nbytes, 2, bw) == pytest.approx(nbytes / bw)
    assert perf.ring_allreduce_seconds(nbytes, 8, bw) == pytest.approx(2 * 7 / 8 * nbytes / bw)
    assert perf.ring_allreduce_seconds(nbytes, 4, bw, latency=1e-3) == pytest.approx(1.5 * nbytes / bw + 6e-3)


def test_ddp_step_hides_communication_behind_backward_until_it_no_longer_fits():
    link = perf.Link("test", 1e9, 0.0)
    fwd, bwd, opt = 0.1, 0.2, 0.01
    # a small gradient: only the last bucket (here the whole gradient) is exposed
    small = 1e6
    assert perf.ddp_step_seconds(fwd, bwd, opt, small, 2, link) == pytest.approx(fwd + bwd + opt + small / 1e9)
    # many buckets and a slow link: communication dominates the step
    big = 1e9
    step = perf.ddp_step_seconds(fwd, bwd, opt, big, 2, link, bucket_bytes=1e7)
    assert step == pytest.approx(fwd + (1.0 - 0.01) + 0.01 + opt)
    assert perf.ddp_step_seconds(fwd, bwd, opt, big, 1, link) == fwd + bwd + opt


def test_scaling_efficiency_falls_with_more_devices_and_slower_links():
    args = (0.005, 0.01, 0.001, 150e6)  # 16 ms of compute, a 150 MB gradient
    nvlink = [perf.scaling_efficiency(*args, n, perf.NVLINK) for n in (1, 2, 4, 8)]
    pcie = [perf.scaling_efficiency(*args, n, perf.PCIE) for n in (1, 2, 4, 8)]
    assert nvlink[0] == pcie[0] == 1.0
    assert all(a >= b for a, b in zip(nvlink, nvlink[1:]))
    assert all(a >= b for a, b in zip(pcie, pcie[1:]))
    assert all(n >= p for n, p in zip(nvlink, pcie))
    assert pcie[-1] < 0.9 and all(math.isfinite(e) and 0 < e <= 1 for e in nvlink + pcie)


def test_predict_ddp_scaling_states_its_compute_and_gradient_terms():
    rows = perf.predict_ddp_scaling(fwd_flops_per_img=1e10, params=10_000_000, batch_per_device=100,
                                    worlds=(1, 8), peak_flops=1e15, mfu=0.5)
    assert {(r["link"], r["gpus"]) for r in rows} == {(l.name, n) for l in (perf.NVLINK, perf.PCIE) for n in (1, 8)}
    for r in rows:
        assert r["compute_s"] == pytest.approx(3 * 1e10 * 100 / 5e14)  # forward + backward = 3x forward
        assert r["grad_bytes"] == 40_000_000
    one = [r for r in rows if r["gpus"] == 1]
    assert all(r["predicted_efficiency"] == 1.0 and r["allreduce_s"] == 0 for r in one)
    eight = {r["link"]: r for r in rows if r["gpus"] == 8}
    assert eight[perf.PCIE.name]["predicted_efficiency"] < eight[perf.NVLINK.name]["predicted_efficiency"] < 1.0
