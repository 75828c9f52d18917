"""Samplers: DDPM ancestral (Ho et al. 2020, Alg. 2), DDIM (Song et al. 2021, Eq. 12), DPM-Solver++(2M)
(Lu et al. 2022b, Alg. 2) and EDM's deterministic Heun (Karras et al. 2022, Alg. 1), at any S <= T
steps on the kept timesteps of a spacing (`core.schedules.SPACINGS`), visited from high to low.

All run on the schedule respaced to those steps (Improved DDPM, Sec. 4): alpha_bar is kept, the
betas are recomputed from it, and alpha_bar_prev = 1 at the last step (sigma = 0: the deterministic
samplers' last step lands on their x0 prediction). With `karras` spacing they run on EDM's sigmas
instead, each at its nearest timestep (`core.schedules.karras`). The model is always called with the
original timestep indices. All randomness comes from `generator`: one torch.Generator, or one per image (then
every image is independent of the batch it is sampled in).

Each sampler is `f(D, x, plan, *, prediction, variance, eta, clip_x0, generator, callback)`, where
`D(x_t, t, c)` is the denoiser (`core.diffusion.denoiser`: the model's predicted x0, clipped or not),
as k-diffusion's samplers take a model that returns the denoised image; `plan` lists (t, coefficients).
Its registry entry (`SAMPLERS`, a `Sampler`) holds it with all the suite must know of it: whether it is
deterministic (then it gets solver_rms rows), whether it takes eta, whether it runs in sigma (then it may not
start at alpha_bar = 0), and its model evaluations per sample.
"""
import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from core.diffusion import Coefs, Denoised, denoise, denoiser, p_from_denoised, step_coefs
from core.distributions import randn
from core.parameterizations import PREDICTIONS
from core.registry import lookup
from core.schedules import Schedule, check_prediction, spaced_schedule


def ddim_mean_variance(c: Coefs, model_output, xt, *, prediction: str, variance: str, eta: float = 0.0,
                       clip_x0: bool = False):
    """DDIM's x_{t-1} | x_t of one model output (`ddim_step` of `denoise`). Returns (mean, variance, x0)."""
    d = denoise(c, model_output, xt, prediction=prediction, variance=variance, clip_x0=clip_x0)
    return ddim_step(c, d, xt, prediction=prediction, eta=eta, clip_x0=clip_x0)


def ddim_step(c: Coefs, d: Denoised, xt, *, prediction: str, eta: float, clip_x0: bool):
    """DDIM's x_{t-1} | x_t, Song et al. Eq. 12: mean = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - s^2) eps,
    variance s^2 = eta^2 (1 - ab_prev)/(1 - ab) (1 - ab/ab_prev). Returns (mean, variance, x0)."""
    var = eta**2 * (c.b_prev / c.b) ** 2 * (1 - (c.a / c.a_prev) ** 2)
    e = _sqrt(c.b_prev**2 - var)  # the coefficient of eps
    if clip_x0:
        # eps is re-derived from the clipped x0, eps = (x_t - a x0) / b, so the mean is linear in (x0, x_t)
        return (c.a_prev - e * c.a / c.b) * d.x0 + (e / c.b) * xt, var, d.x0
    return c.a_prev * d.x0 + e * PREDICTIONS[prediction].to_eps(xt, d.out, c), var, d.x0


def ddpm(D, x, plan, *, prediction, variance, eta, clip_x0, generator, callback):
    """Ancestral sampling, Ho et al. Alg. 2: x_{t-1} = mu(x_t) + sigma_t z, with z = 0 at the last step."""
    for i, (t, c) in enumerate(plan):
        p = p_from_denoised(c, D(x, t, c), x, variance)
        x = p["mean"]
        if i < len(plan) - 1:
            x = x + _exp(0.5 * p["log_variance"]) * _noise(x, generator)
        if callback is not None:
            callback(i, t, x, p["x0"])
    return x


def ddim(D, x, plan, *, prediction, variance, eta, clip_x0, generator, callback):
    """DDIM, Song et al. Eq. 12; eta = 0 is deterministic, eta = 1 matches DDPM with fixed_small."""
    for i, (t, c) in enumerate(plan):
        x, var, x0 = ddim_step(c, D(x, t, c), x, prediction=prediction, eta=eta, clip_x0=clip_x0)
        if eta > 0 and i < len(plan) - 1:
            x = x + _sqrt(var) * _noise(x, generator)
        if callback is not None:
            callback(i, t, x, x0)
    return x


def dpmpp_2m(D, x, plan, *, prediction, variance, eta, clip_x0, generator, callback):
    """DPM-Solver++(2M), Lu et al. 2022b, Alg. 2, in lambda = log(a / b) with a = sqrt(alpha_bar),
    b = sqrt(1 - alpha_bar): x_t = (b_t / b_s) x_s - a_t (e^{-h} - 1) D, h = lambda_t - lambda_s,
    D = (1 + 1/2r) x0_s - 1/2r x0_prev, r = h_prev / h. First order (D = x0_s, i.e. DDIM) at the first
    step and at the last, whose target b = 0 (lambda = inf) makes it return x0_s (as diffusers'
    final_sigmas_type="zero", which subsumes lower_order_final for S < 15). With zero terminal SNR
    (a_s = 0, lambda = -inf) the next step's 1/r = 0, so it is first order too."""
    prev = None  # (lambda, x0) of the previous step
    for i, (t, c) in enumerate(plan):
        x0 = D(x, t, c).x0
        lam, lam_next = _lambda(c.a, c.b), _lambda(c.a_prev, c.b_prev)
        d = x0
        if prev is not None and i < len(plan) - 1:
            half_inv_r = 0.5 * (lam_next - lam) / (lam - prev[0])
            d = (1 + half_inv_r) * x0 - half_inv_r * prev[1]
        exp_neg_h = c.b_prev * c.a / (c.b * c.a_prev)  # e^{-h}, finite at a = 0 and b_prev = 0
        x = (c.b_prev / c.b) * x + c.a_prev * (1 - exp_neg_h) * d
        prev = (lam, x0)
        if callback is not None:
            callback(i, t, x, x0)
    return x


def heun(D, x, plan, *, prediction, variance, eta, clip_x0, generator, callback):
    """EDM's deterministic sampler, Karras et al. 2022, Alg. 1 (S_churn = 0), in the variance-exploding
    scaling y = x / a on the kept sigmas sigma = b / a: an Euler step to sigma_{i+1}, corrected by the
    mean of dy/dsigma = (y - x0) / sigma at both ends; Euler at the last step (to sigma = 0, i.e. x0).
    The model sees x = a y at the kept timestep of each sigma (the second call at that of sigma_{i+1}),
    so 2 S - 1 calls. Needs every kept alpha_bar > 0: zero terminal SNR makes sigma infinite."""
    check_start("heun", any(c.a == 0 for _, c in plan))
    y = x / plan[0][1].a
    for i, (t, c) in enumerate(plan):
        sigma = c.b / c.a
        x0 = D(c.a * y, t, c).x0
        if i == len(plan) - 1:
            y = x0
        else:
            t_next, c_next = plan[i + 1]
            ratio = c_next.b / c_next.a / sigma  # sigma_{i+1} / sigma_i
            # Euler: y + (sigma_{i+1} - sigma_i) (y - x0) / sigma_i. The trapezoid's mean of the two slopes
            # then adds (sigma_{i+1} - sigma_i) / (2 sigma_{i+1}) (x0 - x0_next): the same step, 3 tensor ops.
            y_euler = torch.lerp(x0, y, ratio)
            y = y_euler + 0.5 * (1 - 1 / ratio) * (x0 - D(c_next.a * y_euler, t_next, c_next).x0)
        if callback is not None:
            callback(i, t, c.a_prev * y, x0)
    return y


class Sampler(NamedTuple):
    """A sampler's registry entry: its function and what the suite must know of it, here and nowhere else."""

    fn: Callable  # f(D, x, plan, *, prediction, variance, eta, clip_x0, generator, callback) -> x0
    deterministic: bool = False  # draws no noise after x_T (at eta = 0): an ODE solver, so it gets solver_rms rows
    takes_eta: bool = False  # takes eta in [0, 1]; every other sampler takes eta = 0 only
    in_sigma: bool = False  # runs in sigma = sqrt((1 - alpha_bar) / alpha_bar): may not start at alpha_bar = 0
    nfe: Callable = lambda steps: steps  # model evaluations per sample at `steps` steps
    word: str = ""  # its legend word, "{eta}" where the legend shows its eta; "": its registry name


SAMPLERS = {
    "ddpm": Sampler(ddpm, word="DDPM"),
    "ddim": Sampler(ddim, deterministic=True, takes_eta=True, word="DDIM η={eta}"),  # deterministic at eta = 0
    "dpmpp_2m": Sampler(dpmpp_2m, deterministic=True, word="DPM-Solver++(2M)"),
    "heun": Sampler(heun, deterministic=True, in_sigma=True, nfe=lambda steps: 2 * steps - 1,  # no correction last
                    word="Heun"),
}


def deterministic(sampler: str, eta: float) -> bool:
    """Whether `sampler` at `eta` maps x_T to x0 by an ODE solver, drawing no noise after x_T: a deterministic
    sampler (its registry entry) at eta = 0 (DDIM: Song et al. 2021, Eq. 12 with sigma = 0)."""
    return lookup(SAMPLERS, sampler, "sampler").deterministic and float(eta) == 0.0


def check_start(sampler: str, at_zero_snr: bool) -> None:
    """Reject a sampler that runs in sigma (its entry's `in_sigma`) whose first kept timestep has alpha_bar = 0
    (zero terminal SNR, Lin et al. 2023): its sigma is infinite there (Karras et al. 2022, Alg. 1 starts at a
    finite sigma_max)."""
    if lookup(SAMPLERS, sampler, "sampler").in_sigma and at_zero_snr:
        raise ValueError(f"sampler {sampler!r} cannot start at alpha_bar = 0 (zero terminal SNR): its sigma = "
                         "sqrt((1 - alpha_bar) / alpha_bar) is infinite there; use a spacing that does not keep "
                         "t = T-1, or valid samplers with it: "
                         + ", ".join(repr(k) for k, v in SAMPLERS.items() if not v.in_sigma))


def nfe(sampler: str, steps: int) -> int:
    """Model evaluations per sample: its entry's `nfe` of `steps` (`steps`, or 2 steps - 1 for heun)."""
    entry = lookup(SAMPLERS, sampler, "sampler")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return entry.nfe(steps)


def _lambda(a, b):
    """log(a / b) of floats: -inf at a = 0, inf at b = 0."""
    return -math.inf if a == 0 else math.inf if b == 0 else math.log(a / b)


def _sqrt(v):
    """sqrt(max(v, 0)) of a float coefficient or a coefficient tensor."""
    return v.clamp(min=0).sqrt() if torch.is_tensor(v) else math.sqrt(max(v, 0.0))


def _exp(v):
    return v.exp() if torch.is_tensor(v) else math.exp(v)


def _noise(x, generator):
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)


def plan(schedule: Schedule, steps: int, batch: int, device,
         spacing: str = "leading") -> list[tuple[torch.Tensor, Coefs]]:
    """(model timestep tensor, coefficients) per step, from high t to low, computed once per call."""
    spaced = spaced_schedule(schedule, steps, spacing)
    per_step = step_coefs(spaced)
    return [(torch.full((batch,), int(spaced.timesteps[j]), device=device, dtype=torch.long), per_step[j])
            for j in reversed(range(spaced.T))]


@torch.no_grad()
def sample(model, schedule: Schedule, shape, *, sampler: str, steps: int, eta: float = 0.0, prediction: str,
           variance: str, generator: torch.Generator | None = None, x_T=None, clip_x0: bool = False,
           device=None, callback=None, spacing: str = "leading"):
    """Draw samples of `shape` (B, C, H, W); returns the final x0.

    `model(x, t)` takes t as a LongTensor of original indices. `x_T` defaults to N(0, I) drawn from
    `generator` (a torch.Generator, or a list of B of them, one per image), which must live on the
    sampling device. `callback(i, t, x, x0)` runs after step i. `spacing` picks the kept timesteps
    (one of `core.schedules.SPACINGS`). Eps prediction with a zero terminal SNR schedule is rejected.
    """
    entry = lookup(SAMPLERS, sampler, "sampler")
    lookup(PREDICTIONS, prediction, "prediction")
    check_prediction(schedule, prediction)
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    if not entry.takes_eta and eta != 0.0:
        takes = ", ".join(repr(k) for k, v in SAMPLERS.items() if v.takes_eta)
        raise ValueError(f"eta applies to sampler {takes} only; got eta={eta!r} with sampler {sampler!r}")
    if device is None:
        device = x_T.device if x_T is not None else next(iter(model.parameters())).device
    device = torch.device(device)
    gens = [generator] if isinstance(generator, torch.Generator) else list(generator or [])
    if any(g.device.type != device.type for g in gens):
        raise ValueError(f"generator is on {gens[0].device}, but sampling runs on {device}")
    x = _noise(torch.empty(shape, device=device), generator) if x_T is None else x_T.to(device)
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"shape mismatch: x_T has shape {tuple(x.shape)}, expected {tuple(shape)}")
    D = denoiser(model, prediction=prediction, variance=variance, clip_x0=clip_x0)
    return entry.fn(D, x, plan(schedule, steps, x.shape[0], device, spacing), prediction=prediction,
                variance=variance, eta=float(eta), clip_x0=clip_x0, generator=generator, callback=callback)
