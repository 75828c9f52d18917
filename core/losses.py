"""Training losses, per example: L_simple (Ho et al. Eq. 14), L_vlb and L_hybrid (Improved DDPM Eq. 16),
with the mse term weighted over timesteps (WEIGHTINGS: min-SNR-gamma, Hang et al. 2023; P2, Choi et al. 2022)."""
import inspect
import math
from types import SimpleNamespace

import torch

from core.diffusion import LEARNED, Coefs, Denoised, coefs, denoise, p_from_denoised, posterior_mean, split_output
from core.distributions import discretized_gaussian_log_likelihood, normal_kl
from core.parameterizations import PREDICTIONS
from core.registry import lookup
from core.schedules import Schedule

LOSSES = {
    "simple": lambda mse, vb, T, w: mse,
    "hybrid": lambda mse, vb, T, w: mse + w * T * vb,  # lambda = w = 0.001 gives Improved DDPM's T/1000
    "vlb": lambda mse, vb, T, w: T * vb,
}


def uniform(snr, s2):
    """Each target's own MSE, unweighted: L_simple as Ho et al. (2020, Eq. 14) wrote it for eps."""
    return torch.ones_like(snr)


def min_snr(snr, s2, snr_gamma: float = 5.0):
    """Min-SNR-gamma (Hang et al. 2023, Sec. 3 and App. B; gamma = 5 is their default): the x0 MSE weighted
    by min(SNR, gamma), i.e. the eps MSE by min(SNR, gamma) / SNR = min(1, gamma / SNR)."""
    return torch.clamp(snr_gamma / snr, max=1.0) * s2  # SNR = 0 (zero terminal SNR): 1 on eps, s2 = 0 there


def p2(snr, s2, p2_gamma: float = 1.0, p2_k: float = 1.0):
    """P2 (Choi et al. 2022, Eq. 8): lambda'_t = lambda_t / (k + SNR)^gamma on the VLB terms L_t, with
    lambda_t DDPM's weight that turns L_t into L_simple's eps MSE (Ho et al. 2020, Eq. 14; Choi et al. Eq. 5).
    Relative to L_simple the eps MSE is thus weighted by 1 / (k + SNR)^gamma. The defaults are the paper's:
    k = 1 (set so for simplicity) and gamma = 1 (most of its experiments)."""
    return (p2_k + snr) ** -p2_gamma * s2


# name -> weight(snr, s2, **params): the weight of the target's MSE per example (`target_weight`); its
# keyword arguments are the TrainConfig fields it reads, with the papers' defaults
WEIGHTINGS = {"uniform": uniform, "min_snr": min_snr, "p2": p2}
PARAMS = {name: tuple(inspect.signature(f).parameters)[2:] for name, f in WEIGHTINGS.items()}  # its keywords


def snr(schedule: Schedule, t):
    """SNR(t) = alpha_bar_t / (1 - alpha_bar_t) (Kingma et al. 2021, Eq. 2), float64, shape (B,)."""
    ab = schedule.alphas_cumprod.to(t.device)[t]
    return ab / (1 - ab)


def target_weight(schedule: Schedule, t, prediction: str, weighting: str = "uniform", **params):
    """The weight of each example's unweighted MSE of `prediction`'s target, float64, shape (B,).

    min-SNR and P2 are weights w(SNR) of the eps MSE, and an error in any target is an eps error: each
    `to_eps` is linear in the output, so an error delta in the target is s * delta in eps, with
    s = to_eps(0, 1, c) (core/parameterizations.py): 1 for eps, -a/b = -sqrt(SNR) for x0, a = sqrt(alpha_bar)
    for v. So mse_eps = s^2 mse_target, and the target's weight is w s^2, the same objective in eps space
    whatever the network predicts:

    - s^2: 1 (eps), SNR (x0), SNR / (SNR + 1) = alpha_bar (v);
    - min-SNR: min(SNR, g) / SNR (eps), min(SNR, g) (x0), min(SNR, g) / (SNR + 1) (v), as Hang et al. 2023,
      App. B (the v form is the one diffusers' training scripts were corrected to, PRs #6307 and #8466);
    - P2: 1 / (k + SNR)^g (eps), SNR / (k + SNR)^g (x0), SNR / ((SNR + 1) (k + SNR)^g) (v); with k = g = 1:
      1 - alpha_bar, SNR / (1 + SNR) = alpha_bar, and alpha_bar (1 - alpha_bar).

    `uniform` weights every target's own MSE by 1, as before weightings existed.
    """
    weight = lookup(WEIGHTINGS, weighting, "weighting")
    pred = lookup(PREDICTIONS, prediction, "prediction")
    ab = schedule.alphas_cumprod.to(t.device)[t]
    s = pred.to_eps(0.0, 1.0, SimpleNamespace(a=ab.sqrt(), b=(1 - ab).sqrt()))
    return weight(snr(schedule, t), s ** 2, **params)


def mean_flat(x):
    return x.flatten(1).mean(1)


def vb_from_coefs(c: Coefs, model_output, x0, xt, t, *, prediction: str, variance: str, clip_x0: bool = False):
    """The VLB term L_{t-1} in bits per dimension, per example, of one model output (`vb_from_denoised`)."""
    d = denoise(c, model_output, xt, prediction=prediction, variance=variance, clip_x0=clip_x0)
    return vb_from_denoised(c, d, x0, xt, t, variance=variance)


def vb_from_denoised(c: Coefs, d: Denoised, x0, xt, t, *, variance: str):
    """The VLB term L_{t-1} in bits per dimension, per example (Ho et al. Eq. 5):
    KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0, the discretized decoder NLL at t = 0, with p's
    mean at the denoiser's x0 (clipped to [-1, 1] if it clips, as the sampler's is)."""
    p = p_from_denoised(c, d, xt, variance)
    log_var = p["log_variance"]
    kl = mean_flat(normal_kl(posterior_mean(c, x0, xt), c.log_var_small, p["mean"], log_var))
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * log_var))
    return torch.where(t == 0, nll, kl) / math.log(2.0)


def check_variance(variance: str, loss: str) -> None:
    """A learned variance needs a loss with the VLB term: L_simple gives its channels no gradient
    (Improved DDPM, Sec. 3.1)."""
    if variance in LEARNED and loss == "simple":
        raise ValueError(f"variance {variance!r} needs loss 'hybrid' or 'vlb', got loss {loss!r} (L_simple gives "
                         "its variance channels no gradient); valid losses for it: 'hybrid', 'vlb'")


def check_weighting(weighting: str, loss: str) -> None:
    """A weighting weights the mse term, which L_vlb does not have (its weights are the bound's own)."""
    if weighting != "uniform" and loss == "vlb":
        raise ValueError(f"weighting {weighting!r} weights the mse term, which loss 'vlb' does not have; "
                         "valid losses for it: 'simple', 'hybrid'")


def loss_terms(schedule: Schedule, model_output, x0, xt, t, noise, *, prediction: str, variance: str,
               loss: str, vlb_weight: float = 0.001, weighting: str = "uniform", **params):
    """Dict of per-example tensors of shape (B,): `mse`, `vb` (bits/dim) and `loss`.

    - `mse`: mean over dimensions of (target - prediction)^2, target per `prediction`; unweighted.
    - `vb`: the VLB term at t. For "simple" and "hybrid" it is computed with the predicted mean
      detached, so it trains only the variance channels (Improved DDPM, Sec. 3.1); for "simple"
      it is a logged diagnostic. For "vlb" gradients flow through the mean too.
    - `loss`: "simple" = w mse; "hybrid" = w mse + vlb_weight * T * vb; "vlb" = T * vb, with w the
      `weighting`'s weight at t (`target_weight`; `params` are its keywords, e.g. snr_gamma). Only the mse
      term is weighted: the VLB is a likelihood bound whose own weights are fixed, so "vlb" takes "uniform".
    """
    combine = lookup(LOSSES, loss, "loss")
    lookup(WEIGHTINGS, weighting, "weighting")
    check_weighting(weighting, loss)
    pred = lookup(PREDICTIONS, prediction, "prediction")
    check_variance(variance, loss)
    for name, x in (("x0", x0), ("noise", noise)):
        if x.shape != xt.shape:
            raise ValueError(f"shape mismatch: {name} {tuple(x.shape)} vs xt {tuple(xt.shape)}")
    out, v = split_output(model_output, xt, variance)
    c = coefs(schedule, t, like=xt)
    mse = mean_flat((pred.target(x0, noise, c) - out) ** 2)
    frozen = out if loss == "vlb" else out.detach()
    vb_input = frozen if v is None else torch.cat([frozen, v], dim=1)
    vb = vb_from_coefs(c, vb_input, x0, xt, t, prediction=prediction, variance=variance)
    w = target_weight(schedule, t, prediction, weighting, **params).to(mse.dtype)
    return {"mse": mse, "vb": vb, "loss": combine(w * mse, vb, schedule.T, vlb_weight)}
