"""Training losses, per example: L_simple (Ho et al. Eq. 14), L_vlb and L_hybrid (Improved DDPM Eq. 16)."""
import math

import torch

from core.diffusion import LEARNED, Coefs, coefs, p_from_coefs, posterior_mean, split_output
from core.distributions import discretized_gaussian_log_likelihood, normal_kl
from core.parameterizations import PREDICTIONS
from core.registry import lookup
from core.schedules import Schedule

LOSSES = {
    "simple": lambda mse, vb, T, w: mse,
    "hybrid": lambda mse, vb, T, w: mse + w * T * vb,  # lambda = w = 0.001 gives Improved DDPM's T/1000
    "vlb": lambda mse, vb, T, w: T * vb,
}


def mean_flat(x):
    return x.flatten(1).mean(1)


def vb_from_coefs(c: Coefs, model_output, x0, xt, t, *, prediction: str, variance: str, clip_x0: bool = False):
    """The VLB term L_{t-1} in bits per dimension, per example (Ho et al. Eq. 5):
    KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0, the discretized decoder NLL at t = 0.
    `clip_x0`: p's mean uses the predicted x0 clipped to [-1, 1], as the sampler's does."""
    p = p_from_coefs(c, model_output, xt, prediction=prediction, variance=variance, clip_x0=clip_x0)
    log_var = p["log_variance"]
    kl = mean_flat(normal_kl(posterior_mean(c, x0, xt), c.log_var_small, p["mean"], log_var))
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * log_var))
    return torch.where(t == 0, nll, kl) / math.log(2.0)


def loss_terms(schedule: Schedule, model_output, x0, xt, t, noise, *, prediction: str, variance: str,
               loss: str, vlb_weight: float = 0.001):
    """Dict of per-example tensors of shape (B,): `mse`, `vb` (bits/dim) and `loss`.

    - `mse`: mean over dimensions of (target - prediction)^2, target per `prediction`.
    - `vb`: the VLB term at t. For "simple" and "hybrid" it is computed with the predicted mean
      detached, so it trains only the variance channels (Improved DDPM, Sec. 3.1); for "simple"
      it is a logged diagnostic. For "vlb" gradients flow through the mean too.
    - `loss`: "simple" = mse; "hybrid" = mse + vlb_weight * T * vb; "vlb" = T * vb.
    """
    combine = lookup(LOSSES, loss, "loss")
    pred = lookup(PREDICTIONS, prediction, "prediction")
    if variance in LEARNED and loss == "simple":
        raise ValueError(f"variance {variance!r} needs loss 'hybrid' or 'vlb' (L_simple gives its "
                         "variance channels no gradient); valid losses for it: 'hybrid', 'vlb'")
    for name, x in (("x0", x0), ("noise", noise)):
        if x.shape != xt.shape:
            raise ValueError(f"shape mismatch: {name} {tuple(x.shape)} vs xt {tuple(xt.shape)}")
    out, v = split_output(model_output, xt, variance)
    c = coefs(schedule, t, like=xt)
    mse = mean_flat((pred.target(x0, noise, c) - out) ** 2)
    frozen = out if loss == "vlb" else out.detach()
    vb_input = frozen if v is None else torch.cat([frozen, v], dim=1)
    vb = vb_from_coefs(c, vb_input, x0, xt, t, prediction=prediction, variance=variance)
    return {"mse": mse, "vb": vb, "loss": combine(mse, vb, schedule.T, vlb_weight)}
