"""Forward process q, true posterior q(x_{t-1}|x_t,x0), and the model's p(x_{t-1}|x_t).

Equations refer to Ho et al. 2020 (DDPM) and Nichol & Dhariwal 2021 (Improved DDPM).
"""
from typing import NamedTuple

import torch

from core.parameterizations import PREDICTIONS
from core.registry import lookup
from core.schedules import Schedule


class Coefs(NamedTuple):
    """Schedule values at some t: 0-dim float64 tensors for an int t, (B, 1, ..., 1) tensors in the
    data's dtype for a per-example LongTensor t, or Python floats (`step_coefs`, for samplers)."""

    a: torch.Tensor  # sqrt(alpha_bar_t)
    b: torch.Tensor  # sqrt(1 - alpha_bar_t)
    a_prev: torch.Tensor  # sqrt(alpha_bar_{t-1}); 1 at t = 0
    b_prev: torch.Tensor  # sqrt(1 - alpha_bar_{t-1}); 0 at t = 0
    mean_x0: torch.Tensor  # posterior mean coefficients (Eq. 7)
    mean_xt: torch.Tensor
    var_small: torch.Tensor  # beta_tilde_t
    log_var_small: torch.Tensor  # log beta_tilde_t, clipped at t = 0
    log_var_large: torch.Tensor  # log beta_t, with beta_tilde_1 at t = 0
    log_beta: torch.Tensor


def _table(s: Schedule) -> Coefs:
    return Coefs(
        a=s.alphas_cumprod.sqrt(), b=(1 - s.alphas_cumprod).sqrt(),
        a_prev=s.alphas_cumprod_prev.sqrt(), b_prev=(1 - s.alphas_cumprod_prev).sqrt(),
        mean_x0=s.posterior_mean_coef1, mean_xt=s.posterior_mean_coef2,
        var_small=s.posterior_variance, log_var_small=s.posterior_log_variance_clipped,
        log_var_large=s.log_variance_large, log_beta=s.log_betas,
    )


def coefs(schedule: Schedule, t, like: torch.Tensor | None = None) -> Coefs:
    """Gather every coefficient at `t` (int, or LongTensor of shape (B,) with `like` of shape (B, ...))."""
    table = _table(schedule)
    if isinstance(t, int):
        return Coefs(*(col[t] for col in table))
    if like is None or t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must have shape (B,) matching x's batch; got t {tuple(t.shape)}, "
                         f"x {None if like is None else tuple(like.shape)}")
    view = (-1,) + (1,) * (like.ndim - 1)
    return Coefs(*(col.to(like.device)[t].to(like.dtype).view(view) for col in table))


def step_coefs(schedule: Schedule) -> list[Coefs]:
    """Per-index coefficients for every position of `schedule` as Python floats (float64), computed
    once per sampling call, so a sampler step does no tensor work on scalars."""
    table = [col.tolist() for col in _table(schedule)]
    return [Coefs(*(col[i] for col in table)) for i in range(schedule.T)]


def q_sample(schedule: Schedule, x0, t, noise):
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps  (Eq. 4)."""
    _check_same_shape(x0=x0, noise=noise)
    c = coefs(schedule, t, like=x0)
    return c.a * x0 + c.b * noise


def q_posterior(schedule: Schedule, x0, xt, t):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0)  (Eqs. 6-7)."""
    _check_same_shape(x0=x0, xt=xt)
    c = coefs(schedule, t, like=xt)
    return posterior_mean(c, x0, xt), c.var_small.expand_as(xt), c.log_var_small.expand_as(xt)


def posterior_mean(c: Coefs, x0, xt):
    """The mean of q(x_{t-1} | x_t, x0) from gathered coefficients (Ho et al. Eq. 7)."""
    return c.mean_x0 * x0 + c.mean_xt * xt


def fixed_small(c: Coefs, v):
    """sigma_t^2 = beta_tilde_t (DDPM's lower bound on the reverse variance)."""
    return c.log_var_small


def fixed_large(c: Coefs, v):
    """sigma_t^2 = beta_t (DDPM's upper bound), with beta_tilde_1 at t = 0 as Improved DDPM does."""
    return c.log_var_large


def learned_range(c: Coefs, v):
    """Improved DDPM Eq. 15: log sigma^2 = frac log beta_t + (1 - frac) log beta_tilde_t, frac = (v+1)/2.
    v is the model's extra output channels; it is not clamped, exactly as in Improved DDPM."""
    frac = (v + 1) / 2
    return frac * c.log_beta + (1 - frac) * c.log_var_small


VARIANCES = {"fixed_small": fixed_small, "fixed_large": fixed_large, "learned_range": learned_range}
LEARNED = {"learned_range"}


def out_channels(channels: int, variance: str) -> int:
    """How many channels a model must emit: twice the image's for a learned variance."""
    lookup(VARIANCES, variance, "variance")
    return channels * (2 if variance in LEARNED else 1)


def split_output(model_output, xt, variance: str):
    """(mean part, variance part or None) of a model output, with its shape checked against xt."""
    want = (xt.shape[0], out_channels(xt.shape[1], variance), *xt.shape[2:])
    if tuple(model_output.shape) != want:
        raise ValueError(f"model output has shape {tuple(model_output.shape)}, expected {want} "
                         f"for variance {variance!r} and x of shape {tuple(xt.shape)}")
    if variance in LEARNED:
        return model_output.split(xt.shape[1], dim=1)
    return model_output, None


class Denoised(NamedTuple):
    """What a denoiser makes of one model call at x_t."""

    x0: torch.Tensor  # the predicted x0, clipped to [-1, 1] with clip_x0
    out: torch.Tensor  # the model's prediction channels (eps, x0 or v, per `prediction`)
    v: torch.Tensor | None  # its variance channels for a learned variance, else None


def denoise(c: Coefs, model_output, xt, *, prediction: str, variance: str, clip_x0: bool = False) -> Denoised:
    """The one "predict x0, then clip" step: x0_hat = to_x0(x_t, out) (eps: (x_t - sqrt(1 - alpha_bar) eps) /
    sqrt(alpha_bar), Ho et al. Eq. 15; v: Salimans & Ho 2022, Sec. 4), clamped to [-1, 1] with `clip_x0`
    (Ho et al. Sec. 3.3; improved-diffusion's `clip_denoised`)."""
    pred = lookup(PREDICTIONS, prediction, "prediction")
    out, v = split_output(model_output, xt, variance)
    x0 = pred.to_x0(xt, out, c)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    return Denoised(x0, out, v)


def denoiser(model, *, prediction: str, variance: str, clip_x0: bool = False):
    """D(x_t, t, c) -> Denoised: `model(x_t, t)` turned into a model of the denoised image, the contract of
    k-diffusion's samplers (EDM's denoiser D_theta, Karras et al. 2022, Sec. 2). `t` is the LongTensor of original
    indices the model sees; `c` the coefficients at it."""
    lookup(PREDICTIONS, prediction, "prediction")
    lookup(VARIANCES, variance, "variance")

    def D(xt, t, c: Coefs) -> Denoised:
        return denoise(c, model(xt, t), xt, prediction=prediction, variance=variance, clip_x0=clip_x0)
    return D


def p_from_denoised(c: Coefs, d: Denoised, xt, variance: str):
    """p(x_{t-1} | x_t) = N(mu, sigma^2): mu is the posterior mean at the predicted x0 (Eq. 7 with x0_hat),
    sigma^2 per `variance` (VARIANCES)."""
    var_fn = lookup(VARIANCES, variance, "variance")
    return {"mean": posterior_mean(c, d.x0, xt), "log_variance": var_fn(c, d.v), "x0": d.x0, "out": d.out}


def p_from_coefs(c: Coefs, model_output, xt, *, prediction: str, variance: str, clip_x0: bool = False):
    """p(x_{t-1} | x_t) of one model output (`p_from_denoised` of `denoise`)."""
    d = denoise(c, model_output, xt, prediction=prediction, variance=variance, clip_x0=clip_x0)
    return p_from_denoised(c, d, xt, variance)


def p_mean_variance(schedule: Schedule, model_output, xt, t, *, prediction: str, variance: str,
                    clip_x0: bool = False):
    """Dict of `mean`, `variance`, `log_variance` (all shaped like xt) and `x0` of p(x_{t-1} | x_t)."""
    p = p_from_coefs(coefs(schedule, t, like=xt), model_output, xt,
                     prediction=prediction, variance=variance, clip_x0=clip_x0)
    log_var = p["log_variance"].expand_as(xt)
    return {"mean": p["mean"], "variance": log_var.exp(), "log_variance": log_var, "x0": p["x0"]}


def _check_same_shape(**tensors):
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch: {shapes}")
