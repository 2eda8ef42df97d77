"""Performance accounting: what a model costs, what the machine can do, what N devices should give.

Three questions, each answered with a number rather than a feeling:

* **Cost.** ``count_flops(fn)`` counts the floating-point operations of one call with
  ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add is 2 FLOPs; convolutions
  and matmuls are counted, element-wise ops are not, as is usual for MFU).
  ``saved_activation_bytes(fn)`` adds up the tensors autograd keeps for backward, the
  part of training memory that grows with the batch.
* **Limit.** ``matmul_peak(device, dtype)`` times large square matmuls, the fastest
  thing the machine does, and returns FLOP/s. Achieved FLOP/s over this peak is the
  model-FLOPs utilisation (MFU, Chowdhery et al. 2022, PaLM appendix B).
* **Scaling.** ``ring_allreduce_seconds`` and ``ddp_step_seconds`` are the usual model of
  data-parallel training. A ring all-reduce of ``B`` bytes over ``N`` devices sends
  ``2 (N - 1) / N * B`` bytes through each link (Patarasuk & Yuan 2009), so

      t_allreduce(N) = 2 (N - 1) / N * B / bandwidth + 2 (N - 1) * latency

  and DDP starts reducing each gradient bucket as soon as backward has filled it
  (Li et al. 2020, "PyTorch Distributed"), so only the communication that backward
  cannot hide is added to the step:

      t_step(N) = t_forward + max(t_backward, t_allreduce(N) - t_last_bucket) + t_last_bucket + t_optimizer

  with ``t_last_bucket`` the time to reduce the final bucket, which has nothing left to
  overlap with. Scaling efficiency is ``t_step(1) / t_step(N)`` at a fixed batch per device.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (forward, or forward + backward if ``fn`` calls backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def saved_activation_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn`` runs its forward pass.
    Parameters are saved by reference, so they are left out (count them separately)."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, torch.nn.Parameter):
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(fn: Callable[[], object], device: torch.device, iters: int, warmup: int = 2,
                  repeats: int = 3) -> float:
    """Median over ``repeats`` of the mean seconds per call of ``fn`` over ``iters`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - start) / iters)
    return statistics.median(times)


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, size: int | None = None,
                seconds: float = 1.0) -> float:
    """Measured FLOP/s of ``size x size`` matmuls (2 n^3 FLOPs each): the best of several
    timed batches, so a noisy neighbour can only make the peak look lower, never higher."""
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    flops = 2 * size ** 3
    once = time_per_call(lambda: a @ b, device, iters=1, warmup=2, repeats=1)
    iters = max(1, int(seconds / 5 / max(once, 1e-6)))
    best = min(time_per_call(lambda: a @ b, device, iters=iters, warmup=0, repeats=1) for _ in range(5))
    return flops / best


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far, in bytes.

    Linux's ``VmHWM`` is used where it exists: ``getrusage``'s ``ru_maxrss`` survives
    ``exec``, so a child started by a big parent would report the parent's peak.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def ring_allreduce_seconds(nbytes: float, world: int, bandwidth: float, latency: float = 0.0) -> float:
    """Time of a ring all-reduce of ``nbytes`` over ``world`` devices (module docstring);
    ``bandwidth`` in bytes/s per link, ``latency`` in seconds per message. 0 for one device."""
    if world <= 1:
        return 0.0
    return 2 * (world - 1) / world * nbytes / bandwidth + 2 * (world - 1) * latency


@dataclass
class Link:
    """An interconnect for the scaling model: achievable all-reduce bus bandwidth (bytes/s)
    and per-message latency (s). These are assumptions, stated where they are used."""

    name: str
    bandwidth: float
    latency: float


# Assumed links (not measured here): NVLink 4 (H100 SXM, 450 GB/s per direction; NCCL
# all-reduce bus bandwidth around 360 GB/s in published nccl-tests runs) and PCIe 4.0 x16
# (32 GB/s per direction; around 20 GB/s achieved for a ring through the host).
NVLINK = Link("NVLink (H100 SXM)", 360e9, 10e-6)
PCIE = Link("PCIe 4.0 x16", 20e9, 20e-6)


def ddp_step_seconds(forward_s: float, backward_s: float, optimizer_s: float, grad_bytes: float, world: int,
                     link: Link, bucket_bytes: float = 25 * 2 ** 20) -> float:
    """Predicted step time with DDP's bucketed all-reduce overlapping backward (module docstring).
    ``bucket_bytes`` is DDP's ``bucket_cap_mb`` (25 MiB by default)."""
    if world <= 1:
        return forward_s + backward_s + optimizer_s
    total = ring_allreduce_seconds(grad_bytes, world, link.bandwidth, link.latency)
    last = ring_allreduce_seconds(min(bucket_bytes, grad_bytes), world, link.bandwidth, link.latency)
    return forward_s + max(backward_s, total - last) + last + optimizer_s


def scaling_efficiency(forward_s: float, backward_s: float, optimizer_s: float, grad_bytes: float, world: int,
                       link: Link, bucket_bytes: float = 25 * 2 ** 20) -> float:
    """t_step(1) / t_step(N) at a fixed batch per device: 1.0 is perfect linear scaling."""
    single = forward_s + backward_s + optimizer_s
    return single / ddp_step_seconds(forward_s, backward_s, optimizer_s, grad_bytes, world, link, bucket_bytes)


# Assumed H100 SXM figures for the GPU predictions (NVIDIA data sheet values, not measured here).
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s
H100_HBM = 3.35e12  # bytes/s of HBM3, for the memory-bound AdamW update
ASSUMED_MFU = 0.35  # the share of the peak a step is assumed to reach (the course's GPU target)


def predict_ddp_scaling(fwd_flops_per_img: float, params: int, batch_per_device: int,
                        worlds=(1, 2, 4, 8), links=(NVLINK, PCIE), peak_flops: float = H100_BF16_PEAK,
                        mfu: float = ASSUMED_MFU, memory_bandwidth: float = H100_HBM) -> list[dict]:
    """Predicted DDP efficiency for each link and world size, at a fixed batch per device.

    Compute per step: 3x the forward FLOPs (backward costs about twice the forward) at ``mfu``
    of ``peak_flops``, one third forward and two thirds backward; the AdamW update reads and
    writes 4 fp32 tensors per parameter at ``memory_bandwidth``; the gradient (fp32) goes
    through the ring all-reduce and DDP overlap model above.
    """
    compute = 3 * fwd_flops_per_img * batch_per_device / (peak_flops * mfu)
    optimizer = 2 * 4 * 4 * params / memory_bandwidth
    grad_bytes = 4 * params
    rows = []
    for link in links:
        for world in worlds:
            rows.append(dict(link=link.name, gpus=world, params=params, batch_per_gpu=batch_per_device,
                             compute_s=compute, optimizer_s=optimizer, grad_bytes=grad_bytes,
                             allreduce_s=ring_allreduce_seconds(grad_bytes, world, link.bandwidth, link.latency),
                             predicted_efficiency=scaling_efficiency(compute / 3, 2 * compute / 3, optimizer,
                                                                     grad_bytes, world, link)))
    return rows
