"""A DDP bug clinic: five classic bugs, each run next to its fix on 2+ CPU ranks, each symptom measured.

    python -m torch.distributed.run --standalone --nproc_per_node=2 failure_demos/ddp_bugs.py \
        --out ../runs/10_failure_modes/ddp_bugs.json

(from a notebook: ``ddpm_lib.launch.launch("failure_demos.ddp_bugs", [...])``, with ``PYTHONPATH=.``.)

One launch runs every bug, because starting torchrun and its ranks costs seconds. Each
function below builds its own tiny conditional U-Net (8 px digits, ``ddpm_lib.unet``) or
sampler, runs the buggy version and the fixed one on the same ranks, gathers what every
rank holds (``ddpm_lib.dist.gather_objects``) and returns numbers; rank 0 writes them to
``--out`` as JSON. The fix of every bug is what ``ddpm_lib.train`` / ``ddpm_lib.sample`` do.

``ema_before_broadcast``  EMA(net) built before DDP(net) broadcasts rank 0's weights, with
                          per-rank seeds: every rank's EMA starts from its own random init.
``no_set_epoch``          a DistributedSampler whose ``set_epoch`` is never called: every
                          epoch reads the same order.
``same_seed``             every rank seeded alike: the ranks draw the same timesteps and
                          noise for their (different) images.
``summed_loss``           the loss summed over the batch instead of averaged: the gradient
                          grows with the batch size.
``sampling_seed``         every rank samples with the same seed: duplicate images.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DistributedSampler

from ddpm_lib.config import load_config
from ddpm_lib.data import load_digits, to_float
from ddpm_lib.diffusion import diffusion_loss
from ddpm_lib.dist import distributed, exit_worker_if_distributed, gather_objects
from ddpm_lib.ema import EMA
from ddpm_lib.sample import generate
from ddpm_lib.schedules import make_schedule
from ddpm_lib.unet import build_unet

warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")  # harmless, see ddpm_lib.train

CFG = load_config("base", ["data.img_size=8", "model.base_channels=16", "model.attn_resolutions=[]",
                           "diffusion.timesteps=100"])


def flat(module: torch.nn.Module) -> torch.Tensor:
    """All parameters of ``module`` as one float32 vector."""
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def max_gap(vectors: list[torch.Tensor]) -> float:
    """max |v_r - v_0| over every rank r and entry: 0.0 when all ranks hold the same tensor."""
    return max(((v - vectors[0]).abs().max().item() for v in vectors[1:]), default=0.0)


def new_net(data) -> torch.nn.Module:
    return build_unet(CFG.model, data.channels, data.num_classes, data.img_size)


def my_shard(env, data) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's images (float in [-1, 1]) and labels: every world_size-th image from position rank."""
    idx = torch.arange(env.rank, len(data), env.world_size)
    return to_float(data.images[idx]), data.labels[idx]


def ema_before_broadcast(env, data, args) -> dict:
    """Bug: ``ema = EMA(net)`` before ``DDP(net)``. Fix: after it (``ddpm_lib.train``'s order)."""
    torch.manual_seed(args.seed + env.rank)  # per-rank seeds, as ddpm_lib.train: each rank inits its own weights
    net = new_net(data)
    init_gap = max_gap(gather_objects(env, flat(net)))
    bug = EMA(net, decay=0.999, warmup=False)  # BUG: copies this rank's own init
    bug_warm = EMA(net, decay=0.999, warmup=True)  # the same bug with ddpm_lib's warm-up (train.ema_warmup)
    model = DDP(net)  # broadcasts rank 0's weights into net, in place, on every rank
    fix = EMA(net, decay=0.999, warmup=False)  # FIX: the EMA copies the broadcast weights
    live_after_ddp = max_gap(gather_objects(env, flat(net)))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    schedule = make_schedule(CFG.diffusion.schedule, CFG.diffusion.timesteps)
    x_all, y_all = my_shard(env, data)
    gaps = {"bug": [], "bug_warmup": [], "fix": [], "live": []}
    steps = []
    for step in range(args.ema_steps + 1):
        if step:  # step 0: just after construction
            idx = torch.randint(0, len(x_all), (args.batch_size,))
            loss = diffusion_loss(model, schedule, x_all[idx], y_all[idx], null_class=data.num_classes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # gradients averaged over ranks: the live weights stay equal
            optimizer.step()
            for ema in (bug, bug_warm, fix):
                ema.update(net)
        if step in (0, 1) or step % args.ema_every == 0 or step == args.ema_steps:
            steps.append(step)
            for name, module in (("bug", bug.model), ("bug_warmup", bug_warm.model), ("fix", fix.model), ("live", net)):
                gaps[name].append(max_gap(gather_objects(env, flat(module))))
    return {"init_gap": init_gap, "live_gap_after_ddp": live_after_ddp, "steps": steps,
            **{f"{k}_gap": v for k, v in gaps.items()},
            "mean_abs_weight": flat(net).abs().mean().item(), "decay": 0.999}


def no_set_epoch(env, data, args) -> dict:
    """Bug: the sampler's ``set_epoch`` is never called. Fix: ``sampler.set_epoch(epoch)`` every epoch."""
    out = {}
    for name, call_set_epoch in (("bug", False), ("fix", True)):
        sampler = DistributedSampler(range(len(data)), num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                     seed=args.seed, drop_last=True)
        orders = []
        for epoch in range(args.epochs):
            if call_set_epoch:
                sampler.set_epoch(epoch)
            orders.append(list(sampler))
        everyone = gather_objects(env, orders)  # [rank][epoch] -> list of indices
        out[name] = {
            "first_indices": [[o[:8] for o in rank_orders] for rank_orders in everyone],
            "epochs_same_as_epoch_0": [sum(rank_orders[e] == rank_orders[0] for e in range(1, args.epochs))
                                       for rank_orders in everyone],
            "ranks_disjoint": all(not set(everyone[a][e]) & set(everyone[b][e]) for e in range(args.epochs)
                                  for a in range(env.world_size) for b in range(a + 1, env.world_size)),
        }
    out["epochs"] = args.epochs
    return out


class Recorder(torch.nn.Module):
    """Stands in for the U-Net inside ``diffusion_loss``: records the (x_t, t, y) it is called with."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x_t, t, y):
        self.calls.append((x_t.detach().clone(), t.clone(), y.clone()))
        return torch.zeros_like(x_t)


def same_seed(env, data, args) -> dict:
    """Bug: ``torch.manual_seed(seed)`` on every rank. Fix: ``seed + rank`` (``ddpm_lib.train``)."""
    schedule = make_schedule(CFG.diffusion.schedule, CFG.diffusion.timesteps)
    x_all, y_all = my_shard(env, data)
    x0, y = x_all[:args.batch_size], y_all[:args.batch_size]  # different images on every rank (its own shard)
    out = {}
    for name, seed in (("bug", args.seed), ("fix", args.seed + env.rank)):
        torch.manual_seed(seed)
        rec = Recorder()
        diffusion_loss(rec, schedule, x0, y, null_class=data.num_classes)  # draws t and noise as in training
        x_t, t, _ = rec.calls[0]
        noise = (x_t - schedule.gather("sqrt_alpha_bar", t) * x0) / schedule.gather("sqrt_one_minus_alpha_bar", t)
        ts, noises, images = zip(*gather_objects(env, (t, noise, x0)))
        global_noise = torch.cat(noises).flatten(1)  # (W * b, C * H * W): the global batch's noise draws
        # the same draw, up to the rounding of the inversion (max |difference| over the pixels)
        close = (global_noise[:, None] - global_noise[None]).abs().amax(-1) < 1e-4
        out[name] = {
            "t_rank0": ts[0][:8].tolist(), "t_rank1": ts[1][:8].tolist(),
            "same_t_fraction": (ts[1] == ts[0]).float().mean().item(),
            "noise_max_diff": max_gap(list(noises)),
            "images_differ": max_gap(list(images)) > 0,
            "distinct_noise_draws": int((~torch.triu(close, diagonal=1).any(0)).sum()),  # first of each group
            "global_batch": len(global_noise),
        }
    return out


def summed_loss(env, data, args) -> dict:
    """Bug: the squared error summed over the batch. Fix: averaged (``F.mse_loss``'s default, ``diffusion_loss``)."""
    schedule = make_schedule(CFG.diffusion.schedule, CFG.diffusion.timesteps)
    torch.manual_seed(args.seed)
    net = new_net(data)
    model = DDP(net)
    x_all, y_all = my_shard(env, data)
    rows = []
    for b in args.sum_batches:
        g = torch.Generator().manual_seed(args.seed + env.rank)
        x0, y = x_all[:b], y_all[:b]
        t = torch.randint(0, schedule.timesteps, (b,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        x_t = schedule.gather("sqrt_alpha_bar", t) * x0 + schedule.gather("sqrt_one_minus_alpha_bar", t) * noise
        grads = {}
        for name in ("fix", "bug"):
            net.zero_grad(set_to_none=True)
            sq = (model(x_t, t, y) - noise) ** 2
            loss = sq.sum() if name == "bug" else sq.mean()  # BUG: .sum(); FIX: .mean()
            loss.backward()  # DDP averages over ranks either way
            grads[name] = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        ratio = grads["bug"].norm() / grads["fix"].norm()
        elementwise = (grads["bug"] - ratio * grads["fix"]).abs().max() / grads["bug"].abs().max()
        rows.append({"batch_per_rank": b, "elements_per_rank": x0.numel(), "grad_norm_mean": grads["fix"].norm().item(),
                     "grad_norm_sum": grads["bug"].norm().item(), "ratio": ratio.item(),
                     "max_rel_dev_from_scaled": elementwise.item()})
    return {"rows": rows, "shape": list(x_all.shape[1:])}


def sampling_seed(env, data, args) -> dict:
    """Bug: each rank calls ``generate(..., seed=seed)`` on its own. Fix: ``generate(..., env=env)``
    (chunk c seeded seed + c, drawn by rank c % world_size)."""
    torch.manual_seed(args.seed)
    net = new_net(data).eval()
    labels = torch.arange(data.num_classes).repeat_interleave(args.per_class)  # what each rank is asked to draw
    kw = dict(sampler="ddim", steps=args.sample_steps, guidance_scale=2.0, eta=0.5, seed=args.seed, progress=False)
    out = {}
    # BUG: every rank samples all of its images as if it were alone: chunk 0, seed + 0, on every rank
    mine = generate(net, CFG, labels, batch_size=len(labels), **kw)
    bug = torch.cat(gather_objects(env, mine))  # the W * n images the ranks would write
    # FIX: the ranks share the W * n images by chunks, seeded seed + chunk whichever rank draws them
    fix = generate(net, CFG, labels.repeat(env.world_size), batch_size=len(labels), env=env, **kw)
    for name, images in (("bug", bug), ("fix", fix)):
        distinct = len({img.numpy().tobytes() for img in images})
        out[name] = {"images": len(images), "distinct": distinct, "duplicates": len(images) - distinct}
    return out


BUGS = {"ema_before_broadcast": ema_before_broadcast, "no_set_epoch": no_set_epoch, "same_seed": same_seed,
        "summed_loss": summed_loss, "sampling_seed": sampling_seed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="per rank")
    p.add_argument("--ema-steps", type=int, default=5)
    p.add_argument("--ema-every", type=int, default=5, help="measure the EMA gap every this many steps")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--sum-batches", type=int, nargs="+", default=[8, 16])
    p.add_argument("--per-class", type=int, default=1, help="images per class each rank draws")
    p.add_argument("--sample-steps", type=int, default=5)
    p.add_argument("--only", nargs="+", choices=list(BUGS), default=list(BUGS))
    args = p.parse_args()
    with distributed("cpu", threads=1) as env:
        if env.world_size < 2:
            raise SystemExit("run on 2 or more ranks: every bug here is a disagreement between ranks")
        data = load_digits(8)
        results = {"world_size": env.world_size, "args": vars(args)}
        for name in args.only:
            started = time.time()
            results[name] = BUGS[name](env, data, args)
            results[name]["seconds"] = round(time.time() - started, 2)
            if env.is_main:
                print(f"[ddp_bugs] {name}: measured in {results[name]['seconds']:.2f}s", flush=True)
        if env.is_main:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1))
    exit_worker_if_distributed()


if __name__ == "__main__":
    main()
