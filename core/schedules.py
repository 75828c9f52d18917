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


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Alg. 1: shift sqrt(alpha_bar) so its last value is 0, then scale it so its
    first value is unchanged. alpha_bar stays strictly decreasing; the last beta becomes exactly 1."""
    s = alphas_cumprod.sqrt()
    s0, sT = s[0].clone(), s[-1].clone()
    return ((s - sT) * (s0 / (s0 - sT))) ** 2


def make_schedule(name: str, T: int, zero_terminal_snr: bool = False) -> Schedule:
    """The schedule `name` (one of SCHEDULES) with T steps.

    `zero_terminal_snr` rescales it by Lin et al. 2023, Alg. 1, so alpha_bar[T-1] = 0: x_{T-1} is pure
    noise. Every Schedule field stays finite (at T-1: beta = 1, log beta = 0, beta_tilde = 1 - alpha_bar_{T-2},
    posterior_mean_coef2 = 0), but the SNR alpha_bar / (1 - alpha_bar) is 0 there, so log-SNR
    (lambda = -inf), the variance-exploding sigma = sqrt((1 - alpha_bar) / alpha_bar) (= inf) and x0 from
    an eps prediction, (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar), are undefined at T-1: use v or
    x0 prediction (`check_prediction`).
    """
    fn = lookup(SCHEDULES, name, "schedule")
    if not isinstance(T, int) or T < 2:
        raise ValueError(f"T must be an integer >= 2, got {T!r}")
    betas = fn(T)
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(f"schedule {name!r} with T={T} has betas outside (0, 1) "
                         f"(range {betas.min().item():.4g}..{betas.max().item():.4g}); use a larger T")
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    if zero_terminal_snr:
        alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)
    return Schedule.from_alphas_cumprod(alphas_cumprod)


def has_zero_terminal_snr(schedule: Schedule) -> bool:
    """Whether alpha_bar[T-1] = 0 (Lin et al. 2023)."""
    return schedule.alphas_cumprod[-1].item() == 0


def check_prediction(schedule: "Schedule | bool", prediction: str) -> None:
    """Reject eps prediction with a zero terminal SNR schedule (a Schedule, or the `zero_terminal_snr`
    flag): x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) divides by 0 at the last step
    (Lin et al. 2023, Sec. 3.2)."""
    zero = schedule if isinstance(schedule, bool) else has_zero_terminal_snr(schedule)
    if zero and prediction == "eps":
        raise ValueError("prediction 'eps' cannot be used with a zero terminal SNR schedule: x0 is undefined "
                         "at the last step with eps prediction (alpha_bar[T-1] = 0); use 'v' or 'x0'")


def leading(schedule: Schedule, steps: int) -> Schedule:
    """DDIM (Song et al. 2021, Sec. 4.2); Lin et al. 2023, Table 2: t_i = i * (T // steps)."""
    T = schedule.T
    return respace(schedule, [i * (T // steps) for i in range(steps)])


def trailing(schedule: Schedule, steps: int) -> Schedule:
    """Lin et al. 2023, Table 2: round(T - i * T / steps) - 1, always keeping T - 1.

    Bit-for-bit diffusers' `np.round(np.arange(T, 0, -T / steps)) - 1` (numpy's arange adds i times
    its rounded step (T - T/steps) - T); for some (T, steps), e.g. (1000, 61), that arange has one
    extra element, which diffusers turns into a timestep -1; it is not kept here.
    """
    T = schedule.T
    delta = (T - T / steps) - T
    return respace(schedule, sorted(round(T + i * delta) - 1 for i in range(steps)))


def linspace(schedule: Schedule, steps: int) -> Schedule:
    """Lin et al. 2023, Table 2: round(linspace(0, T - 1, steps)); bit-for-bit numpy's linspace
    (i * ((T - 1) / (steps - 1)), the last set to T - 1) with round half to even, as diffusers."""
    T = schedule.T
    if steps == 1:
        return respace(schedule, [0])
    step = (T - 1) / (steps - 1)
    return respace(schedule, [round(i * step) for i in range(steps - 1)] + [T - 1])


def karras(schedule: Schedule, steps: int, rho: float = 7.0) -> Schedule:
    """EDM's sigmas (Karras et al. 2022, Eq. 5), sigma_i = (sigma_max^(1/rho) + i/(S-1) (sigma_min^(1/rho) -
    sigma_max^(1/rho)))^rho for i = 0..S-1, rho = 7, between the schedule's own sigma_min = sigma(0) and
    sigma_max = sigma(T-1), sigma = sqrt((1 - alpha_bar) / alpha_bar).

    As diffusers' use_karras_sigmas=True: the sampler runs on these sigmas (alpha_bar_i = 1 / (1 + sigma_i^2)),
    and the model is called at the nearest timestep of each, t interpolated linearly in log sigma between
    neighbouring timesteps and rounded half to even (several sigmas may share one). Needs alpha_bar[T-1] > 0.
    """
    ac = schedule.alphas_cumprod
    check_spacing("karras", bool(ac[-1] == 0))
    log_sigmas = torch.log(((1 - ac) / ac).sqrt())  # (T,), ascending in t
    lo, hi = log_sigmas[0].exp() ** (1 / rho), log_sigmas[-1].exp() ** (1 / rho)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sigmas = (hi + ramp * (lo - hi)) ** rho  # (S,), descending
    log_sigma = sigmas.log()
    low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, schedule.T - 2)
    w = ((log_sigma - log_sigmas[low]) / (log_sigmas[low + 1] - log_sigmas[low])).clamp(0, 1)
    t = (low + w).round()  # torch.round: half to even, as numpy's
    return Schedule.from_alphas_cumprod((1 / (1 + sigmas**2)).flip(0), schedule.timesteps[t.long()].flip(0))


def check_spacing(spacing: str, zero_terminal_snr: bool) -> None:
    """Reject a spacing of SIGMA_SPACINGS with a zero terminal SNR schedule: its sigma_max =
    sqrt((1 - alpha_bar[T-1]) / alpha_bar[T-1]) is infinite (Karras et al. 2022, Eq. 5 needs it finite)."""
    if spacing in SIGMA_SPACINGS and zero_terminal_snr:
        raise ValueError(f"spacing {spacing!r} needs alpha_bar[T-1] > 0: with zero terminal SNR its sigma_max = "
                         "sqrt((1 - alpha_bar) / alpha_bar) is infinite; valid choices with it: "
                         + ", ".join(repr(k) for k in SPACINGS if k not in SIGMA_SPACINGS))


# A spacing is `f(schedule, steps) -> Schedule`: the schedule a sampler runs on at `steps` steps.
SPACINGS = {"leading": leading, "trailing": trailing, "linspace": linspace, "karras": karras}
SIGMA_SPACINGS = {"karras"}  # place sigmas from the schedule's alpha_bar; the others keep timesteps of T alone


def respace(schedule: Schedule, timesteps: list[int]) -> Schedule:
    """Keep only `timesteps` (ascending original indices): alpha_bar is kept and the betas are
    recomputed as beta_i = 1 - alpha_bar_i / alpha_bar_{i-1} (Improved DDPM, Sec. 4)."""
    kept = torch.as_tensor(timesteps, dtype=torch.int64)
    if kept.ndim != 1 or len(kept) == 0 or not bool((kept[1:] > kept[:-1]).all()):
        raise ValueError(f"respaced timesteps must be strictly ascending, got {timesteps!r}")
    if kept[0] < 0 or kept[-1] >= schedule.T:
        raise ValueError(f"respaced timesteps must lie in [0, {schedule.T - 1}], got {timesteps!r}")
    return Schedule.from_alphas_cumprod(schedule.alphas_cumprod[kept], schedule.timesteps[kept])


def spaced_schedule(schedule: Schedule, steps: int, spacing: str = "leading") -> Schedule:
    """The schedule a sampler runs on at `steps` steps: `spacing`'s (one of SPACINGS) of `schedule`, i.e.
    `schedule` respaced to the kept timesteps (Improved DDPM, Sec. 4), or, for a sigma spacing (karras), on its
    sigmas."""
    fn = lookup(SPACINGS, spacing, "spacing")
    if not isinstance(steps, int) or not 1 <= steps <= schedule.T:
        raise ValueError(f"steps must be an integer in [1, T={schedule.T}], got {steps!r}")
    return fn(schedule, steps)


def spaced_timesteps(T: int, steps: int, spacing: str = "leading") -> list[int]:
    """The `steps` kept original indices, ascending, of a spacing that keeps timesteps of T alone (one of
    SPACINGS, not SIGMA_SPACINGS): its `spaced_schedule` of any T-step schedule, here one whose alpha_bar falls
    evenly from 1 to 0 (neither end kept)."""
    lookup(SPACINGS, spacing, "spacing")
    if spacing in SIGMA_SPACINGS:
        raise ValueError(f"spacing {spacing!r} places sigmas from the schedule, not timesteps of T alone; "
                         "use spaced_schedule(schedule, steps, spacing)")
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an integer >= 1, got {T!r}")
    even = Schedule.from_alphas_cumprod(torch.linspace(1, 0, T + 2, dtype=torch.float64)[1:-1])
    return spaced_schedule(even, steps, spacing).timesteps.tolist()
