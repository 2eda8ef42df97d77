"""Forward noising, the loss, and both samplers (cross-checked step by step against diffusers)."""

import pytest
import torch
from torch import nn

from ddpm_lib.diffusion import (ddim_step, ddim_timesteps, ddpm_step, diffusion_loss, drop_labels, guided_eps,
                                predict_x0, q_sample, sample)
from ddpm_lib.schedules import cosine, linear

diffusers = pytest.importorskip("diffusers")


class LinearEps(nn.Module):
    """A fixed, deterministic stand-in for a trained network: eps = a x + b t/T + c y."""

    def __init__(self, null_class=3):
        super().__init__()
        self.null_class = null_class

    def forward(self, x, t, y):
        return 0.3 * x + 0.001 * t.float().view(-1, 1, 1, 1) - 0.1 * (y.float() - 1).view(-1, 1, 1, 1)


def with_float64_tables(ref, schedule):
    """Give a diffusers scheduler our float64 betas (checked equal to its own in test_schedules).

    diffusers derives beta_t as 1 - alpha_bar_t / alpha_bar_{t-1} from a float32 cumulative
    product, which loses ~3 digits where beta is ~1e-5 (the cosine schedule near t = 0); in
    float64 the two implementations of the *step* can be compared tightly."""
    ref.betas = schedule.betas.clone()
    ref.alphas = 1.0 - ref.betas
    ref.alphas_cumprod = torch.cumprod(ref.alphas, 0)
    ref.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return ref


def test_q_sample_statistics():
    s = cosine(1000)
    x0 = torch.full((20000, 1, 1, 1), 0.5)
    for step in (0, 300, 999):
        t = torch.full((20000,), step)
        x_t = q_sample(s, x0, t, torch.randn_like(x0))
        ab = s.alpha_bar[step].item()
        assert x_t.mean().item() == pytest.approx(ab**0.5 * 0.5, abs=0.02)
        assert x_t.var().item() == pytest.approx(1 - ab, abs=0.03)


def test_predict_x0_inverts_q_sample():
    s = linear(1000)
    x0, noise = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(predict_x0(s, q_sample(s, x0, t, noise), t, noise), x0, atol=1e-3, rtol=0)


def test_drop_labels_rate_and_null_value():
    y = torch.zeros(10000, dtype=torch.long)
    dropped = drop_labels(y, 0.25, null_class=7, generator=torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0, 7}
    assert (dropped == 7).float().mean().item() == pytest.approx(0.25, abs=0.02)
    assert torch.equal(drop_labels(y, 0.0, 7), y)


def test_loss_uses_all_timesteps_including_zero():
    seen = []

    class Spy(nn.Module):
        def forward(self, x, t, y):
            seen.append(t)
            return torch.zeros_like(x)

    s = linear(10)
    for _ in range(50):
        diffusion_loss(Spy(), s, torch.zeros(16, 1, 4, 4), torch.zeros(16, dtype=torch.long), null_class=1)
    assert set(torch.cat(seen).tolist()) == set(range(10))


def test_loss_of_zero_predictor_is_noise_variance():
    loss = diffusion_loss(lambda x, t, y: torch.zeros_like(x), cosine(100), torch.zeros(64, 3, 16, 16),
                          torch.zeros(64, dtype=torch.long), null_class=1)
    assert loss.item() == pytest.approx(1.0, abs=0.03)


def test_guidance_combines_conditional_and_unconditional():
    model = LinearEps(null_class=3)
    x, t, y = torch.randn(2, 1, 4, 4), torch.tensor([5, 6]), torch.tensor([0, 2])
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 3))
    torch.testing.assert_close(guided_eps(model, x, t, y, 3, 1.0), cond)
    torch.testing.assert_close(guided_eps(model, x, t, y, 3, 0.0), uncond)
    torch.testing.assert_close(guided_eps(model, x, t, y, 3, 3.0), uncond + 3 * (cond - uncond))


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("name,beta_schedule", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_ddpm_step_matches_diffusers(clip, name, beta_schedule):
    s = linear(1000) if name == "linear" else cosine(1000)
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, clip_sample=clip,
                                  variance_type="fixed_small")
    ref.set_timesteps(1000)
    with_float64_tables(ref, s)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for t in (999, 500, 37, 1, 0):
        eps = torch.randn_like(x)
        theirs = ref.step(eps, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        ours, _ = ddpm_step(s, x, t, eps, noise, clip_x0=clip)
        # our per-step tables are float32; near t = T they multiply x by 1/sqrt(alpha_bar) ~ 160
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_step_matches_diffusers(eta, clip):
    s = cosine(1000)
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=clip,
                                  timestep_spacing="trailing", set_alpha_to_one=True)
    ref.set_timesteps(20)
    with_float64_tables(ref, s)
    ours_ts = ddim_timesteps(1000, 20)
    assert ours_ts == ref.timesteps.tolist()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for i, t in enumerate(ours_ts):
        eps = 0.5 * x + 0.1
        theirs = ref.step(eps, t, x, eta=eta, use_clipped_model_output=True,
                          generator=torch.Generator().manual_seed(i)).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        t_prev = ours_ts[i + 1] if i + 1 < len(ours_ts) else -1
        ours, _ = ddim_step(s, x, t, t_prev, eps, noise, eta=eta, clip_x0=clip)
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)
        x = ours


def test_ddim_timesteps_trailing():
    assert ddim_timesteps(1000, 4) == [999, 749, 499, 249]
    assert ddim_timesteps(10, 10) == list(range(9, -1, -1))
    with pytest.raises(ValueError):
        ddim_timesteps(10, 11)


def test_ddim_eta1_all_steps_equals_ddpm_ancestral():
    """DDIM with eta = 1 over every step is the DDPM sampler (Song et al. 2021, sec. 4.1): same noise, same path;
    with the noise switched off, both follow the deterministic DDPM mean path."""
    s = cosine(50)
    model = LinearEps()
    y = torch.tensor([0, 1, 2])
    a = sample(model, s, y, (1, 4, 4), null_class=3, sampler="ddpm", generator=torch.Generator().manual_seed(0))
    b = sample(model, s, y, (1, 4, 4), null_class=3, sampler="ddim", steps=50, eta=1.0,
               generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.x, b.x, atol=1e-4, rtol=0)

    x = torch.randn(3, 1, 4, 4)
    x_ddpm, x_ddim = x.clone(), x.clone()
    for t in range(49, -1, -1):
        tt = torch.full((3,), t)
        x_ddpm, _ = ddpm_step(s, x_ddpm, t, model(x_ddpm, tt, y), torch.zeros_like(x))
        x_ddim, _ = ddim_step(s, x_ddim, t, t - 1, model(x_ddim, tt, y), None, eta=1.0)
        torch.testing.assert_close(x_ddim, x_ddpm, atol=1e-4, rtol=0)


def test_sample_is_seeded_and_leaves_global_rng_alone():
    s = cosine(100)
    model = LinearEps()
    y = torch.tensor([0, 1])
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = sample(model, s, y, (1, 4, 4), 3, sampler="ddim", steps=10, eta=0.5, guidance_scale=2.0,
               generator=torch.Generator().manual_seed(7))
    assert torch.equal(before, torch.get_rng_state())
    b = sample(model, s, y, (1, 4, 4), 3, sampler="ddim", steps=10, eta=0.5, guidance_scale=2.0,
               generator=torch.Generator().manual_seed(7))
    c = sample(model, s, y, (1, 4, 4), 3, sampler="ddim", steps=10, eta=0.5, guidance_scale=2.0,
               generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert a.x.shape == (2, 1, 4, 4) and a.x.abs().max() <= 1


def test_trajectory_recording():
    s = cosine(100)
    r = sample(LinearEps(), s, torch.tensor([0, 1]), (1, 4, 4), 3, sampler="ddim", steps=10, record=[99, 49, 9],
               generator=torch.Generator().manual_seed(0))
    assert r.steps == [99, 49, 9]
    assert len(r.xt) == len(r.x0) == 3 and r.xt[0].shape == (2, 1, 4, 4)
    assert r.xt[0].std() > 0.5  # pure noise entering the first step
    assert r.x0[-1].abs().max() <= 1


def test_unknown_sampler():
    with pytest.raises(ValueError, match="ddpm or ddim"):
        sample(LinearEps(), cosine(10), torch.tensor([0]), (1, 4, 4), 3, sampler="euler")


def test_diffusion_loss_decreases_on_a_fixed_batch():
    from ddpm_lib.unet import ConditionalUNet

    torch.manual_seed(0)
    model = ConditionalUNet(1, 2, 8, base_channels=16, channel_mult=(1, 2), attn_resolutions=())
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    s = cosine(100)
    x0 = torch.rand(16, 1, 8, 8) * 2 - 1
    y = torch.randint(0, 2, (16,))

    def loss_with_fixed_noise():
        return diffusion_loss(model, s, x0, y, null_class=2, generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        before = loss_with_fixed_noise().item()
    for _ in range(40):
        loss = loss_with_fixed_noise()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * before


# ---------------------------------------------------------------- the levers: v-prediction, min-SNR, t sampling

def test_v_target_and_conversions_match_diffusers():
    """v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022), as diffusers' get_velocity; and
    eps_and_x0 turns a perfect v back into the true eps and x0, also where alpha_bar = 0."""
    from ddpm_lib.diffusion import eps_and_x0, v_target
    from ddpm_lib.schedules import make_schedule

    s = cosine(1000)
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    with_float64_tables(ref, s)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    theirs = ref.get_velocity(x0.double(), noise.double(), t).float()
    torch.testing.assert_close(v_target(s, x0, t, noise), theirs, atol=1e-5, rtol=1e-5)
    for schedule in (s, make_schedule("linear", 100, zero_terminal=True)):
        t = torch.tensor([0, 1, schedule.timesteps // 2, schedule.timesteps - 1])
        x_t = q_sample(schedule, x0, t, noise)
        eps, x0_hat = eps_and_x0(schedule, x_t, t, v_target(schedule, x0, t, noise), "v")
        torch.testing.assert_close(eps, noise, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=1e-5)
    eps, x0_hat = eps_and_x0(s, x_t, t, noise, "eps")
    assert eps is noise and torch.equal(x0_hat, predict_x0(s, x_t, t, noise))


def test_ddim_step_with_v_prediction_matches_diffusers():
    """A whole DDIM chain fed a v-predicting stand-in, against DDIMScheduler(prediction_type="v_prediction")."""
    from ddpm_lib.diffusion import eps_and_x0

    s = cosine(1000)
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                                  timestep_spacing="trailing", set_alpha_to_one=True, prediction_type="v_prediction")
    ref.set_timesteps(10)
    with_float64_tables(ref, s)
    ts = ddim_timesteps(1000, 10)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for i, t in enumerate(ts):
        v = 0.4 * x - 0.05
        theirs = ref.step(v, t, x, eta=0.0).prev_sample
        tt = torch.full((2,), t)
        eps, x0 = eps_and_x0(s, x, tt, v, "v")
        ours, _ = ddim_step(s, x, t, ts[i + 1] if i + 1 < len(ts) else -1, eps, None, eta=0.0, clip_x0=False, x0=x0)
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)
        x = ours


def test_min_snr_weights_match_the_paper():
    """Hang et al. 2023: min(SNR, gamma) / SNR for eps, / (SNR + 1) for v, from diffusers' compute_snr."""
    from diffusers.training_utils import compute_snr

    from ddpm_lib.diffusion import loss_weights

    s = cosine(1000)
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    with_float64_tables(ref, s)
    t = torch.tensor([0, 100, 400, 600, 999])
    snr = compute_snr(ref, t).float()
    torch.testing.assert_close(loss_weights(s, t, "eps", "min_snr", 5.0), snr.clamp(max=5) / snr, rtol=1e-4, atol=0)
    torch.testing.assert_close(loss_weights(s, t, "v", "min_snr", 5.0), snr.clamp(max=5) / (snr + 1), rtol=1e-4,
                               atol=0)
    assert loss_weights(s, t) is None
    # low noise (high SNR) is down-weighted, high noise keeps weight 1 under eps
    w = loss_weights(s, t, "eps", "min_snr", 5.0)
    assert w[0] < 1e-3 and w[-1] == pytest.approx(1.0)


def test_logit_normal_draws_the_middle_more():
    from ddpm_lib.diffusion import sample_timesteps

    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(100_000, 1000, "logit_normal", generator=g)
    assert t.min() >= 0 and t.max() <= 999 and t.dtype == torch.long
    middle = ((t >= 400) & (t < 600)).float().mean().item()
    ends = ((t < 100) | (t >= 900)).float().mean().item()
    # u = sigmoid(z), z ~ N(0, 1): P(0.4 <= u < 0.6) = P(|z| < logit 0.6) = 0.315, P(u < 0.1 or u >= 0.9) = 0.028
    assert middle == pytest.approx(0.315, abs=0.005) and ends == pytest.approx(0.028, abs=0.003)
    uniform = sample_timesteps(100_000, 1000, "uniform", generator=g)
    assert ((uniform >= 400) & (uniform < 600)).float().mean().item() == pytest.approx(0.2, abs=0.005)
    with pytest.raises(ValueError, match="t_sampling"):
        sample_timesteps(4, 1000, "beta")


def test_weighted_loss_of_a_perfect_v_model_is_zero_and_defaults_are_unchanged():
    """With prediction="v", a network that returns the true v has zero loss under every weighting;
    the default options give exactly L_simple, draw for draw."""
    s = cosine(100)

    class Oracle(nn.Module):
        def forward(self, x_t, t, y):  # knows x0 = 0.5 everywhere, so v follows from x_t
            a, b = s.gather("sqrt_alpha_bar", t), s.gather("sqrt_one_minus_alpha_bar", t)
            noise = (x_t - a * 0.5) / b
            return a * noise - b * 0.5

    x0 = torch.full((8, 1, 4, 4), 0.5)
    y = torch.zeros(8, dtype=torch.long)
    for weighting in ("uniform", "min_snr"):
        loss = diffusion_loss(Oracle(), s, x0, y, null_class=1, p_uncond=0.0, prediction="v", weighting=weighting,
                              generator=torch.Generator().manual_seed(0))
        assert loss.item() < 1e-8
    model = LinearEps()
    plain = diffusion_loss(model, s, x0, y, 3, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 100, (8,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    y_in = drop_labels(y, 0.1, 3, g)
    by_hand = torch.nn.functional.mse_loss(model(q_sample(s, x0, t, noise), t, y_in), noise)
    assert plain.item() == by_hand.item()


def test_v_sampler_on_zero_terminal_snr_stays_finite():
    from ddpm_lib.schedules import make_schedule

    s = make_schedule("linear", 50, zero_terminal=True)
    y = torch.tensor([0, 1, 2])
    for sampler in ("ddpm", "ddim"):
        out = sample(LinearEps(), s, y, (1, 4, 4), null_class=3, sampler=sampler, steps=10, eta=0.5,
                     guidance_scale=2.0, generator=torch.Generator().manual_seed(0), prediction="v")
        assert torch.isfinite(out.x).all()
    # the same network read as an eps predictor divides by sqrt(alpha_bar_T) = 0 at the first step
    with pytest.raises(AssertionError):
        out = sample(LinearEps(), s, y, (1, 4, 4), null_class=3, sampler="ddim", steps=10, clip_x0=False,
                     generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(out.x).all()
