"""Samplers: DDPM ancestral (Ho et al. 2020, Alg. 2) and DDIM (Song et al. 2021, Eq. 12), at any
S <= T steps on the DDIM sub-sequence t_i = i * (T // S), visited from high to low.

Both run on the schedule respaced to those steps (Improved DDPM, Sec. 4): alpha_bar is kept, the
betas are recomputed from it, and alpha_bar_prev = 1 at the last step. The model is always
called with the original timestep indices. All randomness comes from `generator`: one
torch.Generator, or one per image (then every image is independent of the batch it is sampled in).
"""
import math

import torch

from core.diffusion import Coefs, p_from_coefs, split_output, step_coefs
from core.distributions import randn
from core.parameterizations import PREDICTIONS
from core.registry import lookup
from core.schedules import Schedule, respace, spaced_timesteps


def ddim_mean_variance(c: Coefs, model_output, xt, *, prediction: str, variance: str, eta: float = 0.0,
                       clip_x0: bool = False):
    """DDIM's x_{t-1} | x_t, Song et al. Eq. 12: mean = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - s^2) eps,
    variance s^2 = eta^2 (1 - ab_prev)/(1 - ab) (1 - ab/ab_prev). Returns (mean, variance, x0)."""
    pred = lookup(PREDICTIONS, prediction, "prediction")
    out, _ = split_output(model_output, xt, variance)
    x0 = pred.to_x0(xt, out, c)
    var = eta**2 * (c.b_prev / c.b) ** 2 * (1 - (c.a / c.a_prev) ** 2)
    d = _sqrt(c.b_prev**2 - var)  # the coefficient of eps
    if clip_x0:
        # eps is re-derived from the clipped x0, eps = (x_t - a x0) / b, so the mean is linear in (x0, x_t)
        x0 = x0.clamp(-1, 1)
        return (c.a_prev - d * c.a / c.b) * x0 + (d / c.b) * xt, var, x0
    return c.a_prev * x0 + d * pred.to_eps(xt, out, c), var, x0


def ddpm(model, x, plan, *, prediction, variance, eta, clip_x0, generator, callback):
    """Ancestral sampling, Ho et al. Alg. 2: x_{t-1} = mu(x_t) + sigma_t z, with z = 0 at the last step."""
    for i, (t, c) in enumerate(plan):
        p = p_from_coefs(c, model(x, t), x, prediction=prediction, variance=variance, clip_x0=clip_x0)
        x = p["mean"]
        if i < len(plan) - 1:
            x = x + _exp(0.5 * p["log_variance"]) * _noise(x, generator)
        if callback is not None:
            callback(i, t, x, p["x0"])
    return x


def ddim(model, x, plan, *, prediction, variance, eta, clip_x0, generator, callback):
    """DDIM, Song et al. Eq. 12; eta = 0 is deterministic, eta = 1 matches DDPM with fixed_small."""
    for i, (t, c) in enumerate(plan):
        x, var, x0 = ddim_mean_variance(c, model(x, t), x, prediction=prediction, variance=variance,
                                        eta=eta, clip_x0=clip_x0)
        if eta > 0 and i < len(plan) - 1:
            x = x + _sqrt(var) * _noise(x, generator)
        if callback is not None:
            callback(i, t, x, x0)
    return x


SAMPLERS = {"ddpm": ddpm, "ddim": ddim}


def _sqrt(v):
    """sqrt(max(v, 0)) of a float coefficient or a coefficient tensor."""
    return v.clamp(min=0).sqrt() if torch.is_tensor(v) else math.sqrt(max(v, 0.0))


def _exp(v):
    return v.exp() if torch.is_tensor(v) else math.exp(v)


def _noise(x, generator):
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)


def plan(schedule: Schedule, steps: int, batch: int, device) -> list[tuple[torch.Tensor, Coefs]]:
    """(model timestep tensor, coefficients) per step, from high t to low, computed once per call."""
    kept = spaced_timesteps(schedule.T, steps)
    spaced = respace(schedule, kept)
    per_step = step_coefs(spaced)
    return [(torch.full((batch,), int(spaced.timesteps[j]), device=device, dtype=torch.long), per_step[j])
            for j in reversed(range(len(kept)))]


@torch.no_grad()
def sample(model, schedule: Schedule, shape, *, sampler: str, steps: int, eta: float = 0.0, prediction: str,
           variance: str, generator: torch.Generator | None = None, x_T=None, clip_x0: bool = False,
           device=None, callback=None):
    """Draw samples of `shape` (B, C, H, W); returns the final x0.

    `model(x, t)` takes t as a LongTensor of original indices. `x_T` defaults to N(0, I) drawn from
    `generator` (a torch.Generator, or a list of B of them, one per image), which must live on the
    sampling device. `callback(i, t, x, x0)` runs after step i.
    """
    loop = lookup(SAMPLERS, sampler, "sampler")
    lookup(PREDICTIONS, prediction, "prediction")
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    if sampler == "ddpm" and eta != 0.0:
        raise ValueError(f"eta applies to sampler 'ddim' only; got eta={eta!r} with sampler 'ddpm'")
    if device is None:
        device = x_T.device if x_T is not None else next(iter(model.parameters())).device
    device = torch.device(device)
    gens = [generator] if isinstance(generator, torch.Generator) else list(generator or [])
    if any(g.device.type != device.type for g in gens):
        raise ValueError(f"generator is on {gens[0].device}, but sampling runs on {device}")
    x = _noise(torch.empty(shape, device=device), generator) if x_T is None else x_T.to(device)
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"shape mismatch: x_T has shape {tuple(x.shape)}, expected {tuple(shape)}")
    return loop(model, x, plan(schedule, steps, x.shape[0], device), prediction=prediction, variance=variance,
                eta=float(eta), clip_x0=clip_x0, generator=generator, callback=callback)
