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


def fid(m1, s1, m2, s2, elementwise=False, plain_norm=False, once=False, clamp=True):
    if elementwise:
        cross = (s1 @ s2).abs().sqrt().trace()
    elif not clamp:  # a tiny negative eigenvalue of a singular product gives NaN
        cross = torch.linalg.eigvals(s2 @ s1).real.sqrt().sum()
    else:
        values, vectors = torch.linalg.eigh(s1)
        root1 = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
        cross = torch.linalg.eigvalsh(root1 @ s2 @ root1).clamp(min=0).sqrt().sum()
    mean_term = (m1 - m2).norm() if plain_norm else ((m1 - m2) ** 2).sum()
    return mean_term + s1.trace() + s2.trace() - (1 if once else 2) * cross


FID_MUTANTS = {"elementwise_sqrt": lambda *a: fid(*a, elementwise=True), "norm_not_squared": lambda *a: fid(*a, plain_norm=True),
               "no_factor_2": lambda *a: fid(*a, once=True), "unclamped_eigenvalues": lambda *a: fid(*a, clamp=False)}


# ------------------------------------------------------------------ the seven added with the notebooks


def lin(T, b0, b1, alphas=True, prod=True, first_is_one=False):
    betas = [b0 + (b1 - b0) * i / max(T - 1, 1) for i in range(T)]
    out, acc = [], 1.0
    for b in betas:
        step = (1 - b) if alphas else b
        if first_is_one:
            out.append(acc)
        acc = acc * step if prod else acc - b
        if not first_is_one:
            out.append(acc if prod else acc)
    return torch.tensor(out, dtype=torch.float64)


LIN_MUTANTS = {"no_cumprod": lambda T, b0, b1: torch.tensor([1 - (b0 + (b1 - b0) * i / max(T - 1, 1)) for i in range(T)],
                                                            dtype=torch.float64),
               "one_minus_cumsum": lambda *a: lin(*a, prod=False), "cumprod_of_betas": lambda *a: lin(*a, alphas=False),
               "starts_at_one": lambda *a: lin(*a, first_is_one=True)}

HALF_MUTANTS = {"window": lambda d: 1 / (1 - d), "inverted": lambda d: math.log(d) / math.log(0.5),
                "linear": lambda d: 0.5 / (1 - d)}


def per_epoch(n, batch, world, ignore_world=False, partial=False):
    shard = n if ignore_world else n // world
    return math.ceil(shard / batch) if partial else shard // batch


EPOCH_MUTANTS = {"ignores_world": lambda *a: per_epoch(*a, ignore_world=True),
                 "keeps_partial": lambda *a: per_epoch(*a, partial=True)}
SKIP_MUTANTS = {"floor": lambda seen, w: int(seen / w), "not_divided": lambda seen, w: seen}


def inception(probs, exp=True, reverse=False, uniform=False, exp_each=False):
    p_y = torch.full((probs.shape[1],), 1 / probs.shape[1], dtype=probs.dtype) if uniform else probs.mean(0)
    a, b = (p_y.expand_as(probs), probs) if reverse else (probs, p_y.expand_as(probs))
    kl = (a * torch.log(a / b)).sum(1)
    if exp_each:
        return kl.exp().mean()
    return kl.mean().exp() if exp else kl.mean()


IS_MUTANTS = {"no_exp": lambda p: inception(p, exp=False), "reversed_kl": lambda p: inception(p, reverse=True),
              "uniform_marginal": lambda p: inception(p, uniform=True), "mean_of_exp": lambda p: inception(p, exp_each=True)}


def ring(nbytes, world, phases=2, chunks_sent=None, chunk=None):
    sent = world - 1 if chunks_sent is None else chunks_sent
    return phases * sent * (nbytes / world if chunk is None else chunk)


RING_MUTANTS = {"one_phase": lambda n, w: ring(n, w, phases=1), "whole_chunks_count": lambda n, w: ring(n, w, chunks_sent=w),
                "whole_buffers": lambda n, w: ring(n, w, chunk=n)}


def balanced(labels, k, invert=True, per_image=True, divide_k=True):
    counts = torch.zeros(k, dtype=torch.float64)
    for c in labels.tolist():
        counts[c] += 1
    w = (1 / counts if invert else counts / counts.sum()) / (k if divide_k else 1)
    return w[labels] if per_image else torch.where(counts > 0, w, 1 / k)


BALANCED_MUTANTS = {"not_inverted": lambda *a: balanced(*a, invert=False), "per_class": lambda *a: balanced(*a, per_image=False),
                    "unnormalised": lambda *a: balanced(*a, divide_k=False)}


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
    check.linear_alpha_bar: (lin, LIN_MUTANTS),
    check.ema_half_life: (lambda d: math.log(0.5) / math.log(d), HALF_MUTANTS),
    check.steps_per_epoch: (per_epoch, EPOCH_MUTANTS),
    check.skip_per_rank: (lambda seen, w: math.ceil(seen / w), SKIP_MUTANTS),
    check.inception_score: (inception, IS_MUTANTS),
    check.allreduce_bytes: (ring, RING_MUTANTS),
    check.balanced_weights: (balanced, BALANCED_MUTANTS),
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


# ------------------------------------------------------------------ fallback, solutions mode, predictions


def test_every_checker_is_in_the_test_table():
    assert sorted(check.CHECKS) == sorted(c.__name__ for c in CHECKERS)


def test_the_notebook_uses_the_learners_function_once_it_passes_and_the_library_until_then():
    assert check.q_sample(q_right, quiet=True).function is q_right

    def stub(x0, t, noise, schedule):
        raise NotImplementedError("look up alpha_bar at t")

    result = check.q_sample(stub, quiet=True)
    assert not result and "Hint: look up alpha_bar at t" in result.message
    s = schedules.linear(1000)
    x0, noise, t = torch.rand(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.tensor([0, 999])
    torch.testing.assert_close(result.function(x0, t, noise, s), q_right(x0, t, noise, s))
    wrong = check.q_sample(Q_MUTANTS["alpha"], quiet=True)
    assert wrong.function is not Q_MUTANTS["alpha"]
    # fallbacks keep the learner's return types: a list of indices, a number
    assert check.shard_indices(lambda *a: [], quiet=True).function(10, 2, 1, 0, 0) == shard(10, 2, 1, 0, 0)
    assert check.steps_per_epoch(lambda *a: -1, quiet=True).function(1000, 64, 2) == 7


def test_solutions_mode_checks_the_file_and_raises_when_a_solution_is_wrong(tmp_path, capsys):
    path = tmp_path / "01_unit.py"
    path.write_text("import torch\n\n"
                    "def guidance(eps_cond, eps_uncond, scale):\n    return eps_uncond + scale * (eps_cond - eps_uncond)\n\n"
                    "def average_gradients(grads):\n    return sum(grads)\n")
    try:
        check.use_solutions(path)
        result = check.guidance(None)  # the cell's own function is ignored in this mode
        assert result and result.function(torch.ones(1), torch.zeros(1), 2.0).item() == 2.0
        with pytest.raises(check.SolutionFailed, match="fails: FAIL average_gradients"):
            check.average_gradients(lambda grads: grads[0])
        with pytest.raises(check.SolutionFailed, match="defines no q_sample"):
            check.q_sample(q_right)
    finally:
        check.use_solutions(None)
    assert check.guidance(GUIDANCE_MUTANTS["swapped"], quiet=True).mistake == "swapped"  # the learner's again
    assert f"checking the worked solutions in {path}" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no solutions file"):
        check.use_solutions(tmp_path / "missing.py")


def test_a_prediction_is_scored_against_the_measurement(capsys):
    assert check.score_prediction(300, 276, 50, "the step where SNR falls below 1") is True
    assert check.score_prediction(0.5, 0.93, 0.1, "class accuracy") is False
    assert check.score_prediction(None, 276, 50, "the step") is None
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "the step where SNR falls below 1: you predicted 300, measured 276 (close: within 50)."
    assert "off by more than 0.1" in out[1] and "no prediction" in out[2]


@pytest.mark.filterwarnings("ignore:std\\(\\)")  # torchmetrics' std over a single split
def test_the_inception_score_reference_agrees_with_the_librarys_metric():
    from ddpm_lib import metrics

    logits = 3 * torch.randn(200, 10, generator=torch.Generator().manual_seed(0))
    library, _ = metrics.inception_score(logits, splits=1)
    assert inception(torch.softmax(logits.double(), 1)).item() == pytest.approx(library, rel=1e-4)
    assert check.inception_score(inception, quiet=True)


def test_every_checker_has_one_worked_solution_and_each_passes():
    """notebooks/solutions/*.py: each checker's worked solution is in exactly one unit's file, and passes."""
    import ast

    from conftest import ROOT

    defined = {}
    for path in sorted((ROOT / "notebooks" / "solutions").glob("*.py")):
        names = [n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)]
        for name in set(names) & set(check.CHECKS):
            assert name not in defined, f"{name} is solved in {defined.get(name)} and {path.name}"
            defined[name] = path.name
        try:
            check.use_solutions(path)
            for name in set(names) & set(check.CHECKS):
                assert check.CHECKS[name](None, quiet=True)  # raises SolutionFailed when it fails
        finally:
            check.use_solutions(None)
    assert sorted(defined) == sorted(check.CHECKS)
