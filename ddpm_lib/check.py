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

A stub that still raises ``NotImplementedError`` is reported as "not written yet"; the
notebook then uses the library's version, so every later cell still runs. A checker returns
a :class:`CheckResult`, which is truthy when the function passed.

Signatures the notebooks ask for (shapes: B batch, C channels, H x W pixels, T steps):

- ``q_sample(x0, t, noise, schedule) -> x_t``: ``x0``, ``noise`` (B, C, H, W); ``t`` int64 (B,)
  code steps in [0, T); ``schedule`` a :class:`~ddpm_lib.schedules.NoiseSchedule` (Ho et al. 2020, eq. 4).
- ``cosine_alpha_bar(timesteps, s=0.008) -> alpha_bar`` (T,) float64 (Nichol & Dhariwal 2021, eq. 17).
- ``posterior(x0, x_t, t, schedule) -> (mean, variance)``: mean (B, C, H, W), variance (B,) of
  q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 6-7).
- ``timestep_embedding(t, dim) -> (B, dim)``: the sinusoidal embedding of the U-Net (Vaswani et al.
  2017, as used by Ho et al. 2020), ``[cos(t w_k), sin(t w_k)]`` with ``w_k = 10000^(-k / (dim/2))``,
  zero-padded to ``dim`` when ``dim`` is odd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from . import diffusion, schedules, unet

ATOL, RTOL = 1e-5, 1e-4  # float32 arithmetic done in another order differs by about 1e-7


@dataclass
class CheckResult:
    """What a checker found: ``passed``; ``mistake`` names the known mistake the output matched."""

    name: str
    passed: bool
    message: str
    mistake: str | None = None

    def __bool__(self) -> bool:
        return self.passed


@dataclass
class Mistake:
    """A typical wrong version of the function: ``wrong`` takes the same arguments as the learner's."""

    name: str
    hint: str
    wrong: Callable


# ------------------------------------------------------------------ the machinery


def _as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _difference(got, want, atol: float, rtol: float) -> str | None:
    """Why ``got`` is not ``want`` (tensors or tuples of tensors), or None when they match."""
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
        if not torch.isfinite(g).all():
            return f"{what} holds NaN or inf"
        g64, w64 = g.detach().double().cpu(), w.detach().double().cpu()
        if not torch.allclose(g64, w64, atol=atol, rtol=rtol):
            return f"{what} is off by up to {(g64 - w64).abs().max().item():.3g} (tolerance {atol:g} + {rtol:g} x |value|)"
    return None


def _matches(got, wrong: Callable, args: tuple, atol: float, rtol: float) -> bool:
    try:
        return _difference(got, wrong(*args), atol, rtol) is None
    except Exception:  # a mistake that cannot even run on this case is not the one made
        return False


def run_check(name: str, learner: Callable, reference: Callable, cases: list[tuple[str, tuple]],
              mistakes: list[Mistake], atol: float = ATOL, rtol: float = RTOL, quiet: bool = False) -> CheckResult:
    """Compare ``learner`` with ``reference`` on ``cases`` (label, args); diagnose the first mismatch.

    Prints (unless ``quiet``) and returns one :class:`CheckResult`.
    """
    def done(passed: bool, message: str, mistake: str | None = None) -> CheckResult:
        result = CheckResult(name, passed, f"{'PASS' if passed else 'FAIL'} {name}: {message}", mistake)
        if not quiet:
            print(result.message)
        return result

    failures = []  # (label, args, output, what differs)
    for label, args in cases:
        try:
            got = learner(*args)
        except NotImplementedError:
            return done(False, "not written yet (it raises NotImplementedError); the notebook uses the "
                               "library's version until you fill it in")
        except Exception as err:
            reason = str(err).splitlines()[0] if str(err) else ""
            return done(False, f"{label}: your function raised {type(err).__name__}: {reason}")
        problem = _difference(got, reference(*args), atol, rtol)
        if problem:
            failures.append((label, args, got, problem))
    if not failures:
        return done(True, f"all {len(cases)} cases match the library's reference ({', '.join(l for l, _ in cases)})")
    # Report the first case that differs; take the hint from the first known mistake the output
    # equals on any differing case (some mistakes only show exactly on small inputs).
    mistake = next((m for _, args, got, _ in failures for m in mistakes if _matches(got, m.wrong, args, atol, rtol)),
                   None)
    label, _, _, problem = failures[0]
    hint = mistake.hint if mistake else "compare your formula with the equation above, term by term"
    return done(False, f"{label}: {problem}. Hint: {hint}", mistake.name if mistake else None)


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


# ------------------------------------------------------------------ forward noising (units 01-02)


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


def cosine_alpha_bar(fn: Callable, quiet: bool = False) -> CheckResult:
    """Check ``fn(timesteps, s=0.008) -> alpha_bar`` (T,): ``f(t + 1) / f(0)`` for code steps t = 0..T-1,
    ``f(t) = cos^2((t / T + s) / (1 + s) * pi / 2)``. The library clips beta at 0.999, which changes
    only the last value, by less than the tolerance used here."""
    cases = [("T = 1000", (1000, 0.008)), ("T = 10", (10, 0.008)), ("T = 50 with s = 0.02", (50, 0.02))]

    def reference(timesteps, s):
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
