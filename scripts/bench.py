"""Benchmark ddpm_lib side by side with Hugging Face diffusers, in one process, on this machine.

    python scripts/bench.py                          # CPU (2 threads): every section, about 35 minutes
    python scripts/bench.py --only ttq,ablations     # one or more of: throughput levers profile ttq ablations busy scaling
    python scripts/bench.py --mode gpu               # on a GPU: bf16, cifar preset, batch 128 and 512
    python scripts/bench.py --quick                  # a few seconds per section: checks the script works
    python scripts/bench.py --report FILE.jsonl      # print the tables, redraw the figures

Sections (each row of the results file is one JSON object; see ``scripts/benchmarks/README.md``):

* ``throughput``: ddpm_lib's ``ConditionalUNet`` and diffusers' ``UNet2DModel`` built at the
  same size (same channels, blocks, attention resolutions, class embedding, scale-shift
  norm: parameters and FLOPs agree within 3%), each measured for training images/s
  (forward + backward + AdamW), sampling image x network-evaluations/s, peak memory,
  FLOPs per image and achieved FLOP/s as a fraction of the measured matmul peak. The two
  models are measured in alternation, repeat after repeat, so a noisy machine slows both.
* ``levers``: ddpm_lib's model with one change at a time (channels_last, torch.compile,
  threads, fused AdamW, attention kernel and placement, a host sync per step, the data path).
* ``profile``: where a training step's time goes (``torch.profiler`` self time, grouped into
  convolution, attention, linear, group norm, element-wise and optimizer ops) for both models.
* ``ttq`` (time to quality, CPU): wall-clock training seconds until the conditional samples
  (500, judged by the domain classifier) reach a recipe's targets: the ``learner`` preset (the
  notebooks' shared model) >= 95% class accuracy; the default ``digits`` recipe >= 99% and a domain
  FID within 1.3x of its real-vs-real floor. Each ddpm_lib recipe runs to the end of its own run
  (``ddpm_lib.train``) over ``--seeds`` seeds, judged every ``--eval-every`` steps and at the end;
  then a baseline built the standard diffusers way (``UNet2DModel`` + ``DDPMScheduler``, linear
  schedule, lr 1e-4 with warm-up, no EMA, no guidance) on the same data, judged by the same
  classifier against the default's targets, with ``--budget`` seconds of training. Each run is
  its own child process, so its peak resident memory is its own.
* ``ablations`` (CPU): the default recipe with one lever changed at a time (loss weighting,
  v-prediction, zero terminal SNR, timestep sampling, T, learning rate, batch size, width, depth,
  schedule, EMA, guidance), each a full run judged at its end like the ttq rows.
* ``busy`` (CPU): training img/s with every thread count, on an idle machine and while another
  process keeps one core busy (a learner's browser and JupyterLab), timed in alternation.
* ``scaling`` (CPU): 1 rank x 2 threads against 2 gloo ranks x 1 thread under torchrun, the
  step split into compute and gradient all-reduce, and the ring all-reduce model of
  ``ddpm_lib.perf`` checked against it; then the model's prediction for 1-8 GPUs.

Results go to ``scripts/benchmarks/results/<date>_<device>.jsonl`` (appended), so every
number on the benchmark page (scripts/benchmarks/README.md) can be traced to a row with its device,
threads, versions and settings.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

# DDP on CPU: a 1x1 conv's gradient comes back with other strides than its bucket; harmless.
warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm_lib import perf  # noqa: E402
from ddpm_lib.config import MODEL_PRESETS, load_config  # noqa: E402
from ddpm_lib.data import load_digits, to_float  # noqa: E402
from ddpm_lib.diffusion import q_sample  # noqa: E402
from ddpm_lib.schedules import make_schedule  # noqa: E402
from ddpm_lib.unet import ConditionalUNet, SelfAttention, count_parameters  # noqa: E402

RESULTS = ROOT / "scripts" / "benchmarks" / "results"
FIGURES = ROOT / "figures"
SECTIONS = ("throughput", "levers", "profile", "ttq", "ablations", "busy", "scaling")
MODES = {
    # preset, image size, channels, batch sizes, autocast dtype, matmul peak dtype
    "cpu": dict(preset="tiny", img_size=16, channels=1, batch_sizes=[64], sample_batch=256, dtype=None),
    "gpu": dict(preset="cifar", img_size=32, channels=3, batch_sizes=[128, 512], sample_batch=512,
                dtype=torch.bfloat16),
}
NUM_CLASSES = 10


# ---------------------------------------------------------------- the two models, at the same size

def ours(preset: str, channels: int, img_size: int, **changes) -> ConditionalUNet:
    spec = {**MODEL_PRESETS[preset], **changes}
    return ConditionalUNet(channels, NUM_CLASSES, img_size, **spec)


def theirs(preset: str, channels: int, img_size: int):
    """diffusers' ``UNet2DModel`` with ddpm_lib's layout: the same channels per level, ResBlocks
    per level (+1 on the way up), attention at the same resolutions and in the middle, a class
    embedding with a null row, and scale-shift ("adaptive") group norm."""
    from diffusers import UNet2DModel

    spec = MODEL_PRESETS[preset]
    levels = len(spec["channel_mult"])
    attn = [img_size // 2 ** i in spec["attn_resolutions"] for i in range(levels)]
    return UNet2DModel(
        sample_size=img_size, in_channels=channels, out_channels=channels,
        block_out_channels=tuple(spec["base_channels"] * m for m in spec["channel_mult"]),
        layers_per_block=spec["num_res_blocks"],
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        attention_head_dim=None if spec["num_heads"] == 1 else spec["base_channels"] // spec["num_heads"],
        norm_num_groups=32, resnet_time_scale_shift="scale_shift", num_class_embeds=NUM_CLASSES + 1,
        dropout=spec["dropout"],
    )


def network(model, compile: bool = False) -> callable:
    """eps(x, t, y) for either library, optionally through ``torch.compile``."""
    if compile:  # time a cold compile, as a learner's first run sees it, not inductor's on-disk cache
        import torch._inductor.config
        torch._inductor.config.force_disable_caches = True
    run = torch.compile(model) if compile else model
    if isinstance(model, ConditionalUNet):
        return run
    return lambda x, t, y: run(x, t, class_labels=y, return_dict=False)[0]


def manual_attention(self, x, emb=None):
    """SelfAttention.forward with an explicit softmax(q k^T / sqrt(d)) v instead of SDPA."""
    b, c, h, w = x.shape
    qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
    q, k, v = qkv.transpose(-1, -2).unbind(1)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return x + self.proj((weights @ v).transpose(-1, -2).reshape(b, c, h, w))


# ---------------------------------------------------------------- one measured configuration

@functools.lru_cache(maxsize=None)
def training_images(img_size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, C, H, W) and labels (N,) to train on, made once per run: the embedded
    digits for 1 channel, seeded random images (2,048 in 10 classes) for 3."""
    if channels == 1:
        digits = load_digits(img_size)
        return digits.images, digits.labels
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2048, channels, img_size, img_size), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, NUM_CLASSES, (2048,), generator=g)


class Case:
    """A model plus everything one training step and one sampling forward need."""

    def __init__(self, name: str, model, device, batch: int, sample_batch: int, dtype, img_size: int,
                 channels: int, channels_last=False, fused=False, compile=False, item_per_step=False,
                 data="tensor", threads: int | None = None, variant: str = "default"):
        self.name, self.variant, self.device, self.batch, self.dtype = name, variant, device, batch, dtype
        self.threads, self.item_per_step, self.data_path = threads, item_per_step, data
        self.settings = dict(channels_last=channels_last, fused_adamw=fused, compile=compile,
                             item_per_step=item_per_step, data=data)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.module = model.to(device, memory_format=memory_format)
        self.params = count_parameters(self.module)
        self.forward = network(self.module, compile)
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=1e-4, fused=fused or None,
                                           foreach=None if fused else True)
        self.schedule = make_schedule("cosine", 1000)
        images, labels = training_images(img_size, channels)
        self.images = to_float(images).to(device, memory_format=memory_format)
        self.labels = labels.to(device)
        if data == "dataloader":
            from torch.utils.data import DataLoader

            from ddpm_lib.data import ImageDataset
            dataset = ImageDataset(images, labels)
            self.loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                                     generator=torch.Generator().manual_seed(0))
            self.batches = iter(self.loader)
        self.sample_x = torch.randn(sample_batch, channels, img_size, img_size, device=device).to(
            memory_format=memory_format)
        self.sample_t = torch.full((sample_batch,), 500, device=device, dtype=torch.long)
        self.sample_y = torch.randint(0, NUM_CLASSES + 1, (sample_batch,), device=device)
        self.memory_format = memory_format

    def next_batch(self):
        if self.data_path == "dataloader":
            try:
                x, y = next(self.batches)
            except StopIteration:
                self.batches = iter(self.loader)
                x, y = next(self.batches)
            return x.to(self.device, memory_format=self.memory_format), y.to(self.device)
        idx = torch.randint(0, len(self.images), (self.batch,), device=self.device)
        return self.images[idx], self.labels[idx]

    def loss(self):
        x0, y = self.next_batch()
        t = torch.randint(0, 1000, (self.batch,), device=self.device)
        noise = torch.randn_like(x0)
        x_t = q_sample(self.schedule, x0, t, noise)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return F.mse_loss(self.forward(x_t, t, y).float(), noise)

    def train_step(self):
        loss = self.loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.item_per_step:
            loss.item()

    @torch.no_grad()
    def sample_forward(self):
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return self.forward(self.sample_x, self.sample_t, self.sample_y)

    def count(self) -> dict:
        """FLOPs per image (forward; forward + backward) and training memory."""
        x = self.sample_x[:2]
        fwd = perf.count_flops(lambda: self.forward(x, self.sample_t[:2], self.sample_y[:2])) / 2
        train = perf.count_flops(lambda: self.loss().backward()) / self.batch
        self.optimizer.zero_grad(set_to_none=True)
        state_bytes = 4 * self.params * 4  # weights, gradients, AdamW's two moments (fp32)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.train_step()
            torch.cuda.synchronize(self.device)
            memory, method = torch.cuda.max_memory_allocated(self.device), "torch.cuda.max_memory_allocated"
        else:
            memory = state_bytes + perf.saved_activation_bytes(self.loss)
            method = "weights+grads+AdamW state + tensors saved for backward"
        return dict(fwd_flops_per_img=fwd, train_flops_per_img=train, peak_memory_bytes=memory, memory_method=method)


def with_threads(threads: int | None, fn):
    if threads is None:
        return fn()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def measure(cases: list[Case], repeats: int, train_iters: int, sample_iters: int, sample: bool = True) -> dict:
    """Time every case, alternating between them ``repeats`` times; median seconds per call."""
    train_s = {c: [] for c in cases}
    sample_s = {c: [] for c in cases}
    for c in cases:  # warm-up (and compilation) outside the timed loop
        c.compile_s = with_threads(c.threads, lambda: perf.time_per_call(c.train_step, c.device, 1, 0, 1))
        with_threads(c.threads, lambda: perf.time_per_call(c.train_step, c.device, 1, 1, 1))
        if sample:
            with_threads(c.threads, lambda: perf.time_per_call(c.sample_forward, c.device, 1, 1, 1))
    for _ in range(repeats):
        for c in cases:
            train_s[c].append(with_threads(c.threads, lambda: perf.time_per_call(c.train_step, c.device,
                                                                                 train_iters, 0, 1)))
            if sample:
                sample_s[c].append(with_threads(c.threads, lambda: perf.time_per_call(c.sample_forward, c.device,
                                                                                      sample_iters, 0, 1)))
    median = lambda xs: sorted(xs)[len(xs) // 2] if xs else None  # noqa: E731
    return {c: (median(train_s[c]), median(sample_s[c])) for c in cases}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, threads: int) -> dict:
    try:
        import diffusers
        diffusers_version = diffusers.__version__
    except ImportError:
        diffusers_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return dict(date=datetime.date.today().isoformat(), device=device.type, device_name=name, threads=threads,
                cpu_count=os.cpu_count(), torch=torch.__version__, diffusers=diffusers_version,
                python=platform.python_version())


def case_rows(section: str, cases: list[Case], timings: dict, peak: float, env: dict, sample_batch: int) -> list[dict]:
    rows = []
    for c in cases:
        train_s, sample_s = timings[c]
        counted = c.count()
        train_img_s = c.batch / train_s
        row = dict(section=section, model=c.name, variant=c.variant, **{**env, "threads": c.threads or env["threads"]},
                   dtype=str(c.dtype or torch.float32).replace("torch.", ""), batch_size=c.batch,
                   params=c.params, **counted, settings=c.settings, matmul_peak_flops=peak,
                   train_img_per_s=train_img_s, train_mfu=train_img_s * counted["train_flops_per_img"] / peak,
                   first_step_s=c.compile_s)
        if sample_s is not None:
            rate = sample_batch / sample_s
            row.update(sample_batch=sample_batch, sample_img_nfe_per_s=rate,
                       sample_mfu=rate * counted["fwd_flops_per_img"] / peak)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- sections

def mode_case(name: str, build, mode: dict, device, batch: int, model_changes: dict | None = None, **changes) -> Case:
    """A :class:`Case` of ``build`` (``ours`` or ``theirs``) at the mode's preset, image size,
    channels, dtype and sampling batch; ``changes`` override the case's settings."""
    model = build(mode["preset"], mode["channels"], mode["img_size"], **(model_changes or {}))
    settings = dict(device=device, batch=batch, sample_batch=mode["sample_batch"], dtype=mode["dtype"],
                    img_size=mode["img_size"], channels=mode["channels"])
    return Case(name, model, **{**settings, **changes})


def run_throughput(args, mode: dict, device, peak: float, env: dict) -> list[dict]:
    """Both models at the same size, contiguous and channels_last, at each batch size."""
    rows = []
    for batch in args.batch_sizes or mode["batch_sizes"]:
        cases = [mode_case(name, build, mode, device, batch, channels_last=cl,
                           variant="channels_last" if cl else "default")
                 for cl in (False, True) for name, build in (("ddpm_lib", ours), ("diffusers", theirs))]
        timings = measure(cases, args.repeats, args.train_iters, args.sample_iters)
        rows += case_rows("throughput", cases, timings, peak, env, mode["sample_batch"])
    return rows


def run_levers(args, mode: dict, device, peak: float, env: dict) -> list[dict]:
    """ddpm_lib's model with one change at a time against the plain (default) case."""
    batch = (args.batch_sizes or mode["batch_sizes"])[0]
    size = mode["img_size"]
    variants = {
        "default": ({}, {}),
        "channels_last": ({}, dict(channels_last=True)),
        "fused_adamw": ({}, dict(fused=True)),
        "item_per_step": ({}, dict(item_per_step=True)),
        "dataloader": ({}, dict(data="dataloader")),
        "no_attention": (dict(attn_resolutions=()), {}),
        f"attention_at_{size}px": (dict(attn_resolutions=(size,)), {}),
        "manual_attention": ({}, {}),
    }
    if device.type == "cpu":
        variants["threads_1"] = ({}, dict(threads=1))
    if not args.quick:
        variants["torch_compile"] = ({}, dict(compile=True))
    cases = []
    for variant, (model_changes, case_changes) in variants.items():
        torch.manual_seed(0)
        cases.append(mode_case("ddpm_lib", ours, mode, device, batch, model_changes, variant=variant, **case_changes))
    manual = next(c for c in cases if c.variant == "manual_attention")
    for module in manual.module.modules():
        if isinstance(module, SelfAttention):
            module.forward = manual_attention.__get__(module)
    timings = measure(cases, args.repeats, args.train_iters, args.sample_iters)
    return case_rows("levers", cases, timings, peak, env, mode["sample_batch"])


OP_GROUPS = (  # (group, substrings of aten op names), first match wins
    ("convolution", ("conv", "mkldnn")),
    ("attention", ("attention", "softmax", "bmm", "baddbmm")),
    ("linear", ("addmm", "aten::mm", "linear")),
    ("group norm", ("group_norm",)),
    ("optimizer", ("adam", "_foreach", "clip")),
    ("element-wise", ("silu", "add", "mul", "sub", "div", "copy", "fill", "zero", "cat", "sqrt", "pow",
                      "neg", "exp", "sum", "mean", "mse", "randn", "randint", "index", "upsample", "pad")),
)


def op_group(name: str) -> str:
    return next((group for group, keys in OP_GROUPS if any(k in name for k in keys)), "other")


def profiled_step(case: Case) -> None:
    """``case.train_step`` with its phases labelled, so the optimizer's element-wise ops are told apart."""
    with torch.profiler.record_function("bench::forward"):
        loss = case.loss()
    case.optimizer.zero_grad(set_to_none=True)
    with torch.profiler.record_function("bench::backward"):
        loss.backward()
    with torch.profiler.record_function("bench::optimizer"):
        case.optimizer.step()


def run_profile(args, mode: dict, device, peak: float, env: dict) -> list[dict]:
    """Where a training step's time goes (torch.profiler, self time per op, grouped)."""
    rows = []
    batch = (args.batch_sizes or mode["batch_sizes"])[0]
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    for name, build in (("ddpm_lib", ours), ("diffusers", theirs)):
        case = mode_case(name, build, mode, device, batch, sample_batch=2, fused=name == "ddpm_lib")
        for _ in range(3):
            case.train_step()
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(args.train_iters):
                profiled_step(case)
            perf.synchronize(device)
        attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        groups: dict[str, float] = {}
        by_op: dict[str, float] = {}
        for event in prof.events():
            root = event
            while root.cpu_parent is not None:
                root = root.cpu_parent
            group = "optimizer" if root.name == "bench::optimizer" else op_group(event.name)
            if not event.name.startswith("bench::"):
                groups[group] = groups.get(group, 0.0) + getattr(event, attr)
                by_op[event.name] = by_op.get(event.name, 0.0) + getattr(event, attr)
        total = sum(groups.values()) or 1.0
        groups = {g: t / total for g, t in groups.items()}
        top = sorted(by_op.items(), key=lambda e: -e[1])[:8]
        fractions = dict(sorted(groups.items(), key=lambda g: -g[1]))
        rows.append(dict(section="profile", model=name, variant="fused_adamw" if name == "ddpm_lib" else "default",
                         **env, batch_size=batch, time_fraction_by_group=fractions,
                         top_ops=[{"op": k, "fraction": t / total} for k, t in top]))
        print(f"[bench] profile {name}: " + ", ".join(f"{g} {f:.0%}" for g, f in fractions.items()), flush=True)
    return rows


# Time to quality. A recipe is a preset (plus overrides) and the quality its samples must reach:
# class accuracy judged by the domain classifier, and for the default recipe also the domain FID
# within a factor of its real-vs-real floor (the same number of real images against the reference).
TTQ_RECIPES = {
    "learner": dict(preset="learner", targets={"class_accuracy": 0.95}),
    "default": dict(preset="digits", targets={"class_accuracy": 0.99, "fid_ratio": 1.3}),
}
# The levers, one change at a time to the default recipe, each a full run of it judged at its end.
LEVER_ABLATIONS = {
    "eps-prediction (Ho et al. 2020)": ["diffusion.prediction=eps"],
    "min-SNR-5 loss weighting": ["diffusion.loss_weight=min_snr"],
    "logit-normal t sampling": ["diffusion.t_sampling=logit_normal"],
    "zero terminal SNR": ["diffusion.zero_terminal_snr=true"],
    "T = 100 diffusion steps": ["diffusion.timesteps=100"],
    "lr 2e-3": ["train.lr=2e-3"],
    "batch 64 (same epochs, half the steps)": ["train.batch_size=64"],
    "width 48 (base channels)": ["model.base_channels=48"],
    "depth 2 (ResBlocks per level)": ["model.num_res_blocks=2"],
}


def run_ttq(args, env: dict) -> list[dict]:
    """Each recipe in a child process (its own peak RSS), one after the other: the learner and the
    default recipe over ``--seeds`` seeds each, then the diffusers baseline with ``--budget``
    seconds of training, judged against the default recipe's targets."""
    seeds = range(1 if args.quick else args.seeds)
    jobs = [("ddpm_lib", name, recipe["preset"], [], seed, recipe["targets"])
            for name, recipe in TTQ_RECIPES.items() for seed in seeds]
    jobs.append(("diffusers", "default", "digits", [], 0, TTQ_RECIPES["default"]["targets"]))
    rows = [ttq_job(args, env, "ttq", *job) for job in jobs]
    ours = [r for r in rows if r["model"] == "ddpm_lib" and r["variant"] == "default"]
    ratio = _ttq_ratio(ours, rows[-1])
    for row in rows:
        row["reached_s_ratio_vs_diffusers"] = ratio
    return rows


def run_ablations(args, env: dict) -> list[dict]:
    """The default recipe (seed 0) with one lever changed at a time, each a full run judged at its end.

    With ``--ablation-jobs 2`` two runs train side by side with one thread each (half the wall
    time on 2 cores): their quality is comparable with every row's, their seconds only with each other's.
    """
    ablations = dict(list(LEVER_ABLATIONS.items())[:2]) if args.quick else LEVER_ABLATIONS
    targets = TTQ_RECIPES["default"]["targets"]
    jobs = [("ddpm_lib", name, "digits", sets, 0, targets) for name, sets in {"default": [], **ablations}.items()]
    threads = max(1, args.threads // args.ablation_jobs)
    rows = []
    for i in range(0, len(jobs), args.ablation_jobs):
        running = [start_ttq_job(args, "ablations", *job, threads=threads, per_class=args.ablation_per_class)
                   for job in jobs[i:i + args.ablation_jobs]]
        rows += [finish_ttq_job(*job, env=env) for job in running]
    for row in rows:
        row["side_by_side_jobs"] = args.ablation_jobs
    return rows


def ttq_job(args, env: dict, section: str, model: str, variant: str, preset: str, sets: list[str], seed: int,
            targets: dict) -> dict:
    """One recipe trained and judged in a child process; returns its row."""
    return finish_ttq_job(*start_ttq_job(args, section, model, variant, preset, sets, seed, targets), env=env)


def start_ttq_job(args, section: str, model: str, variant: str, preset: str, sets: list[str], seed: int,
                  targets: dict, threads: int | None = None, per_class: int = 50):
    tmp = tempfile.TemporaryDirectory()
    out = Path(tmp.name) / "row.json"
    threads = threads or args.threads
    cmd = [sys.executable, __file__, "--ttq-worker", model, "--ttq-preset", preset, "--budget", str(args.budget),
           "--eval-every", str(args.eval_every), "--out", str(out), "--threads", str(threads),
           "--ttq-targets", json.dumps(targets), "--ttq-seed", str(seed), "--ttq-per-class", str(per_class)]
    cmd += [f"--ttq-set={item}" for item in sets] + (["--quick"] if args.quick else [])
    print(f"[bench] {section}: {model} {variant} (seed {seed}, {threads} thread(s))", flush=True)
    meta = {"section": section, "variant": variant, "overrides": sets, "seed": seed}
    return subprocess.Popen(cmd), tmp, out, meta


def finish_ttq_job(proc, tmp, out, meta, env: dict) -> dict:
    with tmp:
        if proc.wait() != 0:
            raise SystemExit(f"error: the {meta['section']} run {meta['variant']!r} failed (exit {proc.returncode})")
        row = json.loads(out.read_text())
    return {**meta, **env, **row}


def _ttq_ratio(ours_rows: list[dict] | dict, theirs_row: dict) -> dict:
    """ddpm_lib's time to target (the slowest of its seeds) over diffusers'; an upper bound when
    diffusers never got there."""
    ours_rows = ours_rows if isinstance(ours_rows, list) else [ours_rows]
    if any(r["reached_s"] is None for r in ours_rows):
        return {"ratio": None, "bound": "ddpm_lib did not reach the target"}
    slowest = max(r["reached_s"] for r in ours_rows)
    if theirs_row["reached_s"] is None:
        return {"ratio": slowest / theirs_row["trained_s"], "bound": "upper (diffusers did not reach the target)"}
    return {"ratio": slowest / theirs_row["reached_s"], "bound": "measured"}


def meets(judged: dict, targets: dict) -> bool:
    """Whether judged samples reach every target: class accuracy, and FID within ``fid_ratio`` x its floor."""
    if judged["class_accuracy"] < targets["class_accuracy"]:
        return False
    return "fid_ratio" not in targets or judged["fid"] <= targets["fid_ratio"] * judged["fid_real"]


def ttq_worker(args) -> None:
    """Train one recipe, judging its samples every ``--eval-every`` steps and at the end of its
    run (ddpm_lib) or of ``--budget`` training seconds (diffusers); record when every target was met."""
    torch.set_num_threads(args.threads)
    from ddpm_lib.data import load_data
    from ddpm_lib.evaluate import judge
    from ddpm_lib.metrics import load_or_train_classifier

    preset = "digits_quick" if args.quick else args.ttq_preset
    quick = ["train.max_steps=20", "sample.steps=5"] if args.quick else []
    cfg = load_config(preset, [f"train.seed={args.ttq_seed}", "train.device=cpu", f"train.threads={args.threads}",
                               *quick, *args.ttq_set])
    targets = json.loads(args.ttq_targets)
    data = load_data(cfg.data, progress=False)
    cache = Path(tempfile.gettempdir()) / f"ddpm_bench_classifier_{cfg.data.img_size}.pt"
    classifier, heldout = load_or_train_classifier(data, cache)
    per_class = 2 if args.quick else args.ttq_per_class  # 50: 500 samples, as make course's evaluation
    labels = torch.arange(data.num_classes).repeat_interleave(per_class)
    curve, trained, reached = [], 0.0, None
    recipe = OursRecipe(cfg) if args.ttq_worker == "ddpm_lib" else DiffusersRecipe(cfg, data)
    while not recipe.done and (args.ttq_worker == "ddpm_lib" or trained < args.budget):
        start = time.perf_counter()
        recipe.train_for(args.eval_every)
        trained += time.perf_counter() - start
        # rounded: a float32 mean of 99 hits in 100 is 0.98999995, which must count as 99%
        judged, _ = judge(recipe.samples(labels), labels, classifier, data)
        point = {"step": recipe.step, "trained_s": round(trained, 2), "class_accuracy": round(judged["class_accuracy"], 6),
                 "fid": judged["domain"]["fid"], "fid_real": judged["domain"]["fid_real"]}
        curve.append(point)
        print(f"[bench] {args.ttq_worker} {preset}: step {recipe.step}, {trained:.0f} s trained, class accuracy "
              f"{point['class_accuracy']:.1%}, domain FID {point['fid']:.3g} (floor {point['fid_real']:.3g})", flush=True)
        if reached is None and meets(point, targets):
            reached = trained
    final = curve[-1]
    row = dict(model=args.ttq_worker, preset=preset, targets=targets, reached_s=reached, trained_s=trained,
               steps=final["step"], final_class_accuracy=final["class_accuracy"], final_fid=final["fid"],
               final_fid_real=final["fid_real"], final_fid_ratio=final["fid"] / final["fid_real"],
               budget_s=args.budget, curve=curve, eval_samples=len(labels), threads=args.threads,
               classifier_heldout_accuracy=heldout, peak_rss_bytes=perf.peak_rss_bytes(), recipe=recipe.describe())
    Path(args.out).write_text(json.dumps(row))


class OursRecipe:
    """The default ``digits`` recipe, trained by ``ddpm_lib.train`` itself in chunks (each chunk
    resumes from the snapshot, so chunking costs a little start-up time and changes nothing else)."""

    def __init__(self, cfg):
        self.cfg, self.step, self.done = cfg, 0, False
        self.tmp = tempfile.TemporaryDirectory()
        self.run_dir = Path(self.tmp.name) / "run"

    def train_for(self, steps: int) -> None:
        from ddpm_lib.train import train
        train(self.cfg, self.run_dir, progress=False, stop_after=self.step + steps)
        log = [json.loads(line) for line in (self.run_dir / "log.jsonl").read_text().splitlines()]
        self.step = log[-1]["step"]
        self.done = (self.run_dir / "ema.pt").exists()

    def samples(self, labels: torch.Tensor) -> torch.Tensor:
        from ddpm_lib.checkpoint import load_run
        from ddpm_lib.sample import generate
        model, cfg, _, _ = load_run(self.run_dir, weights="snapshot-ema")
        s = cfg.sample
        return generate(model, cfg, labels, s.sampler, s.steps, s.guidance_scale, s.eta, seed=0,
                        batch_size=s.batch_size, progress=False)

    def describe(self) -> dict:
        s = self.cfg.sample
        return dict(config=self.cfg.name, schedule=self.cfg.diffusion.schedule, lr=self.cfg.train.lr,
                    batch_size=self.cfg.train.batch_size, ema_decay=self.cfg.train.ema_decay,
                    sampler=f"{s.sampler} {s.steps} steps, eta {s.eta}, guidance {s.guidance_scale}")


class DiffusersRecipe:
    """The standard diffusers recipe (as in its ``train_unconditional.py`` example, with class
    labels): ``UNet2DModel`` at ddpm_lib's size, ``DDPMScheduler`` with the linear schedule,
    AdamW (lr 1e-4, betas 0.95/0.999, weight decay 1e-6), 500 warm-up steps then cosine decay,
    no EMA; sampled with ``DDIMScheduler`` at 50 steps (eta 0) with the class label, no guidance."""

    LR, WARMUP, EPOCHS = 1e-4, 500, 100

    def __init__(self, cfg, data):
        from diffusers import DDIMScheduler, DDPMScheduler
        from diffusers.optimization import get_cosine_schedule_with_warmup
        torch.manual_seed(0)
        self.cfg, self.step, self.done = cfg, 0, False
        self.model = theirs(cfg.model.preset, data.channels, data.img_size)
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        self.sampler = DDIMScheduler.from_config(self.noise_scheduler.config)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.LR, betas=(0.95, 0.999),
                                           weight_decay=1e-6, eps=1e-8)
        self.images, self.labels = to_float(data.images), data.labels
        self.batch = cfg.train.batch_size
        total = self.EPOCHS * (len(self.images) // self.batch)
        self.lr_schedule = get_cosine_schedule_with_warmup(self.optimizer, self.WARMUP, total)
        self.order, self.pos = torch.randperm(len(self.images)), 0

    def train_for(self, steps: int) -> None:
        self.model.train()
        for _ in range(steps):
            if self.pos + self.batch > len(self.order):
                self.order, self.pos = torch.randperm(len(self.images)), 0
            idx = self.order[self.pos:self.pos + self.batch]
            self.pos += self.batch
            clean, y = self.images[idx], self.labels[idx]
            noise = torch.randn_like(clean)
            t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(idx),))
            noisy = self.noise_scheduler.add_noise(clean, noise, t)
            loss = F.mse_loss(self.model(noisy, t, class_labels=y, return_dict=False)[0], noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.lr_schedule.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1

    @torch.no_grad()
    def samples(self, labels: torch.Tensor) -> torch.Tensor:
        from ddpm_lib.data import to_uint8
        self.model.eval()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(len(labels), *self.images.shape[1:], generator=g)
        self.sampler.set_timesteps(50)
        for t in self.sampler.timesteps:
            eps = self.model(x, t, class_labels=labels, return_dict=False)[0]
            x = self.sampler.step(eps, t, x, eta=0.0).prev_sample
        return to_uint8(x.clamp(-1, 1))

    def describe(self) -> dict:
        return dict(model="diffusers UNet2DModel (same size)", schedule="linear", lr=self.LR, warmup=self.WARMUP,
                    batch_size=self.batch, ema=None, sampler="DDIMScheduler 50 steps, eta 0, no guidance")


BUSY_LOOP = "import time\nwhile True:\n    sum(range(10_000))\n"  # one core kept busy, as a browser tab might


def run_busy(args, env: dict) -> list[dict]:
    """Training img/s of the default recipe's model (16 px, batch 64) on an idle machine and while
    another process keeps one core busy (a learner's browser and JupyterLab), for every thread count
    from all cores down to 1, timed in alternation within each condition so the machine's drift
    slows them alike. ``library_default`` marks the count ``train.threads=0`` picks under that
    condition (:func:`ddpm_lib.dist.default_threads`, which measures the load itself)."""
    from ddpm_lib.dist import busy_cores, default_threads

    cores = os.cpu_count() or 1
    rows = []
    for condition in ("idle", "one core busy"):
        spinner = None
        if condition != "idle":
            spinner = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
            time.sleep(1.0)
        try:
            busy = busy_cores(0.5)
            choice = default_threads(1, busy)
            cases = [mode_case("ddpm_lib", ours, MODES["cpu"], torch.device("cpu"), 64, threads=n, channels_last=True,
                               fused=True, variant=f"{n} threads") for n in range(cores, 0, -1)]
            timings = measure(cases, args.repeats, args.train_iters, args.sample_iters, sample=False)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
        for case in cases:
            rows.append(dict(section="busy", condition=condition, **{**env, "threads": case.threads},
                             library_default=case.threads == choice, busy_cores_measured=round(busy, 2),
                             batch_size=64, train_img_per_s=64 / timings[case][0]))
        print(f"[bench] busy ({condition}, {busy:.2f} cores busy, the library picks {choice} threads): "
              + ", ".join(f"{r['threads']} threads {r['train_img_per_s']:.0f} img/s"
                          for r in rows if r["condition"] == condition), flush=True)
    return rows


def run_scaling(args, env: dict) -> list[dict]:
    """1 rank x 2 threads here, then 2 ranks x 1 thread under torchrun; the same per-rank batch."""
    rows = [dict(section="scaling", **env, **scaling_measure(ranks=1, threads=2, quick=args.quick))]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               __file__, "--scaling-worker", "--out", str(out)] + (["--quick"] if args.quick else [])
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        rows.append(dict(section="scaling", **env, **json.loads(out.read_text())))
    one, two = rows
    compute = two["forward_s"] + two["backward_s"] + two["optimizer_s"]
    link = perf.Link("gloo (measured)", two["allreduce_bandwidth"], 0.0)
    predicted = perf.ddp_step_seconds(two["forward_s"], two["backward_s"], two["optimizer_s"],
                                      two["grad_bytes"], 2, link)
    two.update(predicted_step_s=predicted, compute_s=compute,
               efficiency_vs_1x2=(two["img_per_s"] / one["img_per_s"]),
               efficiency_vs_own_compute=compute / two["step_s"])
    return rows


def scaling_measure(ranks: int, threads: int, quick: bool, env_dist=None) -> dict:
    """Step time of the tiny model at batch 64 per rank, split into forward, backward, optimizer
    and (with ranks > 1) the all-reduce of the gradients, timed on its own."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    case = Case("ddpm_lib", ours("tiny", 1, 16), device=device, batch=64, sample_batch=2, dtype=None,
                img_size=16, channels=1)
    iters, repeats = (2, 1) if quick else (6, 3)
    timed = lambda fn: perf.time_per_call(fn, device, iters, warmup=2, repeats=repeats)  # noqa: E731
    forward_s = timed(lambda: case.loss())
    fwd_bwd_s = timed(lambda: case.loss().backward())
    plain_step_s = timed(case.train_step)
    row = dict(ranks=ranks, threads_per_rank=threads, batch_per_rank=64, forward_s=forward_s,
               backward_s=fwd_bwd_s - forward_s, optimizer_s=plain_step_s - fwd_bwd_s,
               grad_bytes=4 * case.params, params=case.params)
    if ranks == 1:
        row.update(step_s=plain_step_s, img_per_s=64 / plain_step_s)
        return row
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    ddp = DDP(case.module)
    case.forward = ddp
    step_s = timed(case.train_step)
    flat = torch.zeros(case.params)
    allreduce_s = timed(lambda: dist.all_reduce(flat))
    row.update(step_s=step_s, img_per_s=ranks * 64 / step_s, allreduce_s=allreduce_s,
               allreduce_bandwidth=perf.ring_allreduce_seconds(row["grad_bytes"], ranks, 1.0) / allreduce_s)
    return row


def scaling_worker(args) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo")
    row = scaling_measure(dist.get_world_size(), 1, args.quick)
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(row))
    dist.barrier()
    dist.destroy_process_group()


# ---------------------------------------------------------------- GPU predictions and the report

def gpu_predictions(batch_per_gpu: int = 128) -> list[dict]:
    """``perf.predict_ddp_scaling`` for both presets on 1-8 H100s (NVLink and PCIe): a model
    with stated assumptions (``perf.ASSUMED_MFU``, ``perf.NVLINK``, ``perf.PCIE``), not a measurement."""
    rows = []
    for preset, img, ch in (("tiny", 16, 1), ("cifar", 32, 3)):
        model = ours(preset, ch, img)
        x = torch.randn(2, ch, img, img)
        t, y = torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)
        fwd = perf.count_flops(lambda: model(x, t, y)) / 2
        rows += [dict(preset=preset, **row)
                 for row in perf.predict_ddp_scaling(fwd, count_parameters(model), batch_per_gpu)]
    return rows


def report(path: Path, figures: bool = True) -> str:
    """The benchmark page's tables (markdown) from a results file; with ``figures``, redraws its figures."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = []
    for section in ("throughput", "levers"):
        mine = [r for r in rows if r["section"] == section]
        if not mine:
            continue
        base = next(r for r in mine if r["variant"] == "default")
        out += [f"\n{section}:\n",
                "| model | variant | batch | train img/s | vs default | train MFU | sample img·NFE/s | vs default | "
                "sample MFU | MFLOP/img (fwd) | params | memory (MiB) | first step (s) |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in mine:
            ref = next((b for b in mine if b["model"] == r["model"] and b["variant"] == "default"
                        and b["batch_size"] == r["batch_size"]), base)
            sample = r.get("sample_img_nfe_per_s")
            out.append(
                f"| {r['model']} | {r['variant']} | {r['batch_size']} | {r['train_img_per_s']:.0f} | "
                f"{r['train_img_per_s'] / ref['train_img_per_s']:.2f}x | {r['train_mfu']:.0%} | "
                + (f"{sample:.0f} | {sample / ref['sample_img_nfe_per_s']:.2f}x | {r['sample_mfu']:.0%} | "
                   if sample else "– | – | – | ")
                + f"{r['fwd_flops_per_img'] / 1e6:.1f} | {r['params'] / 1e6:.2f}M | "
                f"{r['peak_memory_bytes'] / 2 ** 20:.0f} | {r['first_step_s']:.1f} |")
    ttq = [r for r in rows if r["section"] == "ttq"]
    if ttq:
        out += ["\ntime to quality (each row one training run, judged on 500 samples):\n",
                "| recipe | model | seed | targets | reached after | steps | trained | final class acc. | "
                "final domain FID (floor) | FID / floor | peak RSS (GiB) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        out += [_ttq_line(r, r["preset"] if r["model"] == "ddpm_lib" else "diffusers baseline") for r in ttq]
        out += _seed_spread(ttq)
        ratio = ttq[0]["reached_s_ratio_vs_diffusers"]
        if ratio["ratio"] is not None:
            out.append(f"\nddpm_lib default / diffusers time to the default's targets: {ratio['ratio']:.2f} "
                       f"({ratio['bound']})")
    ablations = [r for r in rows if r["section"] == "ablations"]
    if ablations:
        n = ablations[0]["eval_samples"]
        out += [f"\nlevers (the default recipe, seed 0, one change each, judged on {n} samples at the end of its run; "
                f"the floor is measured at the same size):\n",
                "| change | model | seed | targets | reached after | steps | trained | final class acc. | "
                "final domain FID (floor) | FID / floor | peak RSS (GiB) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        out += [_ttq_line(r, r["variant"]) for r in ablations]
    busy = [r for r in rows if r["section"] == "busy"]
    if busy:
        out += ["\nbusy machine (training img/s, 16 px, batch 64; threads timed in alternation):\n",
                "| condition | cores busy (measured) | threads | train img/s | train.threads=0 picks |", "|---|---|---|---|---|"]
        out += [f"| {r['condition']} | {r['busy_cores_measured']} | {r['threads']} | {r['train_img_per_s']:.0f} | "
                f"{'yes' if r['library_default'] else ''} |" for r in busy]
    for r in (r for r in rows if r["section"] == "profile"):
        out.append(f"\nprofile, {r['model']} training step: "
                   + ", ".join(f"{g} {f:.0%}" for g, f in r["time_fraction_by_group"].items()))
    scaling = [r for r in rows if r["section"] == "scaling"]
    if scaling:
        out += ["\nscaling:\n", "| ranks x threads | img/s | step (ms) | forward | backward | optimizer | "
                "all-reduce alone | predicted step | efficiency vs 1 x 2 |", "|---|---|---|---|---|---|---|---|---|"]
        for r in scaling:
            comm = "– | – | 100% |"
            if r["ranks"] > 1:
                comm = (f"{r['allreduce_s'] * 1e3:.1f} ms ({r['allreduce_bandwidth'] / 1e9:.2f} GB/s) | "
                        f"{r['predicted_step_s'] * 1e3:.0f} | {r['efficiency_vs_1x2']:.0%} |")
            out.append(f"| {r['ranks']} x {r['threads_per_rank']} | {r['img_per_s']:.0f} | {r['step_s'] * 1e3:.0f} | "
                       f"{r['forward_s'] * 1e3:.0f} | {r['backward_s'] * 1e3:.0f} | {r['optimizer_s'] * 1e3:.1f} | "
                       + comm)
    if figures:
        draw_figures(rows)
    return "\n".join(out)


def _ttq_line(r: dict, name: str) -> str:
    targets = ", ".join(f"acc >= {v:.0%}" if k == "class_accuracy" else f"FID <= {v:g} x floor"
                        for k, v in r["targets"].items())
    reached = f"{r['reached_s']:.0f} s" if r["reached_s"] is not None else "not reached"
    return (f"| {name} | {r['model']} | {r['seed']} | {targets} | {reached} | {r['steps']} | {r['trained_s']:.0f} s | "
            f"{r['final_class_accuracy']:.1%} | {r['final_fid']:.3f} ({r['final_fid_real']:.3f}) | "
            f"{r['final_fid_ratio']:.2f} | {r['peak_rss_bytes'] / 2 ** 30:.2f} |")


def _seed_spread(rows: list[dict]) -> list[str]:
    """Mean and range over the seeds of each ddpm_lib recipe."""
    lines = []
    for preset in dict.fromkeys(r["preset"] for r in rows if r["model"] == "ddpm_lib"):
        runs = [r for r in rows if r["model"] == "ddpm_lib" and r["preset"] == preset]
        if len(runs) < 2:
            continue
        reached = [r["reached_s"] for r in runs]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        when = (f"reached in {mean(reached):.0f} s (range {min(reached):.0f}-{max(reached):.0f} s)"
                if None not in reached else f"reached by {sum(x is not None for x in reached)} of {len(runs)} seeds")
        acc = [r["final_class_accuracy"] for r in runs]
        fid = [r["final_fid_ratio"] for r in runs]
        lines.append(f"\n{preset} over {len(runs)} seeds: {when}; final class accuracy {mean(acc):.1%} "
                     f"({min(acc):.1%}-{max(acc):.1%}); FID / floor {mean(fid):.2f} ({min(fid):.2f}-{max(fid):.2f})")
    return lines


def draw_figures(rows: list[dict]) -> None:
    """figures/bench_<device>.png (comparison, levers, time to quality; bench_<device>_ttq.png for a results file
    with time to quality alone) and figures/scaling_model.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = {name: [r for r in rows if r["section"] == name] for name in SECTIONS}
    panels = [name for name in ("throughput", "levers", "ttq") if sections[name]]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
        for ax, name in zip(axes[0], panels):
            {"throughput": _draw_throughput, "levers": _draw_levers, "ttq": _draw_ttq}[name](ax, sections[name])
        first = sections[panels[0]][0]
        fig.suptitle(f"{first['device_name']} ({first['device']}, {first['threads']} threads), torch {first['torch']}, "
                     f"diffusers {first['diffusers']}, {first['date']}", fontsize=9)
        fig.tight_layout()
        name = f"bench_{first['device']}" + ("" if "throughput" in panels else "_" + "_".join(panels))
        fig.savefig(FIGURES / f"{name}.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
    _draw_scaling_model(plt)


def _draw_throughput(ax, rows: list[dict]) -> None:
    labels = [f"{r['model']}\n{r['variant']}\nbatch {r['batch_size']}" for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["train_img_per_s"] for r in rows], 0.4, label="training img/s")
    ax.bar([i + 0.2 for i in x], [r.get("sample_img_nfe_per_s", 0) / 3 for r in rows], 0.4,
           label="sampling img·NFE/s ÷ 3")
    for i, r in zip(x, rows):
        ax.text(i - 0.2, r["train_img_per_s"], f"{r['train_mfu']:.0%}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_title("equal size (labels: training MFU)", fontsize=10)
    ax.legend(fontsize=7)


def _draw_levers(ax, rows: list[dict]) -> None:
    base = next(r for r in rows if r["variant"] == "default")
    speed = [r["train_img_per_s"] / base["train_img_per_s"] for r in rows]
    ax.barh([r["variant"] for r in rows], speed,
            color=["tab:green" if v > 1.02 else "tab:red" if v < 0.98 else "tab:grey" for v in speed])
    ax.axvline(1, color="black", lw=0.8)
    ax.invert_yaxis()
    ax.tick_params(labelsize=8)
    ax.set_xlabel("training img/s relative to default (same run)", fontsize=8)
    ax.set_title(f"ddpm_lib levers, batch {base['batch_size']}", fontsize=10)


def _draw_ttq(ax, rows: list[dict]) -> None:
    """Class accuracy against training seconds, every run of the ttq section (seeds in one colour)."""
    colours = {}
    for r in rows:
        name = r["preset"] if r["model"] == "ddpm_lib" else "diffusers baseline"
        colour = colours.setdefault(name, f"C{len(colours)}")
        curve = r["curve"]
        first = sum(1 for q in rows if (q["preset"] if q["model"] == "ddpm_lib" else "diffusers baseline") == name
                    and rows.index(q) < rows.index(r)) == 0
        ax.plot([c["trained_s"] for c in curve], [c["class_accuracy"] for c in curve], "-o", ms=3, color=colour,
                label=name if first else None)
    for target, style in ((0.95, ":"), (0.99, "--")):
        ax.axhline(target, color="black", lw=0.8, ls=style)
    ax.set_xlabel("training seconds", fontsize=8)
    ax.set_ylabel("class accuracy of 500 samples", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_title("time to quality (digits, 16 px)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")


def _draw_scaling_model(plt) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    predictions = gpu_predictions()
    for ax, preset in zip(axes, ("tiny", "cifar")):
        for link, style in ((perf.NVLINK.name, "-o"), (perf.PCIE.name, "--s")):
            pts = [p for p in predictions if p["preset"] == preset and p["link"] == link]
            ax.plot([p["gpus"] for p in pts], [p["predicted_efficiency"] for p in pts], style, label=link)
        ax.set_title(f"{preset}: {pts[0]['params'] / 1e6:.1f}M params, batch {pts[0]['batch_per_gpu']}/GPU",
                     fontsize=10)
        ax.set_xlabel("GPUs")
        ax.set_xticks([1, 2, 4, 8])
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("predicted scaling efficiency")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle(f"DDP on H100s: a model, not a measurement (compute at {perf.ASSUMED_MFU:.0%} MFU, ring all-reduce)",
                 fontsize=9)
    fig.savefig(FIGURES / "scaling_model.png", dpi=120, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------- entry point

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("auto", "cpu", "gpu"), default="auto", help="auto: gpu when CUDA is available")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections ({', '.join(SECTIONS)})")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (CPU mode)")
    p.add_argument("--batch-sizes", type=int, nargs="+", help="override the mode's training batch sizes")
    p.add_argument("--sample-batch", type=int, help="override the mode's sampling batch size")
    p.add_argument("--device", choices=("cpu", "cuda"), help="run the mode's settings on this device "
                   "(--mode gpu --device cpu checks the bf16 code path without a GPU; slow)")
    p.add_argument("--repeats", type=int, default=5, help="alternating timed repeats per case")
    p.add_argument("--train-iters", type=int, default=5, help="training steps per timed repeat")
    p.add_argument("--sample-iters", type=int, default=3, help="sampling forwards per timed repeat")
    p.add_argument("--budget", type=float, default=300,
                   help="time to quality: training seconds the diffusers baseline gets (ddpm_lib's recipes run to their end)")
    p.add_argument("--seeds", type=int, default=3, help="time to quality: seeds per ddpm_lib recipe")
    p.add_argument("--ablation-jobs", type=int, default=1, choices=(1, 2),
                   help="ablations: runs side by side (2: one thread each, half the wall time on 2 cores)")
    p.add_argument("--ttq-set", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--ttq-preset", default="digits", help=argparse.SUPPRESS)
    p.add_argument("--ttq-seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--ttq-per-class", type=int, default=50, help=argparse.SUPPRESS)
    p.add_argument("--ablation-per-class", type=int, default=25,
                   help="ablations: samples per class judged at the end of each run (25: 250, half the ttq rows' cost)")
    p.add_argument("--ttq-targets", default='{"class_accuracy": 0.9}', help=argparse.SUPPRESS)
    p.add_argument("--eval-every", type=int, default=200, help="time to quality: steps between evaluations")
    p.add_argument("--quick", action="store_true", help="tiny settings to check the script runs (numbers mean little)")
    p.add_argument("--out", help="results file (default: scripts/benchmarks/results/<date>_<device>.jsonl)")
    p.add_argument("--report", metavar="FILE", help="print the tables of a results file and redraw the figures")
    p.add_argument("--ttq-worker", choices=("ddpm_lib", "diffusers"), help=argparse.SUPPRESS)
    p.add_argument("--scaling-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.train_iters, args.sample_iters = 1, 1, 1
        args.budget, args.eval_every = min(args.budget, 3), min(args.eval_every, 10)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.ttq_worker:
        return ttq_worker(args)
    if args.scaling_worker:
        return scaling_worker(args)
    if args.report:
        print(report(Path(args.report)))
        return
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        sys.exit(f"error: unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    mode_name = args.mode if args.mode != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    if (args.device or mode_name) in ("gpu", "cuda") and not torch.cuda.is_available():
        sys.exit("error: --mode gpu needs a CUDA device; run --mode cpu here (or --mode gpu --device cpu "
                 "to check the GPU settings' code path on the CPU)")
    mode = dict(MODES[mode_name])
    if args.sample_batch:
        mode["sample_batch"] = args.sample_batch
    device = torch.device(args.device or ("cuda" if mode_name == "gpu" else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    else:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    env = environment(device, torch.get_num_threads())
    label = mode_name + ("_on_cpu" if mode_name == "gpu" and device.type == "cpu" else "")
    label += "_quick" if args.quick else ""
    out = Path(args.out) if args.out else RESULTS / f"{env['date']}_{label}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    peak = perf.matmul_peak(device, mode["dtype"] or torch.float32, seconds=0.2 if args.quick else 2.0)
    print(f"[bench] {env['device_name']} ({mode_name}, {env['threads']} threads): matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s ({mode['dtype'] or torch.float32}); results -> {out}", flush=True)
    for section in sections:
        if section in ("ttq", "ablations", "busy", "scaling") and device.type == "cuda":
            print(f"[bench] {section}: CPU-only section, skipped in GPU mode", flush=True)
            continue
        start = time.time()
        if section == "throughput":
            rows = run_throughput(args, mode, device, peak, env)
        elif section == "levers":
            rows = run_levers(args, mode, device, peak, env)
        elif section == "profile":
            rows = run_profile(args, mode, device, peak, env)
        elif section == "ttq":
            rows = run_ttq(args, env)
        elif section == "ablations":
            rows = run_ablations(args, env)
        elif section == "busy":
            rows = run_busy(args, env)
        else:
            rows = run_scaling(args, env)
        with open(out, "a") as f:
            for row in rows:
                f.write(json.dumps({**row, "quick": args.quick}) + "\n")
        print(f"[bench] {section}: {len(rows)} rows in {time.time() - start:.0f} s", flush=True)
    # a quick run's numbers mean little: they never replace the committed figures
    print(report(out, figures=not args.quick))


if __name__ == "__main__":
    main()
