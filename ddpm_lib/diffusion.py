"""Diffusion: forward noising, the training loss, and the DDPM and DDIM samplers.

Shapes: images ``x`` are ``(B, C, H, W)`` in [-1, 1]; steps ``t`` are int64 ``(B,)``
in ``[0, T)`` (index ``t`` is the paper's step ``t + 1``, see ``schedules``); class
labels ``y`` are int64 ``(B,)`` in ``[0, K)``, and the model's extra index ``K`` is
the *null class*: "no label", used for unconditional prediction.

The model predicts the noise: ``eps_theta(x_t, t, y)`` (Ho et al. 2020, sec. 3.2).

Classifier-free guidance (Ho & Salimans 2022) trains one network both with labels
and, with probability ``p_uncond``, with the null class; at sampling time::

    eps = eps(x_t, t, null) + s * (eps(x_t, t, y) - eps(x_t, t, null))

``s = guidance_scale``: 1 is plain conditional sampling, 0 unconditional, and > 1
trades diversity for fidelity. (The paper writes ``(1 + w) eps_c - w eps_u``: w = s - 1.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .schedules import NoiseSchedule


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) by reparameterisation (Ho eq. 4)::

        x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I)
    """
    return schedule.gather("sqrt_alpha_bar", t) * x0 + schedule.gather("sqrt_one_minus_alpha_bar", t) * noise


def predict_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Invert eq. 4 for x_0 given a noise estimate: x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
    return schedule.gather("sqrt_recip_alpha_bar", t) * x_t - schedule.gather("sqrt_recipm1_alpha_bar", t) * eps


def drop_labels(y: torch.Tensor, p_uncond: float, null_class: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by ``null_class`` with probability ``p_uncond`` (CFG training)."""
    if p_uncond <= 0:
        return y
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p_uncond
    return torch.where(drop, torch.full_like(y, null_class), y)


def sample_timesteps(n: int, timesteps: int, how: str = "uniform", device=None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` training steps t in ``[0, T)``, int64 ``(n,)``.

    ``"uniform"``: every step equally often (Ho et al. 2020). ``"logit_normal"``: t / T is
    sigmoid(u) with u ~ N(0, 1) (Esser et al. 2024, sec. 3.1), which draws the middle of the
    process, where the loss is neither trivial nor hopeless, more often than either end.
    """
    if how == "uniform":
        return torch.randint(0, timesteps, (n,), device=device, generator=generator)
    if how == "logit_normal":
        u = torch.randn((n,), device=device, generator=generator).sigmoid()
        return (u * timesteps).long().clamp(max=timesteps - 1)
    raise ValueError(f"unknown t_sampling {how!r}; choose uniform or logit_normal")


def v_target(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022, sec. 4)."""
    return schedule.gather("sqrt_alpha_bar", t) * noise - schedule.gather("sqrt_one_minus_alpha_bar", t) * x0


def eps_and_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor,
               prediction: str = "eps") -> tuple[torch.Tensor, torch.Tensor]:
    """The network's ``output`` as (eps, x_0) estimates, for either parameterisation::

        eps:  x_0 = (x_t - sqrt(1 - a) eps) / sqrt(a)
        v:    x_0 = sqrt(a) x_t - sqrt(1 - a) v,   eps = sqrt(a) v + sqrt(1 - a) x_t

    with a = alpha_bar_t. The v form stays finite where a = 0 (zero terminal SNR).
    """
    if prediction == "eps":
        return output, predict_x0(schedule, x_t, t, output)
    if prediction != "v":
        raise ValueError(f"unknown prediction {prediction!r}; choose eps or v")
    a, b = schedule.gather("sqrt_alpha_bar", t), schedule.gather("sqrt_one_minus_alpha_bar", t)
    return a * output + b * x_t, a * x_t - b * output


def loss_weights(schedule: NoiseSchedule, t: torch.Tensor, prediction: str = "eps", weighting: str = "uniform",
                 gamma: float = 5.0) -> torch.Tensor | None:
    """Per-sample weights (B,) of the squared error, or None for L_simple's uniform weight.

    ``"min_snr"`` (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
    Strategy"): weight the x_0 error by min(SNR_t, gamma), so the nearly clean steps stop
    dominating. An eps error is an x_0 error times SNR, a v error one times SNR + 1, so the
    weight on the network's own error is min(SNR, gamma) / SNR for eps and
    min(SNR, gamma) / (SNR + 1) for v.
    """
    if weighting == "uniform":
        return None
    if weighting != "min_snr":
        raise ValueError(f"unknown loss_weight {weighting!r}; choose uniform or min_snr")
    snr = schedule.gather("snr", t, ndim=1)
    capped = snr.clamp(max=gamma)
    return capped / snr if prediction == "eps" else capped / (snr + 1)


def diffusion_loss(
    model: nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    y: torch.Tensor,
    null_class: int,
    p_uncond: float = 0.1,
    generator: torch.Generator | None = None,
    prediction: str = "eps",
    weighting: str = "uniform",
    gamma: float = 5.0,
    t_sampling: str = "uniform",
) -> torch.Tensor:
    """The simplified DDPM objective (Ho eq. 14) with label dropout, a scalar::

        L = E_{t, x_0, eps} || eps - eps_theta(x_t, t, y') ||^2

    t is uniform over every step ``[0, T)`` (t = 0 included), eps ~ N(0, I), and
    y' is y with each label dropped to the null class with probability p_uncond.
    The defaults are exactly that; the levers change one part each: ``prediction="v"``
    regresses v (:func:`v_target`) instead of eps, ``weighting="min_snr"`` weights each
    sample's error (:func:`loss_weights`), ``t_sampling`` draws t (:func:`sample_timesteps`).
    """
    t = sample_timesteps(x0.shape[0], schedule.timesteps, t_sampling, x0.device, generator)
    noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    x_t = q_sample(schedule, x0, t, noise)
    y_in = drop_labels(y, p_uncond, null_class, generator)
    target = noise if prediction == "eps" else v_target(schedule, x0, t, noise)
    output = model(x_t, t, y_in).float()
    weights = loss_weights(schedule, t, prediction, weighting, gamma)
    if weights is None:
        return F.mse_loss(output, target.float())
    return (weights * ((output - target.float()) ** 2).flatten(1).mean(1)).mean()


def guided_eps(
    model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor, null_class: int, guidance_scale: float
) -> torch.Tensor:
    """Noise estimate with classifier-free guidance (module docstring). One batched
    forward pass of 2B images when guidance is on, one of B when ``s`` is 1 or 0."""
    if guidance_scale == 1.0:
        return model(x_t, t, y)
    if guidance_scale == 0.0:  # the unconditional model alone
        return model(x_t, t, torch.full_like(y, null_class))
    eps_both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_class)]))
    eps_cond, eps_uncond = eps_both.chunk(2)
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def ddpm_step(
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    t: int,
    eps: torch.Tensor,
    noise: torch.Tensor,
    clip_x0: bool = True,
    x0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral step x_t -> x_{t-1} (Ho eq. 11, via the posterior of eq. 6-7).

    x_0 is predicted from eps, or taken as given in ``x0`` (a v-prediction's estimate,
    :func:`eps_and_x0`), and clipped to [-1, 1] if ``clip_x0``, then::

        x_{t-1} = coef1_t x_0 + coef2_t x_t + sigma_t z,   sigma_t^2 = beta_tilde_t

    Without clipping this equals eq. 11, ``1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps)
    + sigma_t z``. No noise is added at t = 0. Returns ``(x_{t-1}, x0_pred)``.
    """
    tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
    x0 = predict_x0(schedule, x_t, tt, eps) if x0 is None else x0
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    mean = schedule.gather("posterior_mean_coef1", tt) * x0 + schedule.gather("posterior_mean_coef2", tt) * x_t
    if t == 0:
        return mean, x0
    return mean + schedule.gather("posterior_variance", tt).sqrt() * noise, x0


def ddim_step(
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    t: int,
    t_prev: int,
    eps: torch.Tensor,
    noise: torch.Tensor | None,
    eta: float = 0.0,
    clip_x0: bool = True,
    x0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12), with ``t_prev < t``;
    ``t_prev = -1`` means "to the clean image" (alpha_bar = 1)::

        x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z
        sigma  = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)     (eq. 16)

    with a = alpha_bar. eta = 0 is the deterministic DDIM; eta = 1 with every step
    (t_prev = t - 1) is exactly the DDPM ancestral step. When x0 is clipped, eps is
    recomputed from the clipped x0 so the two stay consistent. ``x0``, when given, is the
    model's own x_0 estimate (v-prediction) and replaces the one from eps. Returns ``(x_prev, x0_pred)``.
    """
    b = x_t.shape[0]
    tt = torch.full((b,), t, device=x_t.device, dtype=torch.long)
    a_t = schedule.gather("alpha_bar", tt)
    a_prev = schedule.gather("alpha_bar", torch.full_like(tt, t_prev)) if t_prev >= 0 else torch.ones_like(a_t)
    x0 = predict_x0(schedule, x_t, tt, eps) if x0 is None else x0
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    x_prev = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
    if eta > 0 and noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev, x0


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """``steps`` evenly spaced steps from T - 1 down, "trailing" spacing (Lin et al. 2024,
    "Common Diffusion Noise Schedules and Sample Steps are Flawed"): the first step is
    always T - 1, where the model sees pure noise. E.g. T=1000, steps=4 -> [999, 749, 499, 249]."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in [1, {timesteps}], got {steps}")
    return [round(timesteps - i * timesteps / steps) - 1 for i in range(steps)]


@dataclass
class SampleResult:
    """Output of a sampler: final images ``x`` (B, C, H, W) in [-1, 1], and, when asked for,
    a trajectory: ``steps[i]`` is a step t, ``xt[i]`` the image x_t *entering* that step and
    ``x0[i]`` the model's prediction of x_0 there (both (B, C, H, W), on the CPU)."""

    x: torch.Tensor
    steps: list[int] = field(default_factory=list)
    xt: list[torch.Tensor] = field(default_factory=list)
    x0: list[torch.Tensor] = field(default_factory=list)


@torch.no_grad()
def sample(
    model: nn.Module,
    schedule: NoiseSchedule,
    y: torch.Tensor,
    shape: tuple[int, int, int],
    null_class: int,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    clip_x0: bool = True,
    record: Iterable[int] | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    prediction: str = "eps",
) -> SampleResult:
    """Generate one image per label in ``y`` (shape ``(B,)``), each of ``shape`` (C, H, W).

    ``sampler="ddpm"`` runs the full ancestral chain of T steps (``steps`` is ignored);
    ``"ddim"`` runs ``steps`` DDIM steps with the given ``eta``. All randomness comes
    from ``generator``, so a fixed seed gives the same images and never touches the
    global (training) RNG. ``record`` lists the steps t whose x_t and predicted x_0
    are kept in the result; ``progress`` wraps the step iterator (e.g. ``tqdm``).
    ``prediction`` is what the network predicts (``cfg.diffusion.prediction``): eps or v.
    """
    device = y.device
    if sampler == "ddpm":
        ts = list(range(schedule.timesteps - 1, -1, -1))
    elif sampler == "ddim":
        ts = ddim_timesteps(schedule.timesteps, steps)
    else:
        raise ValueError(f"unknown sampler {sampler!r}; choose ddpm or ddim")
    keep = set(record or ())
    x = torch.randn((y.shape[0], *shape), generator=generator, device=device)
    result = SampleResult(x=x)
    was_training = model.training
    model.eval()
    for i in progress(range(len(ts))) if progress else range(len(ts)):
        t = ts[i]
        tt = torch.full((y.shape[0],), t, device=device, dtype=torch.long)
        out = guided_eps(model, x, tt, y, null_class, guidance_scale).float()  # guidance is linear: eps or v alike
        eps, x0_model = (out, None) if prediction == "eps" else eps_and_x0(schedule, x, tt, out, prediction)
        noisy = sampler == "ddpm" or eta > 0
        noise = torch.randn(x.shape, generator=generator, device=device) if noisy and t > 0 else None
        x_in = x
        if sampler == "ddpm":
            x, x0 = ddpm_step(schedule, x, t, eps, noise, clip_x0, x0=x0_model)
        else:
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            x, x0 = ddim_step(schedule, x, t, t_prev, eps, noise, eta, clip_x0, x0=x0_model)
        if t in keep:
            result.steps.append(t)
            result.xt.append(x_in.cpu())
            result.x0.append(x0.cpu())
    model.train(was_training)
    result.x = x.clamp(-1, 1)
    return result
