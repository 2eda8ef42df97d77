"""Instant checks for the pieces a learner writes in the notebooks.

    from ddpm_lib import check

    def my_q_sample(x0, t, noise, schedule):
        ...                                  # your code

    check.q_sample(my_q_sample)              # one line: a pass, or what looks wrong

Each checker calls the learner's function on random inputs and on edge cases (the first and
the last step, a batch of 1, float64 inputs) and compares the result with the library's own
implementation, which is the reference. On the first case that differs it prints one line:
which case, what differs (shape, dtype, NaN, or the largest error against the tolerance) and
a hint. The hint comes from the typical mistakes each checker knows: if the learner's output
equals the reference *with that mistake made* (alpha instead of alpha_bar, a missing square
root, an off-by-one step, a sign), the hint names the symptom, never the solution.

A stub that still raises ``NotImplementedError`` is reported as "not written yet". A checker
returns a :class:`CheckResult`, which is truthy when the function passed; its ``function`` is
the learner's function once it passes and the library's version until then, so a notebook
writes ``q_sample = check.q_sample(my_q_sample).function`` and every later cell still runs.

Worked solutions live outside the notebooks, in ``notebooks/solutions/NN_unit.py``.
``check.use_solutions(path)`` (a notebook's ``SOLUTIONS = True`` parameter) makes every later
check run the solution of the same name instead of the learner's cell, and raise if it fails:
CI runs each notebook once that way and once as a learner first sees it (stubs).

Signatures the notebooks ask for (shapes: B batch, C channels, H x W pixels, T steps):

- ``q_sample(x0, t, noise, schedule) -> x_t``: ``x0``, ``noise`` (B, C, H, W); ``t`` int64 (B,)
  code steps in [0, T); ``schedule`` a :class:`~ddpm_lib.schedules.NoiseSchedule` (Ho et al. 2020, eq. 4).
- ``cosine_alpha_bar(timesteps, s=0.008) -> alpha_bar`` (T,) float64 (Nichol & Dhariwal 2021, eq. 17).
- ``posterior(x0, x_t, t, schedule) -> (mean, variance)``: mean (B, C, H, W), variance (B,) of
  q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 6-7).
- ``timestep_embedding(t, dim) -> (B, dim)``: the sinusoidal embedding of the U-Net (Vaswani et al.
  2017, as used by Ho et al. 2020), ``[cos(t w_k), sin(t w_k)]`` with ``w_k = 10000^(-k / (dim/2))``,
  zero-padded to ``dim`` when ``dim`` is odd.
- ``scale_shift_norm(h, scale, shift, norm)``: adaptive GroupNorm, ``norm(h) * (1 + scale) + shift``.
- ``eps_loss(model, x0, y, t, noise, drop, null_class, schedule)``: the simple loss with label dropout.
- ``ddpm_step(x_t, t, eps, noise, schedule)`` and ``ddim_step(x_t, t, t_prev, eps, noise, eta, schedule)``.
- ``guidance(eps_cond, eps_uncond, scale)``: classifier-free guidance.
- ``ema_update(ema, live, decay, num_updates)``: one EMA step with warm-up.
- ``shard_indices(n, world_size, rank, epoch, seed)`` and ``average_gradients(grads)``: DDP's data
  sharding and gradient all-reduce.
- ``frechet_distance(mu1, sigma1, mu2, sigma2)``: the distance FID computes.

``tests/test_check.py`` feeds every checker a right implementation and typical wrong ones
(mutants) written as a learner would, and asserts each mutant gets its own hint.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch
import torch.nn.functional as F

from . import diffusion, schedules, unet

ATOL, RTOL = 1e-5, 1e-4  # float32 arithmetic done in another order differs by about 1e-7


@dataclass
class CheckResult:
    """What a checker found: ``passed``; ``mistake`` names the known mistake the output matched.
    ``function`` is what the notebook uses from here on: ``learner`` once it passed, else ``fallback``
    (the library's version in the learner's signature)."""

    name: str
    passed: bool
    message: str
    mistake: str | None = None
    learner: Callable | None = None
    fallback: Callable | None = None

    def __bool__(self) -> bool:
        return self.passed

    @property
    def function(self) -> Callable | None:
        return self.learner if self.passed else self.fallback


class SolutionFailed(AssertionError):
    """A worked solution failed its check (``use_solutions`` mode): the solution file is wrong."""


_solutions: ModuleType | None = None
CHECKS: dict[str, Callable] = {}  # every checker by name (the name its worked solution has)


def use_solutions(path: str | Path | None) -> None:
    """Check the worked solutions in the Python file ``path`` instead of the learner's functions
    (``None``: the learner's again). Every later ``check.NAME(fn)`` runs the file's ``NAME`` and
    raises :class:`SolutionFailed` if it does not pass."""
    global _solutions
    if path is None:
        _solutions = None
        return
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no solutions file {path} (looked in {Path.cwd()})")
    spec = importlib.util.spec_from_file_location(f"solutions_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _solutions = module
    print(f"checking the worked solutions in {path}, not the cells' own functions")


def _checker(check: Callable) -> Callable:
    """Make a checker solution-aware and record the learner's function in its result."""
    @functools.wraps(check)
    def checked(fn: Callable, *args, **kwargs) -> CheckResult:
        solutions = _solutions
        if solutions is not None:
            fn = getattr(solutions, check.__name__, None)
            if fn is None:
                raise SolutionFailed(f"{solutions.__file__} defines no {check.__name__}()")
        result = check(fn, *args, **kwargs)
        result.learner = fn
        if solutions is not None and not result:
            raise SolutionFailed(f"the worked solution in {solutions.__file__} fails: {result.message}")
        return result
    CHECKS[check.__name__] = checked
    return checked


def score_prediction(guess, measured: float, tolerance: float, what: str, unit: str = "") -> bool | None:
    """Print how a learner's prediction of ``what`` compares with the ``measured`` value; True when
    ``|guess - measured| <= tolerance``, None when no guess was made (``guess`` is None)."""
    shown = lambda v: f"{v:.4g}{unit}" if isinstance(v, float) else f"{v}{unit}"  # noqa: E731
    if guess is None:
        print(f"{what}: measured {shown(measured)}. (You made no prediction: set it in the cell above "
              f"before running this one, then compare.)")
        return None
    close = abs(float(guess) - float(measured)) <= tolerance
    verdict = ("close: within " if close else "off by more than ") + shown(tolerance)
    print(f"{what}: you predicted {shown(guess)}, measured {shown(measured)} ({verdict}).")
    return close


@dataclass
class Mistake:
    """A typical wrong version of the function: ``wrong`` takes the same arguments as the learner's."""

    name: str
    hint: str
    wrong: Callable


# ------------------------------------------------------------------ the machinery


def _as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _difference(got, want, atol: float, rtol: float, equal_nan: bool = False) -> str | None:
    """Why ``got`` is not ``want`` (tensors or tuples of tensors), or None when they match.
    ``equal_nan``: NaN matches NaN (to recognise a mistake that produces NaN)."""
    got, want = _as_tuple(got), _as_tuple(want)
    if len(got) != len(want):
        return f"returned {len(got)} value(s), expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        what = f"output {i + 1}" if len(want) > 1 else "the output"
        if not isinstance(g, torch.Tensor):
            return f"{what} is a {type(g).__name__}, expected a tensor"
        if tuple(g.shape) != tuple(w.shape):
            return f"{what} has shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        if not g.is_floating_point():
            return f"{what} has dtype {g.dtype}, expected floating point"
        if not equal_nan and not torch.isfinite(g).all():
            return f"{what} holds NaN or inf"
        g64, w64 = g.detach().double().cpu(), w.detach().double().cpu()
        if not torch.allclose(g64, w64, atol=atol, rtol=rtol, equal_nan=equal_nan):
            if atol == rtol == 0:
                return f"{what} differs from the expected values"
            return f"{what} is off by up to {(g64 - w64).abs().max().item():.3g} (tolerance {atol:g} + {rtol:g} x |value|)"
    return None


def _matches(got, wrong: Callable, args: tuple, atol: float, rtol: float) -> bool:
    """Whether the learner's ``got`` (an output, or the exception it raised) is what ``wrong`` gives."""
    try:
        mistaken = wrong(*args)
    except Exception as err:  # the mistake fails on this case: it matches a learner failing the same way
        return isinstance(got, BaseException) and type(got) is type(err)
    return not isinstance(got, BaseException) and _difference(got, mistaken, atol, rtol, equal_nan=True) is None


def run_check(name: str, learner: Callable, reference: Callable, cases: list[tuple[str, tuple]],
              mistakes: list[Mistake], atol: float = ATOL, rtol: float = RTOL, quiet: bool = False,
              fallback: Callable | None = None) -> CheckResult:
    """Compare ``learner`` with ``reference`` on ``cases`` (label, args); diagnose the first mismatch.

    Prints (unless ``quiet``) and returns one :class:`CheckResult`; ``fallback`` (default
    ``reference``) is what the notebook uses until the learner's function passes.
    """
    using_library = "; until it passes, the cells below use the library's version"

    def done(passed: bool, message: str, mistake: str | None = None) -> CheckResult:
        result = CheckResult(name, passed, f"{'PASS' if passed else 'FAIL'} {name}: {message}", mistake,
                             learner, fallback or reference)
        if not quiet:
            print(result.message)
        return result

    failures = []  # (label, args, output or the exception raised, what differs)
    for label, args in cases:
        try:
            got = learner(*args)
        except NotImplementedError as err:
            hint = f" Hint: {str(err).strip()}" if str(err).strip() else ""
            return done(False, f"not written yet (it raises NotImplementedError){using_library}.{hint}")
        except Exception as err:
            reason = str(err).splitlines()[0] if str(err) else ""
            failures.append((label, args, err, f"your function raised {type(err).__name__}: {reason}"))
            continue
        problem = _difference(got, reference(*args), atol, rtol)
        if problem:
            failures.append((label, args, got, problem))
    if not failures:
        return done(True, f"all {len(cases)} cases match the reference ({', '.join(l for l, _ in cases)})")
    # Report the first case that differs. The hint is that of the known mistake that reproduces the
    # learner's output on the most differing cases (mistakes can coincide on some inputs, and some
    # show exactly only on small ones); ties go to the mistake listed first.
    score = {i: sum(_matches(got, m.wrong, args, atol, rtol) for _, args, got, _ in failures)
             for i, m in enumerate(mistakes)}
    best = max(score, key=lambda i: (score[i], -i), default=None)
    mistake = mistakes[best] if best is not None and score[best] else None
    label, _, _, problem = failures[0]
    hint = mistake.hint if mistake else "compare your formula with the equation above, term by term"
    return done(False, f"{label}: {problem}{using_library}. Hint: {hint}", mistake.name if mistake else None)


def _steps(schedule: schedules.NoiseSchedule, batch: int, generator: torch.Generator) -> torch.Tensor:
    """``batch`` steps including the first (0) and the last (T - 1), the rest random."""
    t = torch.randint(0, schedule.timesteps, (batch,), generator=generator)
    t[0], t[-1] = 0, schedule.timesteps - 1
    return t


def _image_cases(schedule: schedules.NoiseSchedule, seed: int = 0) -> list[tuple[str, tuple]]:
    """(x0, t, other) triples: a random batch with t = 0 and t = T-1, a batch of 1 at the last step,
    one at the first step, and float64 inputs."""
    g = torch.Generator().manual_seed(seed)

    def case(batch: int, t=None, dtype=torch.float32):
        x0 = torch.rand(batch, 1, 8, 8, generator=g).mul(2).sub(1).to(dtype)
        other = torch.randn(batch, 1, 8, 8, generator=g).to(dtype)
        steps = _steps(schedule, batch, g) if t is None else torch.full((batch,), t, dtype=torch.long)
        return x0, steps, other

    return [("a batch of 6 (t includes 0 and T-1)", case(6)),
            ("a batch of 1 at the last step", case(1, schedule.timesteps - 1)),
            ("a batch of 1 at the first step", case(1, 0)),
            ("float64 inputs", case(4, dtype=torch.float64))]


def _column(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values[t]`` shaped (B, 1, ..., 1) to broadcast against ``like``, in ``like``'s dtype."""
    return values[t].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _number(f: Callable) -> Callable:
    """``f`` with its result (a number, or a one-element tensor) as a 0-dim float64 tensor, so numbers
    compare like tensors (exactly, for counts, with ``atol = rtol = 0``)."""
    return lambda *a: torch.as_tensor(f(*a), dtype=torch.float64).reshape(())


def _ranks(world_size: int) -> str:
    return f"{world_size} rank{'s' if world_size > 1 else ''}"


# ------------------------------------------------------------------ forward noising (units 01-02)


@_checker
def q_sample(fn: Callable, schedule: schedules.NoiseSchedule | None = None, quiet: bool = False) -> CheckResult:
    """Check ``fn(x0, t, noise, schedule) -> x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise``."""
    schedule = schedule or schedules.linear(1000)
    cases = [(label, (x0, t, noise, schedule)) for label, (x0, t, noise) in _image_cases(schedule)]

    def reference(x0, t, noise, s):
        return diffusion.q_sample(s, x0, t, noise)

    def mix(signal: Callable, noise_scale: Callable, table: str = "alpha_bar", shift: int = 0, sign: float = 1.0):
        def wrong(x0, t, noise, s):
            values = getattr(s, table)
            a = _column(values, (t + shift).clamp(0, s.timesteps - 1), x0)
            return signal(a) * x0 + sign * noise_scale(a) * noise
        return wrong

    mistakes = [
        Mistake("alpha", "the result matches alpha_t (one step's keep rate) in place of alpha_bar_t, the product "
                         "over all steps up to t: x_t must jump from x_0 in one go", mix(torch.sqrt, lambda a: (1 - a).sqrt(), "alphas")),
        Mistake("no_sqrt", "both terms are scaled by variances: the coefficients of x_0 and of the noise are "
                           "standard deviations", mix(lambda a: a, lambda a: 1 - a)),
        Mistake("sqrt_signal_only", "the noise term is scaled by a variance, not a standard deviation",
                mix(torch.sqrt, lambda a: 1 - a)),
        Mistake("sqrt_noise_only", "the x_0 term is scaled by a variance, not a standard deviation",
                mix(lambda a: a, lambda a: (1 - a).sqrt())),
        Mistake("swapped", "x_0 and the noise have each other's coefficients: at t = 0 x_t should be almost x_0",
                mix(lambda a: (1 - a).sqrt(), torch.sqrt)),
        Mistake("off_by_one_next", "you look up step t + 1: code steps are 0-based, alpha_bar[t] already belongs "
                                   "to step t", mix(torch.sqrt, lambda a: (1 - a).sqrt(), shift=1)),
        Mistake("off_by_one_prev", "you look up step t - 1 (alpha_bar_prev): alpha_bar[t] belongs to step t",
                mix(torch.sqrt, lambda a: (1 - a).sqrt(), shift=-1)),
        Mistake("minus_noise", "a sign: the noise is added, not subtracted", mix(torch.sqrt, lambda a: (1 - a).sqrt(), sign=-1.0)),
    ]
    return run_check("q_sample", fn, reference, cases, mistakes, quiet=quiet)


@_checker
def cosine_alpha_bar(fn: Callable, quiet: bool = False) -> CheckResult:
    """Check ``fn(timesteps, s=0.008) -> alpha_bar`` (T,): ``f(t + 1) / f(0)`` for code steps t = 0..T-1,
    ``f(t) = cos^2((t / T + s) / (1 + s) * pi / 2)``. The library clips beta at 0.999, which changes
    only the last value, by less than the tolerance used here."""
    cases = [("T = 1000", (1000, 0.008)), ("T = 10", (10, 0.008)), ("T = 50 with s = 0.02", (50, 0.02))]

    def reference(timesteps, s=0.008):
        return schedules.cosine(timesteps, s).alpha_bar

    def variant(power: float = 2.0, offset: int = 1, use_s: bool = True, angle: float = math.pi / 2):
        def wrong(timesteps, s):
            s = s if use_s else 0.0
            steps = torch.arange(timesteps, dtype=torch.float64) + offset
            f = lambda u: torch.cos((u / timesteps + s) / (1 + s) * angle).abs() ** power  # noqa: E731
            return f(steps) / f(torch.zeros(1, dtype=torch.float64))
        return wrong

    mistakes = [
        Mistake("off_by_one", "your first value is 1: code step 0 is the paper's step 1, so alpha_bar[0] is already "
                              "slightly below 1 (f(1) / f(0))", variant(offset=0)),
        Mistake("no_square", "the curve falls too slowly: f(t) is the cosine squared", variant(power=1.0)),
        Mistake("no_offset", "the first steps add too little noise: the offset s belongs inside the cosine",
                variant(use_s=False)),
        Mistake("angle", "the curve does not reach 0 at t = T: the cosine's argument runs from about 0 to pi/2",
                variant(angle=math.pi)),
    ]
    return run_check("cosine_alpha_bar", fn, reference, cases, mistakes, atol=1e-4, rtol=1e-4, quiet=quiet)


@_checker
def linear_alpha_bar(fn: Callable, quiet: bool = False) -> CheckResult:
    """Check ``fn(timesteps, beta_start, beta_end) -> alpha_bar`` (T,): betas spaced linearly from
    ``beta_start`` to ``beta_end`` over the T steps (Ho et al. 2020, sec. 4), ``alpha_t = 1 - beta_t``
    and ``alpha_bar_t = alpha_0 alpha_1 ... alpha_t`` (code steps 0..T-1). The library's
    ``schedules.linear`` scales both ends by 1000 / T; the reference here undoes that scaling."""
    cases = [("T = 1000 (Ho et al.)", (1000, 1e-4, 0.02)), ("T = 10", (10, 0.01, 0.5)),
             ("T = 100", (100, 1e-3, 0.2)), ("T = 1", (1, 0.1, 0.1))]

    def reference(timesteps, beta_start, beta_end):
        scale = timesteps / 1000
        return schedules.linear(timesteps, beta_start * scale, beta_end * scale).alpha_bar

    def betas(timesteps, beta_start, beta_end):
        return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)

    mistakes = [
        Mistake("no_cumprod", "that is alpha_t = 1 - beta_t, one step's keep rate: alpha_bar_t is the product of "
                              "all alphas up to step t", lambda *a: 1 - betas(*a)),
        Mistake("one_minus_cumsum", "you subtract the summed betas: alpha_bar multiplies the alphas (1 - beta); "
                                    "1 - sum(beta) is only its first-order approximation, and goes negative",
                lambda *a: 1 - betas(*a).cumsum(0)),
        Mistake("cumprod_of_betas", "you multiply the betas: multiply the alphas, 1 - beta_t",
                lambda *a: betas(*a).cumprod(0)),
        Mistake("starts_at_one", "your first value is 1: alpha_bar[0] already includes step 0's noise, 1 - beta_start",
                lambda *a: torch.cat([torch.ones(1, dtype=torch.float64), (1 - betas(*a)).cumprod(0)[:-1]])),
    ]
    return run_check("linear_alpha_bar", fn, reference, cases, mistakes, quiet=quiet)


@_checker
def posterior(fn: Callable, schedule: schedules.NoiseSchedule | None = None, quiet: bool = False) -> CheckResult:
    """Check ``fn(x0, x_t, t, schedule) -> (mean, variance)`` of q(x_{t-1} | x_t, x_0) (Ho et al. eq. 6-7):
    mean (B, C, H, W), variance (B,)."""
    schedule = schedule or schedules.linear(1000)
    cases = [(label, (x0, t, x_t, schedule)) for label, (x0, t, x_t) in _image_cases(schedule, seed=1)]
    cases = [(label, (x0, x_t, t, s)) for label, (x0, t, x_t, s) in cases]

    def reference(x0, x_t, t, s):
        mean = _column(s.posterior_mean_coef1, t, x0) * x0 + _column(s.posterior_mean_coef2, t, x0) * x_t
        return mean, s.posterior_variance[t].to(x0.dtype)

    def variant(prev_shift: int = -1, variance: str = "tilde", sqrt_prev: bool = True, sqrt_alpha: bool = True,
                swap: bool = False):
        def wrong(x0, x_t, t, s):
            ab = s.alpha_bar[t]
            idx = t + prev_shift  # prev_shift = -1: alpha_bar_{t-1}, which is 1 before the first step
            ab_prev = torch.where(idx >= 0, s.alpha_bar[idx.clamp(min=0)], torch.ones_like(ab))
            beta, alpha = s.betas[t], s.alphas[t]
            c1 = (ab_prev.sqrt() if sqrt_prev else ab_prev) * beta / (1 - ab)
            c2 = (alpha.sqrt() if sqrt_alpha else alpha) * (1 - ab_prev) / (1 - ab)
            if swap:
                c1, c2 = c2, c1
            var = beta if variance == "beta" else (1 - ab_prev) / (1 - ab) * beta
            shape = (-1, *([1] * (x0.ndim - 1)))
            return (c1.to(x0.dtype).reshape(shape) * x0 + c2.to(x0.dtype).reshape(shape) * x_t), var.to(x0.dtype)
        return wrong

    mistakes = [
        Mistake("alpha_bar_t_for_prev", "you use alpha_bar_t where the posterior needs alpha_bar_{t-1}, the step "
                                        "before (and alpha_bar_{-1} = 1 at the first step)", variant(prev_shift=0)),
        Mistake("variance_beta", "your variance is beta_t, the forward step's: the posterior's is smaller, "
                                 "beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t", variant(variance="beta")),
        Mistake("coef1_no_sqrt", "the weight of x_0 has alpha_bar_{t-1} where it needs its square root",
                variant(sqrt_prev=False)),
        Mistake("coef2_no_sqrt", "the weight of x_t has alpha_t where it needs its square root", variant(sqrt_alpha=False)),
        Mistake("swapped", "x_0 and x_t have each other's weights: near t = 0 the mean should be almost x_0",
                variant(swap=True)),
    ]
    return run_check("posterior", fn, reference, cases, mistakes, quiet=quiet)


# ------------------------------------------------------------------ the U-Net (unit 03)


@_checker
def timestep_embedding(fn: Callable, quiet: bool = False) -> CheckResult:
    """Check ``fn(t, dim) -> (B, dim)``: ``[cos(t w_k), sin(t w_k)]``, ``w_k = 10000^(-k / (dim/2))``,
    k = 0..dim/2-1, zero-padded when ``dim`` is odd."""
    g = torch.Generator().manual_seed(2)
    cases = [("steps 0..999, dim 32", (torch.randint(0, 1000, (8,), generator=g), 32)),
             ("step 1, dim 8", (torch.tensor([1]), 8)),
             ("a batch of 1 at step 0, dim 8", (torch.zeros(1, dtype=torch.long), 8)),
             ("step 999, dim 128", (torch.tensor([999]), 128)),
             ("an odd dim (9)", (torch.tensor([3, 500]), 9))]

    def reference(t, dim):
        return unet.timestep_embedding(t, dim)

    def variant(order: str = "cos_sin", exponent_sign: float = -1.0, over: str = "half", interleave: bool = False):
        def wrong(t, dim):
            half = dim // 2
            k = torch.arange(half, dtype=torch.float64)
            freqs = torch.exp(exponent_sign * math.log(10000.0) * k / (half if over == "half" else dim))
            angles = t.double()[:, None] * freqs[None]
            parts = [angles.cos(), angles.sin()] if order == "cos_sin" else [angles.sin(), angles.cos()]
            emb = torch.stack(parts, dim=2).flatten(1) if interleave else torch.cat(parts, dim=1)
            return torch.nn.functional.pad(emb, (0, dim % 2)).float()
        return wrong

    mistakes = [
        Mistake("sin_cos", "the halves are in the other order: cosines first, then sines", variant(order="sin_cos")),
        Mistake("growing_freqs", "your frequencies grow with k: they should fall from 1 to about 1/10000",
                variant(exponent_sign=1.0)),
        Mistake("over_dim", "the exponent divides k by dim: divide by dim / 2, the number of frequencies",
                variant(over="dim")),
        Mistake("interleaved", "cosines and sines alternate: put all cosines first, then all sines",
                variant(interleave=True)),
    ]
    return run_check("timestep_embedding", fn, reference, cases, mistakes, atol=1e-4, rtol=1e-4, quiet=quiet)


@_checker
def scale_shift_norm(fn: Callable, quiet: bool = False) -> CheckResult:
    """Check ``fn(h, scale, shift, norm) -> norm(h) * (1 + scale) + shift``: the ResBlock's adaptive
    GroupNorm (Dhariwal & Nichol 2021, sec. 3), with h (B, C, H, W), scale and shift (B, C) from the
    time and class embedding, and ``norm`` a GroupNorm module."""
    g = torch.Generator().manual_seed(3)

    def case(batch: int, channels: int, dtype=torch.float32):
        norm = torch.nn.GroupNorm(min(4, channels), channels).to(dtype)
        with torch.no_grad():  # a norm with its own affine parameters, as in the U-Net
            norm.weight.copy_(1 + 0.5 * torch.randn(channels, generator=g))
            norm.bias.copy_(0.5 * torch.randn(channels, generator=g))
        return (torch.randn(batch, channels, 4, 4, generator=g).to(dtype),
                torch.randn(batch, channels, generator=g).to(dtype), torch.randn(batch, channels, generator=g).to(dtype),
                norm)

    cases = [("a batch of 3, 8 channels", case(3, 8)), ("a batch of 1, 4 channels", case(1, 4)),
             ("float64", case(2, 8, torch.float64))]

    def reference(h, scale, shift, norm):
        with torch.no_grad():
            return norm(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]

    def variant(plus_one: bool = True, swap: bool = False, before_norm: bool = False):
        def wrong(h, scale, shift, norm):
            if swap:
                scale, shift = shift, scale
            s, b = scale[:, :, None, None], shift[:, :, None, None]
            with torch.no_grad():
                if before_norm:
                    return norm(h * (1 + s) + b)
                return norm(h) * ((1 + s) if plus_one else s) + b
        return wrong

    mistakes = [
        Mistake("no_plus_one", "a scale of 0 should leave the normalised features unchanged: the factor is "
                               "1 + scale (so a zero-initialised projection starts as plain GroupNorm)",
                variant(plus_one=False)),
        Mistake("swapped", "scale and shift have each other's roles: the first multiplies, the second is added",
                variant(swap=True)),
        Mistake("before_norm", "you modulate before normalising, so the norm undoes most of it: normalise first",
                variant(before_norm=True)),
    ]
    return run_check("scale_shift_norm", fn, reference, cases, mistakes, quiet=quiet)


# ------------------------------------------------------------------ training and sampling (unit 04)


def _toy_model(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A fixed stand-in for eps_theta(x_t, t, y), so losses can be compared exactly."""
    shape = (-1, *([1] * (x_t.ndim - 1)))
    return 0.5 * x_t + 0.1 * y.to(x_t.dtype).reshape(shape) - 0.001 * t.to(x_t.dtype).reshape(shape)


@_checker
def eps_loss(fn: Callable, quiet: bool = False) -> CheckResult:
    """Check ``fn(model, x0, y, t, noise, drop, null_class, schedule) -> loss`` (a scalar): the simple
    loss of Ho et al. 2020 (eq. 14) with label dropout for classifier-free guidance,
    ``mean((noise - model(x_t, t, y'))^2)`` where ``y'`` is ``null_class`` where ``drop`` (bool (B,)) is
    true and ``y`` elsewhere. ``model(x_t, t, y)`` is given; the random draws are given too."""
    schedule = schedules.linear(1000)
    g = torch.Generator().manual_seed(4)

    def case(batch: int, dtype=torch.float32):
        x0 = torch.rand(batch, 1, 8, 8, generator=g).mul(2).sub(1).to(dtype)
        y = torch.randint(0, 10, (batch,), generator=g)
        drop = torch.rand(batch, generator=g) < 0.5
        drop[0], drop[-1] = True, False if batch > 1 else True
        return _toy_model, x0, y, _steps(schedule, batch, g), torch.randn(x0.shape, generator=g).to(dtype), drop, \
            10, schedule

    cases = [("a batch of 8", case(8)), ("a batch of 1", case(1)), ("float64", case(4, torch.float64))]

    def reference(model, x0, y, t, noise, drop, null_class, s):
        x_t = diffusion.q_sample(s, x0, t, noise)
        return F.mse_loss(model(x_t, t, torch.where(drop, torch.full_like(y, null_class), y)), noise)

    def variant(target: str = "noise", labels: str = "dropped", reduce: str = "mean"):
        def wrong(model, x0, y, t, noise, drop, null_class, s):
            x_t = diffusion.q_sample(s, x0, t, noise)
            y_in = {"dropped": torch.where(drop, torch.full_like(y, null_class), y), "kept": y,
                    "inverted": torch.where(drop, y, torch.full_like(y, null_class))}[labels]
            error = (model(x_t, t, y_in) - (noise if target == "noise" else x0)) ** 2
            return error.mean() if reduce == "mean" else error.sum()
        return wrong

    mistakes = [
        Mistake("target_x0", "the network predicts the noise that was added, not the clean image: compare with "
                             "the noise", variant(target="x0")),
        Mistake("no_dropout", "the dropped labels still reach the model: where drop is true, pass the null class",
                variant(labels="kept")),
        Mistake("inverted_dropout", "the null class went to the labels that were kept: drop is true where the "
                                    "label is dropped", variant(labels="inverted")),
        Mistake("sum", "the loss grows with the batch and image size: average the squared errors",
                variant(reduce="sum")),
    ]
    return run_check("eps_loss", fn, reference, cases, mistakes, quiet=quiet)


def _sampler_cases(schedule: schedules.NoiseSchedule, seed: int, steps: list[int]) -> list[tuple[str, tuple]]:
    """(label, (x_t, t, eps, noise)) for each step t in ``steps``: a batch of 4, then a batch of 1, float64."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for i, t in enumerate(steps):
        batch, dtype = (1, torch.float32) if i == 1 else (4, torch.float64 if i == 2 else torch.float32)
        tensors = [torch.randn(batch, 1, 8, 8, generator=g).to(dtype) for _ in range(3)]
        cases.append((f"t = {t}, a batch of {batch}{', float64' if dtype == torch.float64 else ''}",
                      (tensors[0], t, tensors[1], tensors[2])))
    return cases


@_checker
def ddpm_step(fn: Callable, schedule: schedules.NoiseSchedule | None = None, quiet: bool = False) -> CheckResult:
    """Check ``fn(x_t, t, eps, noise, schedule) -> x_{t-1}``: one ancestral step (Ho et al. 2020, eq. 11)
    with ``sigma_t^2 = beta_tilde_t`` (the posterior variance), no clipping; ``t`` is an int, x_t, eps,
    noise (B, C, H, W). At t = 0, beta_tilde is 0, so adding "noise" there changes nothing."""
    schedule = schedule or schedules.linear(1000)
    T = schedule.timesteps
    cases = [(label, (x_t, t, eps, noise, schedule))
             for label, (x_t, t, eps, noise) in _sampler_cases(schedule, 5, [T - 1, 500, 1, 0])]

    def reference(x_t, t, eps, noise, s):
        return diffusion.ddpm_step(s, x_t, t, eps, noise, clip_x0=False)[0]

    def variant(sigma: str = "std", recip: str = "sqrt_alpha", eps_coef: str = "sqrt"):
        def wrong(x_t, t, eps, noise, s):
            alpha, ab, beta = s.alphas[t].item(), s.alpha_bar[t].item(), s.betas[t].item()
            var = s.posterior_variance[t].item()
            scale = {"sqrt_alpha": alpha ** -0.5, "alpha": 1 / alpha, "sqrt_alpha_bar": ab ** -0.5}[recip]
            k = beta / ((1 - ab) ** 0.5 if eps_coef == "sqrt" else (1 - ab))
            mean = scale * (x_t - k * eps)
            return mean + {"std": var ** 0.5, "variance": var, "beta": beta ** 0.5}[sigma] * noise
        return wrong

    mistakes = [
        Mistake("sigma_variance", "the noise is scaled by a variance: sigma_t is the square root of beta_tilde_t",
                variant(sigma="variance")),
        Mistake("sigma_beta", "sigma_t = sqrt(beta_t) is the other choice in Ho et al.; the library (and this "
                              "check) uses the posterior's, sigma_t^2 = beta_tilde_t", variant(sigma="beta")),
        Mistake("recip_alpha", "the mean is divided by alpha_t: it is 1 / sqrt(alpha_t)", variant(recip="alpha")),
        Mistake("recip_alpha_bar", "the mean uses alpha_bar_t where eq. 11 has alpha_t, this one step's",
                variant(recip="sqrt_alpha_bar")),
        Mistake("eps_coef_no_sqrt", "the noise estimate's weight is beta_t / sqrt(1 - alpha_bar_t): a square "
                                    "root is missing", variant(eps_coef="plain")),
    ]
    return run_check("ddpm_step", fn, reference, cases, mistakes, quiet=quiet)


@_checker
def ddim_step(fn: Callable, schedule: schedules.NoiseSchedule | None = None, quiet: bool = False) -> CheckResult:
    """Check ``fn(x_t, t, t_prev, eps, noise, eta, schedule) -> x_{t_prev}``: one DDIM step (Song et al.
    2021, eq. 12 and 16) without clipping; ``t_prev = -1`` means the clean image (alpha_bar = 1)."""
    schedule = schedule or schedules.linear(1000)
    g = torch.Generator().manual_seed(6)
    settings = [(999, 979, 0.0), (500, 250, 1.0), (40, -1, 0.5), (20, 10, 0.5)]
    cases = []
    for i, (t, t_prev, eta) in enumerate(settings):
        batch, dtype = (1, torch.float32) if i == 1 else (3, torch.float64 if i == 3 else torch.float32)
        x_t, eps, noise = (torch.randn(batch, 1, 8, 8, generator=g).to(dtype) for _ in range(3))
        cases.append((f"t = {t} -> {t_prev}, eta = {eta}, a batch of {batch}", (x_t, t, t_prev, eps, noise, eta, schedule)))

    def reference(x_t, t, t_prev, eps, noise, eta, s):
        return diffusion.ddim_step(s, x_t, t, t_prev, eps, noise, eta, clip_x0=False)[0]

    def variant(prev: str = "alpha_bar", x0_from: str = "recip_sqrt", with_eta: bool = True,
                subtract_sigma: bool = True, sqrt: Callable = math.sqrt):
        def wrong(x_t, t, t_prev, eps, noise, eta, s):
            a_t = s.alpha_bar[t].item()
            table = s.alphas if prev == "alpha" else s.alpha_bar
            a_prev = table[t_prev].item() if (t_prev >= 0 or prev == "negative_index") else 1.0
            x0 = (x_t - (1 - a_t) ** 0.5 * eps) * (a_t ** -0.5 if x0_from == "recip_sqrt" else (1 / s.alphas[t].item()) ** 0.5)
            e = eta if with_eta else 1.0
            sigma = e * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
            direction = sqrt(1 - a_prev - (sigma ** 2 if subtract_sigma else 0))
            return sqrt(a_prev) * x0 + direction * eps + sigma * noise
        return wrong

    mistakes = [
        *(Mistake("negative_index", "at t_prev = -1, alpha_bar[-1] is the *last* step's value in Python: the step "
                                    "before the first has alpha_bar = 1", variant(prev="negative_index", sqrt=sqrt))
          for sqrt in (math.sqrt, lambda v: torch.as_tensor(v, dtype=torch.float64).sqrt())),  # raises, or NaN
        Mistake("x0_sqrt_recip_alpha", "x_0 is rebuilt with 1 / sqrt(alpha_bar_t), the whole product, not with "
                                       "sqrt(1 / alpha_t)", variant(x0_from="sqrt_recip_alpha")),
        Mistake("alpha_prev", "alpha_t_prev must be alpha_bar at t_prev (the product), not one step's alpha",
                variant(prev="alpha")),
        Mistake("no_eta", "sigma ignores eta: eta = 0 must give the deterministic DDIM", variant(with_eta=False)),
        Mistake("direction_keeps_sigma", "the noise added (sigma) must come out of the direction term: "
                                         "sqrt(1 - alpha_bar_prev - sigma^2)", variant(subtract_sigma=False)),
    ]
    return run_check("ddim_step", fn, reference, cases, mistakes, quiet=quiet)


@_checker
def guidance(fn: Callable, quiet: bool = False) -> CheckResult:
    """Check ``fn(eps_cond, eps_uncond, scale) -> eps``: classifier-free guidance (Ho & Salimans 2022)
    as this course writes it, ``eps_uncond + scale * (eps_cond - eps_uncond)``: scale 1 is the
    conditional model, 0 the unconditional one."""
    g = torch.Generator().manual_seed(7)
    pair = lambda b: (torch.randn(b, 1, 4, 4, generator=g), torch.randn(b, 1, 4, 4, generator=g))  # noqa: E731
    cases = [(f"scale {s}", (*pair(3), s)) for s in (2.0, 1.0, 0.0, 7.5)]

    def reference(cond, uncond, s):
        return uncond + s * (cond - uncond)

    mistakes = [
        Mistake("swapped", "the roles of the two estimates are swapped: scale 0 must give the unconditional one",
                lambda c, u, s: c + s * (u - c)),
        Mistake("w_convention", "that is the paper's (1 + w) eps_c - w eps_u with w = scale: here scale = 1 must "
                                "give the conditional estimate unchanged (w = scale - 1)",
                lambda c, u, s: (1 + s) * c - s * u),
        Mistake("cond_only", "the unconditional estimate is missing: guidance extrapolates from it towards the "
                             "conditional one", lambda c, u, s: s * c),
    ]
    return run_check("guidance", fn, reference, cases, mistakes, quiet=quiet)


# ------------------------------------------------------------------ EMA (unit 05)


@_checker
def ema_update(fn: Callable, quiet: bool = False) -> CheckResult:
    """Check ``fn(ema, live, decay, num_updates) -> new ema`` (tensors of one shape): one EMA step with
    warm-up, ``d = min(decay, (1 + n) / (10 + n))`` after ``n = num_updates`` earlier updates, then
    ``ema * d + live * (1 - d)`` (``ddpm_lib.ema``)."""
    g = torch.Generator().manual_seed(8)
    pair = lambda: (torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g))  # noqa: E731
    cases = [(f"decay {d}, after {n} updates", (*pair(), d, n)) for d, n in ((0.999, 0), (0.999, 5), (0.9, 1000),
                                                                           (0.999, 100000))]

    def decay_at(decay, n, shift=0, cap=min):
        return cap(decay, (1 + n + shift) / (10 + n + shift))

    def reference(ema, live, decay, n):
        d = decay_at(decay, n)
        return ema * d + live * (1 - d)

    mistakes = [
        Mistake("swapped", "the average moves almost all the way to the live weights: the old average keeps the "
                           "weight d", lambda e, l, d, n: e * (1 - decay_at(d, n)) + l * decay_at(d, n)),
        Mistake("no_warmup", "early on the average should forget its random start fast: use the warm-up decay",
                lambda e, l, d, n: e * d + l * (1 - d)),
        Mistake("max", "the warm-up decay must never exceed decay: it is the smaller of the two",
                lambda e, l, d, n: e * decay_at(d, n, cap=max) + l * (1 - decay_at(d, n, cap=max))),
        Mistake("off_by_one", "the warm-up counts the updates before this one: after n updates it is (1 + n) / (10 + n)",
                lambda e, l, d, n: e * decay_at(d, n, shift=1) + l * (1 - decay_at(d, n, shift=1))),
    ]
    return run_check("ema_update", fn, reference, cases, mistakes, quiet=quiet)


@_checker
def ema_half_life(fn: Callable, quiet: bool = False) -> CheckResult:
    """Check ``fn(decay) -> n``: after how many updates a weight's share in the EMA has halved,
    the ``n`` with ``decay ** n = 1 / 2``, i.e. ``log(1/2) / log(decay)`` (a float; not rounded)."""
    cases = [(f"decay {d}", (d,)) for d in (0.999, 0.9999, 0.9, 0.5)]

    def reference(decay):
        return math.log(0.5) / math.log(decay)

    mistakes = [
        Mistake("window", "1 / (1 - decay) is the EMA's average age (its 'window'), longer than the half-life: "
                          "solve decay ** n = 1/2 for n", lambda d: 1 / (1 - d)),
        Mistake("inverted", "the ratio of logarithms is upside down: the half-life grows as decay approaches 1",
                lambda d: math.log(d) / math.log(0.5)),
        Mistake("linear", "decay ** n is not 1 - n (1 - decay): take logarithms of decay ** n = 1/2",
                lambda d: 0.5 / (1 - d)),
    ]
    mistakes = [Mistake(m.name, m.hint, _number(m.wrong)) for m in mistakes]
    return run_check("ema_half_life", _number(fn), _number(reference), cases, mistakes, quiet=quiet,
                     fallback=reference)


# ------------------------------------------------------------------ DDP (unit 06)


@_checker
def shard_indices(fn: Callable, quiet: bool = False) -> CheckResult:
    """Check ``fn(n, world_size, rank, epoch, seed) -> list of indices``: what
    ``DistributedSampler(range(n), world_size, rank, shuffle=True, seed=seed)`` yields after
    ``set_epoch(epoch)``: ``torch.randperm(n)`` from a generator seeded ``seed + epoch``, padded with
    its own first indices to a multiple of ``world_size``, then every ``world_size``-th from ``rank``."""
    from torch.utils.data import DistributedSampler

    cases = [(f"n={n}, {_ranks(w)}, rank {r}, epoch {e}", (n, w, r, e, 0)) for n, w, r, e in
             ((10, 2, 0, 0), (10, 2, 1, 3), (11, 4, 3, 1), (7, 1, 0, 2), (5, 8, 6, 0))]

    def listed(f):
        return lambda *a: torch.tensor([float(i) for i in f(*a)], dtype=torch.float64)

    def sampled(n, w, r, e, seed):
        sampler = DistributedSampler(range(n), num_replicas=w, rank=r, shuffle=True, seed=seed)
        sampler.set_epoch(e)
        return list(sampler)

    reference = listed(sampled)

    def order(n, e, seed, pad_to=None):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + e)).tolist()
        while pad_to and len(perm) < pad_to:
            perm += perm[: pad_to - len(perm)]
        return perm

    padded = lambda n, w: -(-n // w) * w  # noqa: E731
    mistakes = [
        Mistake("blocks", "each rank reads a contiguous block: ranks take every world_size-th index, starting at rank",
                lambda n, w, r, e, s: order(n, e, s, padded(n, w))[r * padded(n, w) // w:(r + 1) * padded(n, w) // w]),
        Mistake("no_shuffle", "the order is not shuffled: use a permutation from a generator seeded seed + epoch",
                lambda n, w, r, e, s: (list(range(n)) + list(range(n)))[: padded(n, w)][r::w]),
        Mistake("same_every_epoch", "every epoch has the same order: the permutation's seed is seed + epoch",
                lambda n, w, r, e, s: order(n, 0, s, padded(n, w))[r::w]),
        Mistake("no_padding", "the ranks get different numbers of indices, so they would stop at different steps: "
                              "pad the order with its own first indices to a multiple of world_size",
                lambda n, w, r, e, s: order(n, e, s)[r::w]),
    ]
    mistakes = [Mistake(m.name, m.hint, listed(m.wrong)) for m in mistakes]
    return run_check("shard_indices", listed(fn), reference, cases, mistakes, atol=0, rtol=0, quiet=quiet,
                     fallback=sampled)


@_checker
def average_gradients(fn: Callable, quiet: bool = False) -> CheckResult:
    """Check ``fn(grads) -> grad``: the gradient every rank holds after DDP's all-reduce, given each
    rank's own gradient (a list of W tensors of one shape): their mean."""
    g = torch.Generator().manual_seed(9)
    cases = [(_ranks(w), ([torch.randn(4, 3, generator=g) for _ in range(w)],)) for w in (2, 4, 1)]

    def reference(grads):
        return torch.stack(grads).mean(0)

    mistakes = [
        Mistake("sum", "the result grows with the number of ranks: DDP averages (all-reduce SUM, then divide by W)",
                lambda grads: torch.stack(grads).sum(0)),
        Mistake("rank0", "every rank must hold the same combination of all ranks' gradients, not rank 0's alone",
                lambda grads: grads[0]),
    ]
    return run_check("average_gradients", fn, reference, cases, mistakes, quiet=quiet)


# ------------------------------------------------------------------ distributed training (unit 07)


@_checker
def steps_per_epoch(fn: Callable, quiet: bool = False) -> CheckResult:
    """Check ``fn(n_images, batch_size, world_size) -> steps``: optimizer steps in one epoch when each of
    ``world_size`` ranks reads its shard (``DistributedSampler(drop_last=True)``: ``n // world_size``
    images each) in batches of ``batch_size`` per rank, dropping the last partial batch
    (``ddpm_lib.train.planned_steps``)."""
    cases = [(f"{n} images, batch {b}, {_ranks(w)}", (n, b, w))
             for n, b, w in ((1000, 64, 1), (1000, 64, 2), (1000, 167, 3), (100, 64, 2), (5000, 32, 8))]

    def reference(n, b, w):
        return (n // w) // b

    mistakes = [
        Mistake("ignores_world", "every rank reads only its shard, 1 / world_size of the images, so an epoch "
                                 "takes fewer steps with more ranks", lambda n, b, w: n // b),
        Mistake("keeps_partial", "the last, partial batch is dropped (drop_last): round down",
                lambda n, b, w: -(-(n // w) // b)),
    ]
    mistakes = [Mistake(m.name, m.hint, _number(m.wrong)) for m in mistakes]
    return run_check("steps_per_epoch", _number(fn), _number(reference), cases, mistakes,
                     atol=0, rtol=0, quiet=quiet, fallback=reference)


@_checker
def skip_per_rank(fn: Callable, quiet: bool = False) -> CheckResult:
    """Check ``fn(seen, world_size) -> skip``: resuming an epoch after ``seen`` images (all ranks
    together), how many positions of its shard each rank skips: ``ceil(seen / world_size)``
    (``ddpm_lib.train.skip_per_rank``; shards are dealt round-robin)."""
    from . import train

    cases = [(f"{seen} seen, {_ranks(w)}", (seen, w))
             for seen, w in ((0, 2), (128, 2), (130, 4), (7680, 3), (5, 8), (64, 1))]
    mistakes = [
        Mistake("floor", "rounding down makes a rank re-read images it already used this epoch: round up "
                         "(skipping at most world_size - 1 images is the lesser evil)", lambda seen, w: seen // w),
        Mistake("not_divided", "seen counts the images of all ranks together: each rank used only its share",
                lambda seen, w: seen),
    ]
    mistakes = [Mistake(m.name, m.hint, _number(m.wrong)) for m in mistakes]
    return run_check("skip_per_rank", _number(fn), _number(train.skip_per_rank), cases, mistakes,
                     atol=0, rtol=0, quiet=quiet, fallback=train.skip_per_rank)


# ------------------------------------------------------------------ evaluation (unit 08)


@_checker
def frechet_distance(fn: Callable, quiet: bool = False) -> CheckResult:
    """Check ``fn(mu1, sigma1, mu2, sigma2) -> d`` (a 0-dim tensor or a float): the Fréchet distance of two
    Gaussians (Dowson & Landau 1982; FID, Heusel et al. 2017),
    ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))`` with the *matrix* square root."""
    g = torch.Generator().manual_seed(10)

    def gaussian(dim: int):
        a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        return torch.randn(dim, generator=g, dtype=torch.float64), a @ a.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)

    def from_samples(n: int, dim: int):  # n < dim samples: a singular covariance, as FID on few images has
        x = torch.randn(n, dim, generator=g, dtype=torch.float64)
        return x.mean(0), torch.cov(x.T)

    cases = [(f"dimension {d}", (*gaussian(d), *gaussian(d))) for d in (4, 16, 1)]
    cases.append(("identical Gaussians", (*cases[0][1][:2], *cases[0][1][:2])))
    cases.append(("singular covariances (8 samples in 16 dimensions)", (*from_samples(8, 16), *from_samples(8, 16))))

    def trace_sqrt_product(s1, s2):
        # sigma1 sigma2 is similar to a symmetric PSD matrix, so its eigenvalues are real and >= 0
        return torch.linalg.eigvals(s1 @ s2).real.clamp(min=0).sqrt().sum()

    def reference(m1, s1, m2, s2):
        return ((m1 - m2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * trace_sqrt_product(s1, s2)

    mistakes = [
        Mistake("elementwise_sqrt", "the square root of sigma1 sigma2 is a matrix square root (a matrix S with "
                                    "S S = sigma1 sigma2), not the square root of each entry",
                lambda m1, s1, m2, s2: ((m1 - m2) ** 2).sum() + torch.trace(s1 + s2 - 2 * (s1 @ s2).abs().sqrt())),
        Mistake("norm_not_squared", "the mean term is the squared distance |mu1 - mu2|^2",
                lambda m1, s1, m2, s2: (m1 - m2).norm() + torch.trace(s1) + torch.trace(s2) - 2 * trace_sqrt_product(s1, s2)),
        Mistake("unclamped_eigenvalues", "with fewer samples than dimensions the covariances are singular, and "
                                         "eigenvalues that are 0 in exact arithmetic come out slightly negative: "
                                         "clamp them at 0 before the square root",
                lambda m1, s1, m2, s2: ((m1 - m2) ** 2).sum() + torch.trace(s1) + torch.trace(s2)
                - 2 * torch.linalg.eigvals(s1 @ s2).real.sqrt().sum()),
        Mistake("no_factor_2", "identical Gaussians must be at distance 0: the cross term is counted twice",
                lambda m1, s1, m2, s2: ((m1 - m2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - trace_sqrt_product(s1, s2)),
    ]
    mistakes = [Mistake(m.name, m.hint, _number(m.wrong)) for m in mistakes]
    return run_check("frechet_distance", _number(fn), reference, cases, mistakes, atol=1e-6, rtol=1e-5, quiet=quiet)


@_checker
def inception_score(fn: Callable, quiet: bool = False) -> CheckResult:
    """Check ``fn(probs) -> score``: the Inception Score (Salimans et al. 2016) of N samples from their
    class probabilities ``probs`` (N, K) (rows sum to 1), in one split:
    ``exp(mean_x KL(p(y|x) || p(y)))`` with ``p(y)`` the mean of the rows. The reference is that
    formula in float64 (``ddpm_lib.metrics.inception_score``, by torchmetrics, works in float32 and
    averages over random splits; ``tests/test_check.py`` checks the two agree)."""
    g = torch.Generator().manual_seed(11)
    random = torch.softmax(3 * torch.randn(40, 10, generator=g, dtype=torch.float64), dim=1)
    confident = torch.eye(10, dtype=torch.float64).repeat(3, 1) * 0.9 + 0.01
    cases = [("40 random rows, 10 classes", (random,)), ("confident and diverse (score near 10)", (confident,)),
             ("every row the same (score 1)", (random[:1].repeat(20, 1),)), ("a single sample", (random[:1],))]

    def kl_terms(probs, marginal, reverse=False):
        p, q = (marginal.expand_as(probs), probs) if reverse else (probs, marginal.expand_as(probs))
        return (p * (p.log() - q.log())).sum(1)

    def reference(probs):
        return kl_terms(probs, probs.mean(0, keepdim=True)).mean().exp()

    mistakes = [
        Mistake("no_exp", "that is the mean KL divergence, the score's logarithm: IS is its exponential",
                lambda p: kl_terms(p, p.mean(0, keepdim=True)).mean()),
        Mistake("reversed_kl", "the KL divergence is the wrong way round: KL(p(y|x) || p(y)) weights by each "
                               "sample's own class probabilities", lambda p: kl_terms(p, p.mean(0, keepdim=True), True).mean().exp()),
        Mistake("uniform_marginal", "p(y) is the marginal of *your samples* (the mean of the rows), not the uniform "
                                    "distribution: a model drawing one class only must score 1",
                lambda p: kl_terms(p, torch.full_like(p[:1], 1 / p.shape[1])).mean().exp()),
        Mistake("mean_of_exp", "take the mean of the KL terms first, then the exponential",
                lambda p: kl_terms(p, p.mean(0, keepdim=True)).exp().mean()),
    ]
    mistakes = [Mistake(m.name, m.hint, _number(m.wrong)) for m in mistakes]
    return run_check("inception_score", _number(fn), reference, cases, mistakes, atol=1e-6, rtol=1e-5, quiet=quiet)


# ------------------------------------------------------------------ failure modes (unit 10)


@_checker
def allreduce_bytes(fn: Callable, quiet: bool = False) -> CheckResult:
    """Check ``fn(nbytes, world_size) -> bytes``: how many bytes each rank sends in a ring all-reduce of a
    buffer of ``nbytes``: a reduce-scatter then an all-gather, each passing ``world_size - 1`` chunks
    of ``nbytes / world_size``: ``2 (W - 1) / W * nbytes`` (0 for one rank; ``ddpm_lib.perf``)."""
    from . import perf

    cases = [(f"{n:g} bytes over {_ranks(w)}", (n, w))
             for n, w in ((1e6, 2), (4e6, 4), (1e6, 1), (3.2e7, 8))]

    def reference(nbytes, world_size):
        return perf.ring_allreduce_seconds(nbytes, world_size, bandwidth=1.0)  # bytes at 1 byte/s

    mistakes = [
        Mistake("one_phase", "that is one phase: an all-reduce is a reduce-scatter followed by an all-gather",
                lambda n, w: (w - 1) / w * n),
        Mistake("whole_chunks_count", "of the W chunks, one per step is a rank's own and never sent: each phase "
                                      "sends W - 1 chunks, not W", lambda n, w: 2 * n),
        Mistake("whole_buffers", "in a ring a rank sends chunks of nbytes / W, not its whole buffer, W - 1 times",
                lambda n, w: 2 * (w - 1) * n),
    ]
    mistakes = [Mistake(m.name, m.hint, _number(m.wrong)) for m in mistakes]
    return run_check("allreduce_bytes", _number(fn), _number(reference), cases, mistakes,
                     quiet=quiet, fallback=reference)


@_checker
def balanced_weights(fn: Callable, quiet: bool = False) -> CheckResult:
    """Check ``fn(labels, num_classes) -> weights`` (N,) for ``WeightedRandomSampler``: each image's weight
    is ``1 / (num_classes * count of its class)``, so every class present gets the same total weight,
    ``1 / num_classes``, however rare it is. ``labels`` int64 (N,)."""
    g = torch.Generator().manual_seed(12)
    skewed = torch.cat([torch.full((n,), c) for c, n in enumerate((50, 20, 5, 1))])
    cases = [("4 classes, 50 / 20 / 5 / 1 images", (skewed, 4)),
             ("balanced, shuffled", (torch.randperm(30, generator=g) % 3, 3)),
             ("a class with no images", (torch.tensor([0, 0, 2, 2, 2]), 3)), ("one image", (torch.tensor([1]), 2))]

    def reference(labels, num_classes):
        counts = torch.bincount(labels, minlength=num_classes).double()
        return 1 / (num_classes * counts[labels])

    def per_image(f):
        return lambda labels, k: f(torch.bincount(labels, minlength=k).double(), k)[labels]

    mistakes = [
        Mistake("not_inverted", "frequent classes get the large weights: a weight must fall as its class grows",
                per_image(lambda counts, k: counts / (k * counts.sum()))),
        Mistake("per_class", "one weight per *image* is needed (the sampler draws images): look up each image's class",
                lambda labels, k: 1 / (k * torch.bincount(labels, minlength=k).double().clamp(min=1))),
        Mistake("unnormalised", "each class's weights should add up to 1 / num_classes: divide by num_classes too",
                per_image(lambda counts, k: 1 / counts)),
    ]
    return run_check("balanced_weights", fn, reference, cases, mistakes, quiet=quiet)
