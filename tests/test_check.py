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


def test_embedding_without_padding_for_an_odd_dim_is_a_shape_error():
    result = check.timestep_embedding(lambda t, d: emb(t, d)[:, : 2 * (d // 2)], quiet=True)
    assert not result and "an odd dim" in result.message and "shape" in result.message


# ------------------------------------------------------------------ adaptive GroupNorm


def ssn(h, scale, shift, norm, plus_one=True, swap=False, before=False):
    if swap:
        scale, shift = shift, scale
    s, b = scale.view(*scale.shape, 1, 1), shift.view(*shift.shape, 1, 1)
    with torch.no_grad():
        return norm(h * (1 + s) + b) if before else norm(h) * ((1 + s) if plus_one else s) + b


SSN_MUTANTS = {"no_plus_one": lambda *a: ssn(*a, plus_one=False), "swapped": lambda *a: ssn(*a, swap=True),
               "before_norm": lambda *a: ssn(*a, before=True)}


# ------------------------------------------------------------------ the loss


def loss(model, x0, y, t, noise, drop, null, s, target="noise", labels="dropped", reduce="mean"):
    ab = s.alpha_bar[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    y_in = {"dropped": y.masked_fill(drop, null), "kept": y, "inverted": y.masked_fill(~drop, null)}[labels]
    err = (model(x_t.to(x0.dtype), t, y_in) - (noise if target == "noise" else x0)) ** 2
    return err.mean() if reduce == "mean" else err.sum()


LOSS_MUTANTS = {"target_x0": lambda *a: loss(*a, target="x0"), "no_dropout": lambda *a: loss(*a, labels="kept"),
                "inverted_dropout": lambda *a: loss(*a, labels="inverted"), "sum": lambda *a: loss(*a, reduce="sum")}


# ------------------------------------------------------------------ DDPM and DDIM steps


def ddpm(x_t, t, eps, noise, s, sigma="std", recip="sqrt_alpha", eps_sqrt=True, noise_at_0=False):
    alpha, ab, beta = float(s.alphas[t]), float(s.alpha_bar[t]), float(s.betas[t])
    scale = {"sqrt_alpha": 1 / math.sqrt(alpha), "alpha": 1 / alpha, "sqrt_alpha_bar": 1 / math.sqrt(ab)}[recip]
    mean = scale * (x_t - beta / (math.sqrt(1 - ab) if eps_sqrt else 1 - ab) * eps)
    if t == 0 and not noise_at_0:
        return mean
    var = float(s.posterior_variance[t])
    return mean + {"std": math.sqrt(var), "variance": var, "beta": math.sqrt(beta)}[sigma] * noise


DDPM_MUTANTS = {"sigma_variance": lambda *a: ddpm(*a, sigma="variance"),
                "sigma_beta": lambda *a: ddpm(*a, sigma="beta"), "recip_alpha": lambda *a: ddpm(*a, recip="alpha"),
                "recip_alpha_bar": lambda *a: ddpm(*a, recip="sqrt_alpha_bar"),
                "eps_coef_no_sqrt": lambda *a: ddpm(*a, eps_sqrt=False)}


def ddim(x_t, t, t_prev, eps, noise, eta, s, python_index=False, x0_wrong=False, alpha_prev=False, ignore_eta=False,
         keep_sigma=False):
    a_t = float(s.alpha_bar[t])
    if python_index or t_prev >= 0:
        a_prev = float((s.alphas if alpha_prev else s.alpha_bar)[t_prev])
    else:
        a_prev = 1.0
    x0 = (x_t - math.sqrt(1 - a_t) * eps) * (math.sqrt(1 / float(s.alphas[t])) if x0_wrong else 1 / math.sqrt(a_t))
    sigma = (1.0 if ignore_eta else eta) * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    return math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - (0 if keep_sigma else sigma**2)) * eps + sigma * noise


DDIM_MUTANTS = {"negative_index": lambda *a: ddim(*a, python_index=True), "x0_sqrt_recip_alpha": lambda *a: ddim(*a, x0_wrong=True),
                "alpha_prev": lambda *a: ddim(*a, alpha_prev=True), "no_eta": lambda *a: ddim(*a, ignore_eta=True),
                "direction_keeps_sigma": lambda *a: ddim(*a, keep_sigma=True)}


# ------------------------------------------------------------------ guidance, EMA, DDP, FID


GUIDANCE_MUTANTS = {"swapped": lambda c, u, s: c + s * (u - c), "w_convention": lambda c, u, s: c + s * (c - u),
                    "cond_only": lambda c, u, s: s * c}


def ema(e, live, decay, n, swap=False, warm=True, cap=min, shift=0):
    d = cap(decay, (1 + n + shift) / (10 + n + shift)) if warm else decay
    return e * (1 - d) + live * d if swap else d * e + (1 - d) * live


EMA_MUTANTS = {"swapped": lambda *a: ema(*a, swap=True), "no_warmup": lambda *a: ema(*a, warm=False),
               "max": lambda *a: ema(*a, cap=max), "off_by_one": lambda *a: ema(*a, shift=1)}


def shard(n, world, rank, epoch, seed, blocks=False, shuffle=True, use_epoch=True, pad=True):
    g = torch.Generator().manual_seed(seed + (epoch if use_epoch else 0))
    order = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
    total = math.ceil(n / world) * world
    if pad:
        order += order[: total - n]
    if blocks:
        per = total // world
        return order[rank * per:(rank + 1) * per]
    return order[rank::world]


SHARD_MUTANTS = {"blocks": lambda *a: shard(*a, blocks=True), "no_shuffle": lambda *a: shard(*a, shuffle=False),
                 "same_every_epoch": lambda *a: shard(*a, use_epoch=False), "no_padding": lambda *a: shard(*a, pad=False)}

GRAD_MUTANTS = {"sum": lambda grads: sum(grads), "rank0": lambda grads: grads[0].clone()}


def fid(m1, s1, m2, s2, elementwise=False, plain_norm=False, once=False):
    if elementwise:
        cross = (s1 @ s2).abs().sqrt().trace()
    else:
        values, vectors = torch.linalg.eigh(s1)
        root1 = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
        cross = torch.linalg.eigvalsh(root1 @ s2 @ root1).clamp(min=0).sqrt().sum()
    mean_term = (m1 - m2).norm() if plain_norm else ((m1 - m2) ** 2).sum()
    return mean_term + s1.trace() + s2.trace() - (1 if once else 2) * cross


FID_MUTANTS = {"elementwise_sqrt": lambda *a: fid(*a, elementwise=True), "norm_not_squared": lambda *a: fid(*a, plain_norm=True),
               "no_factor_2": lambda *a: fid(*a, once=True)}


CHECKERS = {  # checker: (a right implementation, its mutants), each written as a learner would
    check.q_sample: (q_right, Q_MUTANTS),
    check.cosine_alpha_bar: (cos_right, COS_MUTANTS),
    check.posterior: (post, POST_MUTANTS),
    check.timestep_embedding: (emb, EMB_MUTANTS),
    check.scale_shift_norm: (ssn, SSN_MUTANTS),
    check.eps_loss: (loss, LOSS_MUTANTS),
    check.ddpm_step: (ddpm, DDPM_MUTANTS),
    check.ddim_step: (ddim, DDIM_MUTANTS),
    check.guidance: (lambda c, u, s: u + s * (c - u), GUIDANCE_MUTANTS),
    check.ema_update: (ema, EMA_MUTANTS),
    check.shard_indices: (shard, SHARD_MUTANTS),
    check.average_gradients: (lambda grads: torch.stack(grads).mean(0), GRAD_MUTANTS),
    check.frechet_distance: (fid, FID_MUTANTS),
}


@pytest.mark.parametrize("checker", list(CHECKERS), ids=lambda c: c.__name__)
def test_right_implementations_pass(checker):
    result = checker(CHECKERS[checker][0], quiet=True)
    assert result, result.message


@pytest.mark.parametrize("checker,name", [(c, n) for c, (_, mutants) in CHECKERS.items() for n in mutants],
                         ids=lambda v: getattr(v, "__name__", v))
def test_mutants_are_rejected_with_their_hint(checker, name):
    result = checker(CHECKERS[checker][1][name], quiet=True)
    assert not result and result.mistake == name, result.message
    assert "Hint:" in result.message and "\n" not in result.message


def test_a_negative_index_is_recognised_whether_it_raises_or_gives_nan():
    def torch_ddim(x_t, t, t_prev, eps, noise, eta, s):  # alpha_bar[-1] with torch: NaN instead of an error
        a_t, a_prev = s.alpha_bar[t], s.alpha_bar[t_prev]
        x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        return a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps + sigma * noise

    result = check.ddim_step(torch_ddim, quiet=True)
    assert not result and result.mistake == "negative_index", result.message


def test_noise_at_the_last_ddpm_step_is_harmless_with_the_posterior_variance():
    assert check.ddpm_step(lambda *a: ddpm(*a, noise_at_0=True), quiet=True)
