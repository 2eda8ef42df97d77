"""Schedule math, cross-checked against diffusers' DDPMScheduler (an independent implementation)."""

import math

import pytest
import torch

from ddpm_lib.schedules import cosine, linear, make_schedule

diffusers = pytest.importorskip("diffusers")


def diffusers_scheduler(name: str, timesteps: int):
    if name == "linear":
        scale = 1000 / timesteps
        return diffusers.DDPMScheduler(num_train_timesteps=timesteps, beta_schedule="linear",
                                       beta_start=1e-4 * scale, beta_end=0.02 * scale)
    return diffusers.DDPMScheduler(num_train_timesteps=timesteps, beta_schedule="squaredcos_cap_v2")


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("timesteps", [1000, 200, 50])
def test_betas_and_alpha_bar_match_diffusers(name, timesteps):
    ours = make_schedule(name, timesteps)
    ref = diffusers_scheduler(name, timesteps)
    torch.testing.assert_close(ours.betas.float(), ref.betas, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.alpha_bar.float(), ref.alphas_cumprod, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_posterior_variance_matches_diffusers(name):
    ours = make_schedule(name, 1000)
    ref = diffusers_scheduler(name, 1000)
    theirs = torch.stack([ref._get_variance(t) for t in range(1000)])
    # diffusers clamps the t=0 variance (exactly 0) at 1e-20
    torch.testing.assert_close(ours.posterior_variance[1:].float(), theirs[1:], atol=1e-6, rtol=1e-5)
    assert ours.posterior_variance[0] == 0


def test_linear_published_values():
    s = linear(1000)
    assert s.betas[0].item() == pytest.approx(1e-4)
    assert s.betas[-1].item() == pytest.approx(0.02)
    # Ho et al. 2020: alpha_bar_T ~ 4e-5 (sec. 4, "L_T ~ 1e-5 bits per dim")
    assert 3e-5 < s.alpha_bar[-1].item() < 5e-5


def test_linear_rescaling_keeps_total_noise():
    assert linear(100).alpha_bar[-1].item() == pytest.approx(linear(1000).alpha_bar[-1].item(), rel=0.5)


def test_cosine_closed_form_and_clipping():
    T, s_off = 1000, 0.008
    sched = cosine(T, s_off)
    f = lambda t: math.cos((t / T + s_off) / (1 + s_off) * math.pi / 2) ** 2
    for t in (0, 10, 500, 900):  # alpha_bar_t (paper's t+1) = f(t+1) / f(0) away from the clip
        assert sched.alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert sched.betas.max().item() == pytest.approx(0.999)  # clipped at the last step
    assert sched.betas[0].item() < 1e-4  # small at the start...
    assert sched.betas[0].item() > 10 * cosine(T, 0.0).betas[0].item()  # ...but s keeps it from vanishing


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("timesteps", [1000, 10])
def test_every_term_finite_and_monotone(name, timesteps):
    s = make_schedule(name, timesteps)
    for term in ("betas", "alpha_bar", "alpha_bar_prev", "sqrt_recip_alpha_bar", "sqrt_recipm1_alpha_bar",
                 "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1",
                 "posterior_mean_coef2", "log_snr"):
        value = getattr(s, term)
        assert value.shape == (timesteps,), term
        assert torch.isfinite(value).all(), term
    assert (s.alpha_bar.diff() < 0).all()
    assert (s.log_snr.diff() < 0).all()
    assert s.alpha_bar[-1] < 0.01 and s.alpha_bar[0] > 0.9
    assert s.alpha_bar_prev[0] == 1


def test_posterior_mean_of_noiseless_x_t():
    """With x_t = sqrt(abar_t) x_0 exactly, coef1 x_0 + coef2 x_t = sqrt(abar_{t-1}) x_0
    (expand coef1, coef2 and use beta_t + alpha_t (1 - abar_{t-1}) = 1 - abar_t)."""
    s = cosine(100)
    x0 = 0.7
    mean = s.posterior_mean_coef1 * x0 + s.posterior_mean_coef2 * (s.sqrt_alpha_bar * x0)
    torch.testing.assert_close(mean, s.alpha_bar_prev.sqrt() * x0)


def test_gather_shapes_and_device():
    s = linear(1000)
    t = torch.tensor([0, 999, 5])
    out = s.gather("sqrt_alpha_bar", t)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    assert out[1].item() == pytest.approx(s.sqrt_alpha_bar[999].item(), rel=1e-6)
    assert s.gather("betas", t, ndim=2).shape == (3, 1)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="cosine"):
        make_schedule("quadratic", 10)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_zero_terminal_snr_matches_diffusers(name):
    """Lin et al. 2024's rescaling: the last step leaves no signal, the first keeps its value."""
    from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

    plain = make_schedule(name, 1000)
    ours = make_schedule(name, 1000, zero_terminal=True)
    theirs = rescale_zero_terminal_snr(plain.betas.clone())
    torch.testing.assert_close(ours.betas, theirs.to(torch.float64), atol=1e-9, rtol=1e-7)
    assert ours.alpha_bar[-1].item() == 0.0 and ours.snr[-1].item() == 0.0
    assert ours.alpha_bar[0].item() == pytest.approx(plain.alpha_bar[0].item(), rel=1e-12)
    assert torch.all(ours.alpha_bar[:-1] > 0) and torch.all(torch.diff(ours.alpha_bar) < 0)


def test_schedule_of_reads_the_config():
    from ddpm_lib.config import load_config
    from ddpm_lib.schedules import schedule_of

    cfg = load_config("digits", ["diffusion.timesteps=50", "diffusion.prediction=v", "diffusion.zero_terminal_snr=true"])
    s = schedule_of(cfg)
    assert s.timesteps == 50 and s.alpha_bar[-1].item() == 0.0
    assert schedule_of(load_config("digits")).alpha_bar[-1].item() > 0
