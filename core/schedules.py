"""Noise schedules. `alphas_cumprod` is the single source of truth; every other tensor derives from it.

Time `t` is a 0-based index 0..T-1 and `alphas_cumprod[t] = prod_{s<=t} (1 - beta_s)`.
"""
import math
from dataclasses import dataclass

import torch

from core.registry import lookup


def linear(T: int) -> torch.Tensor:
    """DDPM (Ho et al. 2020, Sec. 4): betas linear from 1e-4 to 0.02, scaled by 1000/T (Improved DDPM)."""
    scale = 1000 / T
    return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)


def cosine(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM (Nichol & Dhariwal 2021, Eq. 17): alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) * pi/2).

    beta_t = 1 - alpha_bar(t+1)/alpha_bar(t), clipped at `max_beta` to avoid the singularity at t=T.
    """
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = [min(1 - f(t + 1) / f(t), max_beta) for t in range(T)]
    return torch.tensor(betas, dtype=torch.float64)


SCHEDULES = {"linear": linear, "cosine": cosine}


@dataclass(frozen=True)
class Schedule:
    """Float64 tensors of length T, all derived from `alphas_cumprod` by `from_alphas_cumprod`.

    `timesteps[i]` is the original index that position i stands for: arange(T) for a full
    schedule, the kept indices for a respaced one (Improved DDPM, Sec. 4).
    """

    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor  # 1 at i = 0
    betas: torch.Tensor
    posterior_variance: torch.Tensor  # beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)
    posterior_log_variance_clipped: torch.Tensor  # log beta_tilde, with beta_tilde[1] at t = 0
    posterior_mean_coef1: torch.Tensor  # of x0 in Ho et al. Eq. 7
    posterior_mean_coef2: torch.Tensor  # of xt in Ho et al. Eq. 7
    log_betas: torch.Tensor
    log_variance_large: torch.Tensor  # log beta, with beta_tilde[1] at t = 0 (Improved DDPM)
    timesteps: torch.Tensor  # int64

    @property
    def T(self) -> int:
        return len(self.alphas_cumprod)

    @staticmethod
    def from_alphas_cumprod(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor | None = None) -> "Schedule":
        ac = alphas_cumprod.to(torch.float64)
        if ac.ndim != 1 or len(ac) < 1:
            raise ValueError(f"alphas_cumprod must be a non-empty 1-D tensor, got shape {tuple(ac.shape)}")
        ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        betas = 1 - ac / ac_prev
        var = betas * (1 - ac_prev) / (1 - ac)
        # beta_tilde_0 = 0; borrow beta_tilde_1 so the log stays finite (as Improved DDPM does).
        var_1 = var[1:2] if len(var) > 1 else betas[:1]
        log_var = torch.log(torch.cat([var_1, var[1:]]))
        return Schedule(
            alphas_cumprod=ac,
            alphas_cumprod_prev=ac_prev,
            betas=betas,
            posterior_variance=var,
            posterior_log_variance_clipped=log_var,
            posterior_mean_coef1=betas * ac_prev.sqrt() / (1 - ac),
            posterior_mean_coef2=(1 - ac_prev) * (1 - betas).sqrt() / (1 - ac),
            log_betas=torch.log(betas),
            log_variance_large=torch.log(torch.cat([var_1, betas[1:]])),
            timesteps=torch.arange(len(ac)) if timesteps is None else timesteps.to(torch.int64),
        )


def make_schedule(name: str, T: int) -> Schedule:
    """The schedule `name` (one of SCHEDULES) with T steps."""
    fn = lookup(SCHEDULES, name, "schedule")
    if not isinstance(T, int) or T < 2:
        raise ValueError(f"T must be an integer >= 2, got {T!r}")
    betas = fn(T)
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(f"schedule {name!r} with T={T} has betas outside (0, 1) "
                         f"(range {betas.min().item():.4g}..{betas.max().item():.4g}); use a larger T")
    return Schedule.from_alphas_cumprod(torch.cumprod(1 - betas, dim=0))


def spaced_timesteps(T: int, steps: int) -> list[int]:
    """DDIM (Song et al. 2021, Sec. 4.2) uniform sub-sequence t_i = i * (T // steps), i = 0..steps-1, ascending."""
    if not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in [1, T={T}], got {steps!r}")
    return [i * (T // steps) for i in range(steps)]


def respace(schedule: Schedule, timesteps: list[int]) -> Schedule:
    """Keep only `timesteps` (ascending original indices): alpha_bar is kept and the betas are
    recomputed as beta_i = 1 - alpha_bar_i / alpha_bar_{i-1} (Improved DDPM, Sec. 4)."""
    kept = torch.as_tensor(timesteps, dtype=torch.int64)
    if kept.ndim != 1 or len(kept) == 0 or not bool((kept[1:] > kept[:-1]).all()):
        raise ValueError(f"respaced timesteps must be strictly ascending, got {timesteps!r}")
    if kept[0] < 0 or kept[-1] >= schedule.T:
        raise ValueError(f"respaced timesteps must lie in [0, {schedule.T - 1}], got {timesteps!r}")
    return Schedule.from_alphas_cumprod(schedule.alphas_cumprod[kept], schedule.timesteps[kept])
