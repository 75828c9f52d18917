"""Timestep spacing (karras included), zero terminal SNR, DPM-Solver++(2M) and Heun: held against diffusers'
schedulers.

Every loop drives diffusers as a pipeline does: set_timesteps, then model(x, t) and step per timestep,
with diffusers' alphas_cumprod replaced by ours (`f64`); its sigmas and DPM-Solver's step stay float32,
so agreement is to 1e-4.
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, HeunDiscreteScheduler  # noqa: E402
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr  # noqa: E402

from core.diffusion import coefs  # noqa: E402
from core.likelihood import prior_bpd  # noqa: E402
from core.parameterizations import PREDICTIONS  # noqa: E402
from core.samplers import SAMPLERS, nfe, sample  # noqa: E402
from core.schedules import SIGMA_SPACINGS, SPACINGS, check_prediction, make_schedule, spaced_schedule  # noqa: E402
from core.schedules import spaced_timesteps  # noqa: E402

T = 1000  # our "linear" at T = 1000 is diffusers' beta_schedule="linear", 1e-4..0.02
SCHEDULE = make_schedule("linear", T)
DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
BETAS = dict(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
X_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
TOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers + numpy 2


def tiny(prediction, calls=None):
    """A fixed smooth model of (x, t): the exact denoiser of N(0.3, 0.5^2) data plus a t-dependent term
    mixing neighbouring pixels and channels, emitted as `prediction`. Elementwise ops only (a conv or
    matmul costs ~20 ms on 2 busy cores). It takes only integer timesteps (0-dim ones from diffusers)."""
    def model(x, t):
        t = torch.as_tensor(t)
        assert bool((t == t.round()).all()), f"model called at a fractional timestep {t}"
        t = t.long().expand(x.shape[0]) if t.ndim == 0 else t.long()
        if calls is not None:
            calls.append(int(t[0]))
        x = x.to(torch.float64)
        ab = SCHEDULE.alphas_cumprod[t].view(-1, 1, 1, 1)
        c = SimpleNamespace(a=ab.sqrt(), b=(1 - ab).sqrt())
        x0 = 0.3 + c.a * 0.25 / (0.25 * ab + 1 - ab) * (x - 0.3 * c.a)
        mix = torch.tanh(x + 0.7 * x.roll(1, -1) - 0.5 * x.roll(-1, -2) + 0.4 * x.flip(1))
        x0 = x0 + 0.2 * mix * torch.cos(t / 150).view(-1, 1, 1, 1)
        return PREDICTIONS[prediction].target(x0, (x - c.a * x0) / c.b, c)
    return model


def ours(sampler, prediction, spacing, steps, x_T=X_T, schedule=SCHEDULE, **kw):
    return sample(tiny(prediction), schedule, x_T.shape, sampler=sampler, steps=steps, prediction=prediction,
                  variance="fixed_small", x_T=x_T, spacing=spacing, device="cpu", **kw)


def f64(sched):
    """diffusers accumulates alpha_bar in float32, where 1 - alpha_bar near t = 0 keeps ~3 digits (3e-4
    relative error in sigma at t = 0, 3e-4 absolute in heun's leading x0 samples); give it ours, from the
    same betas in float64, before set_timesteps."""
    assert torch.allclose(sched.alphas_cumprod.double(), SCHEDULE.alphas_cumprod, rtol=1e-6, atol=0)
    sched.alphas_cumprod = SCHEDULE.alphas_cumprod.clone()
    return sched


def descending(spacing, steps):
    """The timesteps the model is called at, high to low (karras's may repeat)."""
    return spaced_schedule(SCHEDULE, steps, spacing).timesteps.tolist()[::-1]


def dpm_solver(prediction, spacing, steps, order, x_T=X_T, **kw):
    """diffusers' DPM-Solver++ loop. Its own "leading" and "linspace" are not Lin et al.'s Table 2
    (see test_diffusers_dpm_solver_leading_and_linspace_are_not_table_2), so it gets our kept timesteps;
    karras is its own use_karras_sigmas=True."""
    karras = spacing == "karras"
    config = dict(BETAS, algorithm_type="dpmsolver++", solver_order=order, lower_order_final=True,
                  euler_at_final=False, final_sigmas_type="zero", use_karras_sigmas=karras, thresholding=False,
                  timestep_spacing="linspace" if karras else spacing, prediction_type=DIFFUSERS_PREDICTION[prediction])
    sched = f64(DPMSolverMultistepScheduler(**{**config, **kw}))
    if spacing in ("trailing", "karras"):
        sched.set_timesteps(steps)
        assert sched.timesteps.tolist() == descending(spacing, steps)
    else:
        sched.set_timesteps(timesteps=descending(spacing, steps))
    model, x = tiny(prediction), x_T.clone()
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x).prev_sample
    return x


def diffusers_heun(prediction, spacing, steps, x_T=X_T, **kw):
    """diffusers' Heun loop. It works in y = x / sqrt(alpha_bar) = x sqrt(1 + sigma^2) and hands the model
    scale_model_input(y) = y / sqrt(1 + sigma^2): our x. So x_T enters as x_T sqrt(1 + sigma_0^2), not
    x_T * init_noise_sigma (which is sigma_0, without the 1, for trailing and linspace). With
    use_karras_sigmas=True (on linspace, whose ends are sigma(0) and sigma(T-1)) it hands the model the
    fractional timestep of each sigma; the loop rounds it, as its DPM-Solver does."""
    karras = spacing == "karras"
    sched = f64(HeunDiscreteScheduler(**BETAS, prediction_type=DIFFUSERS_PREDICTION[prediction],
                                      timestep_spacing="linspace" if karras else spacing, use_karras_sigmas=karras,
                                      **kw))
    sched.set_timesteps(steps)
    kept = descending(spacing, steps)
    assert sched.timesteps.round().tolist() == kept[:1] + [t for t in kept[1:] for _ in (0, 1)]
    model, y = tiny(prediction), x_T * (1 + sched.sigmas[0].double() ** 2).sqrt()
    for t in sched.timesteps:
        y = sched.step(model(sched.scale_model_input(y, t), t.round()), t, y).prev_sample
    return y


def max_diff(a, b):
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return (a.double() - b.double()).abs().max().item()


# --- spacing ---------------------------------------------------------------------------------------

CASES = [(10, 1), (10, 3), (10, 10), (50, 7), (1000, 1), (1000, 3), (1000, 7), (1000, 10), (1000, 13),
         (1000, 50), (1000, 61), (1000, 999), (1000, 1000), (1024, 49), (4000, 37)]


@pytest.mark.parametrize("T_, steps", CASES)
def test_spacings_are_lin_et_al_table_2_as_diffusers_computes_them(T_, steps):
    """leading i * (T // S); trailing round(T - i T / S) - 1; linspace round(linspace(0, T - 1, S)),
    each with numpy's floats and round-half-to-even, exactly as diffusers' DDIMScheduler.set_timesteps."""
    want = {
        "leading": sorted(int(t) for t in (np.arange(0, steps) * (T_ // steps)).round()),
        "trailing": sorted(int(t) for t in (np.round(np.arange(T_, 0, -T_ / steps)) - 1)[:steps]),
        "linspace": sorted(int(t) for t in np.linspace(0, T_ - 1, steps).round()),
    }
    for spacing, kept in want.items():
        got = spaced_timesteps(T_, steps, spacing)
        assert got == kept and len(set(got)) == steps and 0 <= got[0] and got[-1] <= T_ - 1
        if spacing != "trailing" or len(np.arange(T_, 0, -T_ / steps)) == steps:  # see the -1 test below
            sched = DDIMScheduler(num_train_timesteps=T_, timestep_spacing=spacing)
            sched.set_timesteps(steps)
            assert sorted(sched.timesteps.tolist()) == got
    assert spaced_timesteps(T_, steps) == want["leading"]  # the default is unchanged
    assert spaced_timesteps(T_, steps, "trailing")[-1] == T_ - 1


def test_spacing_by_hand():
    assert spaced_timesteps(1000, 10, "trailing") == list(range(99, 1000, 100))
    assert spaced_timesteps(1000, 10, "linspace") == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert spaced_timesteps(1000, 3, "trailing") == [332, 666, 999]
    assert spaced_timesteps(1000, 16, "trailing")[:3] == [61, 124, 187]  # round(62.5, 125, 187.5) - 1
    with pytest.raises(ValueError, match=r"unknown spacing 'uniform'; valid choices: 'leading', 'trailing', "):
        spaced_timesteps(1000, 10, "uniform")
    with pytest.raises(ValueError, match=r"unknown spacing"):
        sample(tiny("x0"), SCHEDULE, X_T.shape, sampler="ddim", steps=5, prediction="x0", variance="fixed_small",
               x_T=X_T, spacing="uniform")


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1, 3, 5, 10, 20, 50])
def test_karras_sigmas_are_edm_eq_5_at_diffusers_nearest_timesteps(name, steps):
    """sigma_i = (sigma_max^(1/7) + i/(S-1) (sigma_min^(1/7) - sigma_max^(1/7)))^7 between sigma(0) and
    sigma(T-1) of the schedule; the model timesteps are DPMSolverMultistepScheduler's with use_karras_sigmas."""
    schedule = make_schedule(name, T)
    ab = schedule.alphas_cumprod
    sigma = ((1 - ab) / ab).sqrt()
    lo, hi = sigma[0].item() ** (1 / 7), sigma[-1].item() ** (1 / 7)
    want = [(hi + (i / (steps - 1) if steps > 1 else 0.0) * (lo - hi)) ** 7 for i in range(steps)]
    spaced = spaced_schedule(schedule, steps, "karras")
    got = ((1 - spaced.alphas_cumprod) / spaced.alphas_cumprod).sqrt().flip(0)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-10, atol=0)
    sched = DPMSolverMultistepScheduler(num_train_timesteps=T, use_karras_sigmas=True, final_sigmas_type="zero",
                                        beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    sched.alphas_cumprod = ab.clone()  # any schedule: diffusers reads only alphas_cumprod in set_timesteps
    sched.set_timesteps(steps)
    assert spaced.timesteps.flip(0).tolist() == sched.timesteps.tolist()
    assert torch.allclose(got.float(), sched.sigmas[:-1], rtol=1e-6)
    assert spaced.timesteps[-1] == T - 1 and (steps == 1 or spaced.timesteps[0] == 0)  # both ends of the schedule
    with pytest.raises(ValueError, match="use spaced_schedule"):
        spaced_timesteps(T, steps, "karras")


def test_diffusers_trailing_sometimes_adds_a_timestep_minus_one():
    """numpy's arange(1000, 0, -1000/61) has 62 elements; diffusers keeps the last as timestep -1 (which
    indexes alphas_cumprod[-1]) and runs 62 steps. We keep 61."""
    sched = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    sched.set_timesteps(61)
    assert len(sched.timesteps) == 62 and sched.timesteps[-1].item() == -1
    assert sched.timesteps[:-1].tolist() == descending("trailing", 61)


def test_diffusers_dpm_solver_leading_and_linspace_are_not_table_2():
    """DPMSolverMultistepScheduler divides by S + 1 and drops t = 0 (its last step goes to sigma = 0
    anyway); at S = T its leading is all zeros and its linspace repeats an index."""
    sched = DPMSolverMultistepScheduler(**BETAS, timestep_spacing="leading")
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == list(range(900, 0, -90)) != descending("leading", 10)
    sched = DPMSolverMultistepScheduler(**BETAS, timestep_spacing="linspace")
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
    assert descending("linspace", 10) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    sched.set_timesteps(T)
    assert len(sched.timesteps.unique()) == T - 1


# --- zero terminal SNR -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_zero_terminal_snr_is_lin_et_al_algorithm_1_as_diffusers(name):
    plain, zero = make_schedule(name, T), make_schedule(name, T, zero_terminal_snr=True)
    want = torch.cumprod(1 - rescale_zero_terminal_snr(plain.betas.clone()), 0)
    assert torch.allclose(zero.alphas_cumprod, want, rtol=0, atol=1e-12)
    assert zero.alphas_cumprod[-1].item() == 0
    assert zero.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item(), rel=1e-12)
    assert (zero.betas > 0).all() and (zero.betas <= 1).all() and zero.betas[-1].item() == 1
    assert (zero.alphas_cumprod[1:] < zero.alphas_cumprod[:-1]).all()
    for field in (zero.alphas_cumprod_prev, zero.posterior_variance, zero.posterior_log_variance_clipped,
                  zero.posterior_mean_coef1, zero.posterior_mean_coef2, zero.log_betas, zero.log_variance_large):
        assert torch.isfinite(field).all()
    assert zero.posterior_variance[-1].item() == pytest.approx(1 - zero.alphas_cumprod[-2].item(), rel=1e-12)
    assert make_schedule(name, T, zero_terminal_snr=False).alphas_cumprod.equal(plain.alphas_cumprod)


def test_prior_term_is_zero_with_zero_terminal_snr():
    """L_T = KL(N(0, 1) || N(0, 1)) = 0 when alpha_bar[T-1] = 0."""
    x0 = torch.rand(3, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    prior = prior_bpd(make_schedule("linear", T, zero_terminal_snr=True), x0)
    assert torch.equal(prior, torch.zeros(3, dtype=torch.float64))


def test_eps_prediction_with_zero_terminal_snr_is_rejected_with_the_reason():
    zero = make_schedule("linear", T, zero_terminal_snr=True)
    reason = "x0 is undefined at the last step with eps prediction"
    for flag in (zero, True):
        with pytest.raises(ValueError, match=reason):
            check_prediction(flag, "eps")
    for ok in ((zero, "v"), (zero, "x0"), (True, "v"), (SCHEDULE, "eps"), (False, "eps")):
        check_prediction(*ok)
    for sampler in SAMPLERS:
        with pytest.raises(ValueError, match=reason):
            sample(tiny("eps"), zero, X_T.shape, sampler=sampler, steps=10, prediction="eps", variance="fixed_small",
                   x_T=X_T, device="cpu")


@pytest.mark.parametrize("spacing", list(SPACINGS))
@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_zero_terminal_snr_samples_are_finite_or_clearly_rejected(sampler, prediction, spacing):
    zero = make_schedule("linear", T, zero_terminal_snr=True)
    g = torch.Generator().manual_seed(0)
    run = lambda: ours(sampler, prediction, spacing, 10, schedule=zero, generator=g)  # noqa: E731
    if spacing in SIGMA_SPACINGS:  # karras's sigma_max is sigma(T-1) = inf
        with pytest.raises(ValueError, match="spacing 'karras' needs alpha_bar\\[T-1\\] > 0"):
            run()
    elif sampler == "heun" and spacing != "leading":  # trailing and linspace keep T-1, where sigma = inf
        with pytest.raises(ValueError, match="sampler 'heun' cannot start at alpha_bar = 0"):
            run()
    else:
        assert torch.isfinite(run()).all()


def test_zero_terminal_snr_dpmpp_2m_is_first_order_next_to_lambda_minus_inf():
    """From alpha_bar = 0 (lambda = -inf) the first step is DDIM's, and the second has 1/r = 0, so it is
    first order too: with 3 steps (the last is first order) dpmpp_2m is DDIM."""
    zero = make_schedule("linear", T, zero_terminal_snr=True)
    a, b = (ours(s, "v", "trailing", 3, schedule=zero) for s in ("dpmpp_2m", "ddim"))
    assert max_diff(a, b) < 1e-12
    assert max_diff(ours("dpmpp_2m", "v", "trailing", 3), ours("ddim", "v", "trailing", 3)) > 1e-3


def test_zero_terminal_snr_dpmpp_2m_matches_diffusers_rescale_betas_zero_snr():
    """diffusers' DPM-Solver++ with rescale_betas_zero_snr sets alpha_bar[T-1] = 2^-24 (sigma finite);
    ours keeps it 0 and takes the limit. Stock float32 diffusers here (~5e-5 apart)."""
    zero = make_schedule("linear", T, zero_terminal_snr=True)
    sched = DPMSolverMultistepScheduler(**BETAS, solver_order=2, final_sigmas_type="zero", timestep_spacing="trailing",
                                        prediction_type="v_prediction", rescale_betas_zero_snr=True)
    sched.set_timesteps(10)
    model, x = tiny("v"), X_T.clone()
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x).prev_sample
    assert max_diff(x, ours("dpmpp_2m", "v", "trailing", 10, schedule=zero)) < TOL


# --- held against diffusers ------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("spacing", list(SPACINGS))
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_dpmpp_2m_matches_diffusers(prediction, spacing, steps):
    got = ours("dpmpp_2m", prediction, spacing, steps)
    assert max_diff(got, dpm_solver(prediction, spacing, steps, order=2)) < TOL
    assert max_diff(got, ours("ddim", prediction, spacing, steps)) > 1e-3  # it is not first order


@pytest.mark.parametrize("spacing", list(SPACINGS))
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddim_is_first_order_dpm_solver_pp_in_diffusers(prediction, spacing):
    """DDIM's last step (alpha_bar_prev = 1) and diffusers' (final sigma = 0) both land on x0."""
    assert max_diff(ours("ddim", prediction, spacing, 10), dpm_solver(prediction, spacing, 10, order=1)) < TOL


@pytest.mark.parametrize("steps", [1, 10])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "karras"])  # its linspace: fractional t
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_heun_matches_diffusers(prediction, spacing, steps):
    if (spacing, steps) == ("karras", 1):
        pytest.skip("diffusers' Heun takes karras's ends from its spaced timesteps: at 1 step, sigma(0) alone")
    assert max_diff(ours("heun", prediction, spacing, steps), diffusers_heun(prediction, spacing, steps)) < TOL


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddpm_matches_diffusers_ddpm_scheduler(prediction, clip):
    """Ancestral DDPM (Ho et al. Alg. 2) at 10 leading steps with sigma^2 = beta~, fed the same noise
    draws: diffusers' DDPMScheduler respaces (beta_t = 1 - alpha_bar_t / alpha_bar_prev) and clips x0
    as we do."""
    sched = f64(DDPMScheduler(**BETAS, timestep_spacing="leading", variance_type="fixed_small",
                              clip_sample=clip, prediction_type=DIFFUSERS_PREDICTION[prediction]))
    sched.set_timesteps(10)
    model, x, g = tiny(prediction), 3 * X_T, torch.Generator().manual_seed(3)
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x, generator=g).prev_sample
    got = ours("ddpm", prediction, "leading", 10, x_T=3 * X_T, clip_x0=clip, generator=torch.Generator().manual_seed(3))
    assert max_diff(got, x) < TOL
    other = ours("ddpm", prediction, "leading", 10, x_T=3 * X_T, clip_x0=not clip,
                 generator=torch.Generator().manual_seed(3))
    assert max_diff(got, other) > 1e-2  # clipping is exercised


def test_clip_x0_matches_diffusers_clipping():
    """clip_x0 clips every x0 prediction to [-1, 1]: diffusers' thresholding with sample_max_value=1
    (its quantile s is clamped to [1, 1]) for DPM-Solver++, and clip_sample for Heun."""
    x_T = 3 * X_T
    got = ours("dpmpp_2m", "v", "trailing", 10, x_T=x_T, clip_x0=True)
    assert max_diff(got, ours("dpmpp_2m", "v", "trailing", 10, x_T=x_T)) > 1e-2
    assert max_diff(got, dpm_solver("v", "trailing", 10, 2, x_T=x_T, thresholding=True, sample_max_value=1.0)) < TOL
    got = ours("heun", "eps", "leading", 10, x_T=x_T, clip_x0=True)
    assert max_diff(got, ours("heun", "eps", "leading", 10, x_T=x_T)) > 1e-2
    assert max_diff(got, diffusers_heun("eps", "leading", 10, x_T=x_T, clip_sample=True)) < TOL


def ddim_by_hand(prediction, kept, prev_of):
    """DDIM, Song et al. Eq. 12 with eta = 0, from alpha_bar at t and at prev_of(t) (1 below 0)."""
    model, x, ab = tiny(prediction), X_T.clone(), SCHEDULE.alphas_cumprod
    for t in kept:
        c = SimpleNamespace(a=ab[t].sqrt(), b=(1 - ab[t]).sqrt())
        out = model(x, torch.tensor(t))
        ab_prev = ab[prev_of(t)] if prev_of(t) >= 0 else torch.tensor(1.0, dtype=torch.float64)
        p = PREDICTIONS[prediction]
        x = ab_prev.sqrt() * p.to_x0(x, out, c) + (1 - ab_prev).sqrt() * p.to_eps(x, out, c)
    return x


@pytest.mark.parametrize("spacing, steps", [("trailing", 7), ("trailing", 13), ("linspace", 10)])
def test_diffusers_ddim_steps_to_t_minus_T_over_S_which_is_wrong_off_leading(spacing, steps):
    """diffusers' DDIMScheduler.step goes from t to t - T // S (issues #9261, #12633): right for leading
    spacing only. Ours steps to the next kept timestep, which is the closed form."""
    kept = descending(spacing, steps)
    sched = f64(DDIMScheduler(**BETAS, timestep_spacing=spacing, set_alpha_to_one=True, clip_sample=False))
    sched.set_timesteps(steps)
    model, x = tiny("eps"), X_T.clone()
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x, eta=0.0).prev_sample
    theirs = ddim_by_hand("eps", kept, lambda t: t - T // steps)
    closed_form = ddim_by_hand("eps", kept, lambda t: ([k for k in kept if k < t] or [-1])[0])
    got = ours("ddim", "eps", spacing, steps)
    assert max_diff(x, theirs) < TOL and max_diff(got, closed_form) < 1e-12
    assert max_diff(got, x) > 1e-3


def test_diffusers_ddim_matches_ours_with_leading_spacing():
    sched = f64(DDIMScheduler(**BETAS, timestep_spacing="leading", set_alpha_to_one=True, clip_sample=False,
                              prediction_type="v_prediction"))
    sched.set_timesteps(7)
    model, x = tiny("v"), X_T.clone()
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x, eta=0.0).prev_sample
    assert max_diff(x, ours("ddim", "v", "leading", 7)) < TOL


# --- our own checks --------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_nfe_counts_model_calls_at_kept_timesteps(sampler):
    for steps in (1, 2, 10):
        calls = []
        sample(tiny("v", calls), SCHEDULE, X_T.shape, sampler=sampler, steps=steps, prediction="v",
               variance="fixed_small", x_T=X_T, spacing="trailing", generator=torch.Generator().manual_seed(0))
        assert len(calls) == nfe(sampler, steps)
        assert set(calls) == set(spaced_timesteps(T, steps, "trailing"))
    assert (nfe("ddpm", 10), nfe("ddim", 10), nfe("dpmpp_2m", 10), nfe("heun", 10)) == (10, 10, 10, 19)
    with pytest.raises(ValueError, match="unknown sampler 'no_such_sampler'"):
        nfe("no_such_sampler", 10)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "heun"])
def test_new_samplers_reject_eta_and_accept_learned_range(sampler):
    kw = dict(sampler=sampler, steps=5, prediction="x0", x_T=X_T, device="cpu")
    with pytest.raises(ValueError, match=f"eta applies to sampler 'ddim' only; got eta=0.5 with sampler '{sampler}'"):
        sample(tiny("x0"), SCHEDULE, X_T.shape, eta=0.5, variance="fixed_small", **kw)
    learned = lambda x, t: torch.cat([tiny("x0")(x, t), torch.zeros_like(x)], 1)  # noqa: E731
    a = sample(learned, SCHEDULE, X_T.shape, variance="learned_range", **kw)
    assert torch.equal(a, sample(tiny("x0"), SCHEDULE, X_T.shape, variance="fixed_small", **kw))


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "heun"])
def test_callback_and_clipping(sampler):
    seen = []
    x = sample(lambda x, t: -5 * torch.ones_like(x), SCHEDULE, (2, 1, 3, 3), sampler=sampler, steps=5,
               prediction="x0", variance="fixed_small", clip_x0=True, device="cpu",
               callback=lambda i, t, x, x0: seen.append((i, int(t[0]), x0.max().item())))
    assert seen == [(i, t, -1.0) for i, t in enumerate(descending("leading", 5))]
    assert torch.equal(x, -torch.ones_like(x))


def oracle(schedule, data, prediction):
    """The Bayes-optimal model for a few data points: E[x0 | x_t] under q, as `prediction`."""
    def model(xt, t):
        c = coefs(schedule, t, like=xt)
        d2 = ((xt[:, None] - c.a[:, None] * data[None]) ** 2).flatten(2).sum(-1)
        w = torch.softmax(-d2 / (2 * c.b.flatten()[:, None] ** 2), dim=1)
        x0 = torch.einsum("bn,n...->b...", w, data)
        return PREDICTIONS[prediction].target(x0, (xt - c.a * x0) / c.b, c)
    return model


@pytest.mark.parametrize("spacing", list(SPACINGS))
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("sampler", ["dpmpp_2m", "heun"])
def test_oracle_recovers_the_single_data_point(sampler, prediction, spacing):
    s = make_schedule("cosine", T)
    x_star = torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    x_T = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for steps in (1, 10):
        x = sample(oracle(s, x_star, prediction), s, x_T.shape, sampler=sampler, steps=steps, prediction=prediction,
                   variance="fixed_small", x_T=x_T, spacing=spacing, device="cpu")
        assert torch.allclose(x, x_star.expand_as(x), atol=1e-6)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "heun"])
def test_oracle_samples_land_on_data_points(sampler):
    data = torch.tensor([-0.8, 0.1, 0.9], dtype=torch.float64).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    x_T = torch.randn(64, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = sample(oracle(SCHEDULE, data, "eps"), SCHEDULE, x_T.shape, sampler=sampler, steps=25, prediction="eps",
               variance="fixed_small", x_T=x_T, device="cpu")
    nearest = (x[:, None] - data[None]).flatten(2).abs().amax(-1).min(1).values
    assert (nearest < 0.05).all()
