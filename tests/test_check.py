"""The learner's checkers: the reference passes, and every typical wrong version is rejected with
the hint that names its mistake. The mutants below are written as a learner would write them,
independently of the wrong versions inside ``ddpm_lib.check``."""

import math

import pytest
import torch

from ddpm_lib import check, schedules


def col(values, t, like):
    return values[t].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


# ------------------------------------------------------------------ q_sample


def q_right(x0, t, noise, s):
    ab = col(s.alpha_bar, t, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


Q_MUTANTS = {
    "alpha": lambda x0, t, n, s: col(s.alphas, t, x0).sqrt() * x0 + (1 - col(s.alphas, t, x0)).sqrt() * n,
    "no_sqrt": lambda x0, t, n, s: col(s.alpha_bar, t, x0) * x0 + (1 - col(s.alpha_bar, t, x0)) * n,
    "sqrt_signal_only": lambda x0, t, n, s: col(s.alpha_bar, t, x0).sqrt() * x0 + (1 - col(s.alpha_bar, t, x0)) * n,
    "sqrt_noise_only": lambda x0, t, n, s: col(s.alpha_bar, t, x0) * x0 + (1 - col(s.alpha_bar, t, x0)).sqrt() * n,
    "swapped": lambda x0, t, n, s: (1 - col(s.alpha_bar, t, x0)).sqrt() * x0 + col(s.alpha_bar, t, x0).sqrt() * n,
    "off_by_one_next": lambda x0, t, n, s: q_right(x0, (t + 1).clamp(max=s.timesteps - 1), n, s),
    "off_by_one_prev": lambda x0, t, n, s: q_right(x0, (t - 1).clamp(min=0), n, s),
    "minus_noise": lambda x0, t, n, s: col(s.alpha_bar, t, x0).sqrt() * x0 - (1 - col(s.alpha_bar, t, x0)).sqrt() * n,
}


def test_q_sample_reference_passes_for_both_schedules():
    assert check.q_sample(q_right, quiet=True)
    assert check.q_sample(q_right, schedules.cosine(100), quiet=True)


@pytest.mark.parametrize("name", list(Q_MUTANTS))
def test_q_sample_mutants_get_their_hint(name):
    result = check.q_sample(Q_MUTANTS[name], quiet=True)
    assert not result and result.mistake == name, result.message
    assert "Hint:" in result.message and "\n" not in result.message


def test_unknown_mistakes_shapes_errors_and_stubs_are_reported():
    result = check.q_sample(lambda x0, t, n, s: x0, quiet=True)  # no noise at all
    assert not result and result.mistake is None and "off by up to" in result.message
    # no broadcasting: alpha_bar[t] of shape (B,) against (B, 1, 8, 8)
    result = check.q_sample(lambda x0, t, n, s: s.alpha_bar[t].sqrt() * x0 + n, quiet=True)
    assert not result and "raised RuntimeError" in result.message

    def stub(x0, t, noise, schedule):
        raise NotImplementedError("write q_sample")

    result = check.q_sample(stub, quiet=True)
    assert not result and "not written yet" in result.message


def test_a_check_prints_one_line(capsys):
    check.q_sample(q_right)
    out = capsys.readouterr().out
    assert out.startswith("PASS q_sample: all 4 cases") and out.count("\n") == 1


# ------------------------------------------------------------------ cosine alpha_bar


def cos_right(T, s=0.008):
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([f(t + 1) / f(0) for t in range(T)], dtype=torch.float64)


def cos_variant(T, s=0.008, first=1, power=2, offset=True, angle=math.pi / 2):
    s = s if offset else 0.0
    f = lambda u: abs(math.cos((u / T + s) / (1 + s) * angle)) ** power  # noqa: E731
    return torch.tensor([f(t + first) / f(0) for t in range(T)], dtype=torch.float64)


COS_MUTANTS = {
    "off_by_one": lambda T, s=0.008: cos_variant(T, s, first=0),
    "no_square": lambda T, s=0.008: cos_variant(T, s, power=1),
    "no_offset": lambda T, s=0.008: cos_variant(T, s, offset=False),
    "angle": lambda T, s=0.008: cos_variant(T, s, angle=math.pi),
}


def test_cosine_reference_passes():
    assert check.cosine_alpha_bar(cos_right, quiet=True)


@pytest.mark.parametrize("name", list(COS_MUTANTS))
def test_cosine_mutants_get_their_hint(name):
    result = check.cosine_alpha_bar(COS_MUTANTS[name], quiet=True)
    assert not result and result.mistake == name, result.message


# ------------------------------------------------------------------ posterior


def post(x0, x_t, t, s, prev_shift=-1, beta_var=False, sqrt_prev=True, sqrt_alpha=True, swap=False):
    # the schedule's float64 values, as a learner indexing s.alpha_bar[t] gets them
    view = lambda v: v.view(-1, *([1] * (x0.ndim - 1)))  # noqa: E731
    ab, prev_t = view(s.alpha_bar[t]), t + prev_shift
    ab_prev = view(torch.where(prev_t >= 0, s.alpha_bar[prev_t.clamp(min=0)], torch.ones(len(t), dtype=torch.float64)))
    beta, alpha = view(s.betas[t]), view(s.alphas[t])
    c1 = (ab_prev.sqrt() if sqrt_prev else ab_prev) * beta / (1 - ab)
    c2 = (alpha.sqrt() if sqrt_alpha else alpha) * (1 - ab_prev) / (1 - ab)
    if swap:
        c1, c2 = c2, c1
    var = beta if beta_var else (1 - ab_prev) / (1 - ab) * beta
    return c1 * x0 + c2 * x_t, var.flatten()


POST_MUTANTS = {
    "alpha_bar_t_for_prev": lambda *a: post(*a, prev_shift=0),
    "variance_beta": lambda *a: post(*a, beta_var=True),
    "coef1_no_sqrt": lambda *a: post(*a, sqrt_prev=False),
    "coef2_no_sqrt": lambda *a: post(*a, sqrt_alpha=False),
    "swapped": lambda *a: post(*a, swap=True),
}


def test_posterior_reference_passes():
    assert check.posterior(post, quiet=True)


@pytest.mark.parametrize("name", list(POST_MUTANTS))
def test_posterior_mutants_get_their_hint(name):
    result = check.posterior(POST_MUTANTS[name], quiet=True)
    assert not result and result.mistake == name, result.message


def test_posterior_variance_of_the_wrong_shape_is_named():
    result = check.posterior(lambda *a: (post(*a)[0], post(*a)[1].view(-1, 1, 1, 1)), quiet=True)
    assert not result and "output 2 has shape" in result.message


# ------------------------------------------------------------------ timestep embedding


def emb(t, dim, sin_first=False, grow=False, over_dim=False, interleave=False):
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32)
    freqs = 10000.0 ** ((1 if grow else -1) * k / (dim if over_dim else half))
    angles = t.float()[:, None] * freqs
    parts = [angles.sin(), angles.cos()] if sin_first else [angles.cos(), angles.sin()]
    out = torch.stack(parts, 2).flatten(1) if interleave else torch.cat(parts, 1)
    return torch.nn.functional.pad(out, (0, dim % 2))


EMB_MUTANTS = {
    "sin_cos": lambda t, d: emb(t, d, sin_first=True),
    "growing_freqs": lambda t, d: emb(t, d, grow=True),
    "over_dim": lambda t, d: emb(t, d, over_dim=True),
    "interleaved": lambda t, d: emb(t, d, interleave=True),
}


def test_embedding_reference_passes():
    assert check.timestep_embedding(emb, quiet=True)


@pytest.mark.parametrize("name", list(EMB_MUTANTS))
def test_embedding_mutants_get_their_hint(name):
    result = check.timestep_embedding(EMB_MUTANTS[name], quiet=True)
    assert not result and result.mistake == name, result.message


def test_embedding_without_padding_for_an_odd_dim_is_a_shape_error():
    result = check.timestep_embedding(lambda t, d: emb(t, d)[:, : 2 * (d // 2)], quiet=True)
    assert not result and "an odd dim" in result.message and "shape" in result.message
