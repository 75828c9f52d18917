import math

import pytest
import torch

from core.diffusion import coefs, p_mean_variance, q_sample
from core.parameterizations import PREDICTIONS
from core.samplers import ddim_mean_variance, sample
from core.schedules import make_schedule


def oracle(schedule, data, prediction):
    """The Bayes-optimal model for a dataset of a few points: E[x0 | x_t] under q, as `prediction`."""
    def model(xt, t):
        c = coefs(schedule, t, like=xt)
        d2 = ((xt[:, None] - c.a[:, None] * data[None]) ** 2).flatten(2).sum(-1)  # (B, N)
        w = torch.softmax(-d2 / (2 * c.b.flatten()[:, None] ** 2), dim=1)
        x0 = torch.einsum("bn,n...->b...", w, data)
        eps = (xt - c.a * x0) / c.b
        return PREDICTIONS[prediction].target(x0, eps, c)
    return model


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("steps", [1, 10, 100])
def test_ddim_eta0_with_an_oracle_recovers_the_single_data_point(prediction, steps):
    s = make_schedule("cosine", 1000)
    x_star = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 2 - 1
    x_T = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = sample(oracle(s, x_star, prediction), s, (3, 1, 4, 4), sampler="ddim", steps=steps,
               prediction=prediction, variance="fixed_small", x_T=x_T, device="cpu")
    assert torch.allclose(x, x_star.expand_as(x), atol=1e-6)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_oracle_samples_land_on_data_points(sampler):
    s = make_schedule("linear", 1000)
    data = torch.tensor([-0.8, 0.1, 0.9], dtype=torch.float64).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(64, 1, 2, 2, dtype=torch.float64, generator=g)
    x = sample(oracle(s, data, "eps"), s, (64, 1, 2, 2), sampler=sampler, steps=100, prediction="eps",
               variance="fixed_small", x_T=x_T, generator=g, device="cpu")
    nearest = (x[:, None] - data[None]).flatten(2).abs().amax(-1).min(1).values
    assert (nearest < 0.05).all()


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddim_with_eta1_matches_ddpm_fixed_small_per_step(prediction):
    s = make_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([1, 2, 50, 500, 999])
    xt = torch.randn(5, 1, 3, 3, generator=g, dtype=torch.float64)
    out = torch.randn(5, 1, 3, 3, generator=g, dtype=torch.float64)
    ddpm = p_mean_variance(s, out, xt, t, prediction=prediction, variance="fixed_small")
    mean, var, _ = ddim_mean_variance(coefs(s, t, like=xt), out, xt, prediction=prediction,
                                      variance="fixed_small", eta=1.0)
    assert torch.allclose(mean, ddpm["mean"], atol=1e-10)
    assert torch.allclose(var.expand_as(xt), s.posterior_variance[t].view(-1, 1, 1, 1).expand_as(xt), rtol=1e-10)


def test_sampling_is_reproducible_from_the_generator_and_model_sees_original_timesteps():
    s = make_schedule("linear", 1000)
    seen = []
    model = lambda x, t: (seen.append(t[0].item()), 0.1 * x)[1]  # noqa: E731
    run = lambda: sample(model, s, (2, 1, 3, 3), sampler="ddpm", steps=4, prediction="eps",  # noqa: E731
                         variance="fixed_large", generator=torch.Generator().manual_seed(5), device="cpu")
    a, b = run(), run()
    assert torch.equal(a, b)
    assert seen[:4] == [750, 500, 250, 0]
    c = sample(model, s, (2, 1, 3, 3), sampler="ddpm", steps=4, prediction="eps", variance="fixed_large",
               generator=torch.Generator().manual_seed(6), device="cpu")
    assert not torch.equal(a, c)


def test_respaced_ddpm_uses_betas_from_kept_alpha_bar():
    """A 2-step DDPM from x_T to x0: its first step's variance is beta_tilde of the respaced schedule."""
    s = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.zeros(50_000, 1, 1, 1, dtype=torch.float64)
    xt = q_sample(s, x0, torch.full((50_000,), 500), torch.randn(x0.shape, generator=g, dtype=x0.dtype))
    calls = []
    model = lambda x, t: (calls.append(x.clone()), PREDICTIONS["x0"].target(x0, None, None))[1]  # noqa: E731
    sample(model, s, xt.shape, sampler="ddpm", steps=2, prediction="x0", variance="fixed_small", x_T=xt,
           generator=g)
    ab = s.alphas_cumprod[500].item()
    beta = 1 - ab / s.alphas_cumprod[0].item()
    beta_tilde = beta * (1 - s.alphas_cumprod[0].item()) / (1 - ab)
    assert calls[1].var().item() == pytest.approx(beta_tilde, rel=0.03)


def test_callback_and_clipping():
    s = make_schedule("linear", 100)
    steps = []
    x = sample(lambda x, t: -5 * torch.ones_like(x), s, (2, 1, 3, 3), sampler="ddim", steps=5, prediction="x0",
               variance="fixed_small", clip_x0=True, device="cpu", callback=lambda i, t, x, x0: steps.append(i))
    assert steps == [0, 1, 2, 3, 4] and torch.equal(x, -torch.ones_like(x))


def test_bad_sampler_arguments():
    s = make_schedule("linear", 100)
    m = lambda x, t: x  # noqa: E731
    kw = dict(prediction="eps", variance="fixed_small", device="cpu")
    with pytest.raises(ValueError, match=r"unknown sampler 'no_such_sampler'.*'ddpm', 'ddim'"):
        sample(m, s, (1, 1, 2, 2), sampler="no_such_sampler", steps=10, **kw)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, T=100\], got 101"):
        sample(m, s, (1, 1, 2, 2), sampler="ddim", steps=101, **kw)
    with pytest.raises(ValueError, match=r"got 0"):
        sample(m, s, (1, 1, 2, 2), sampler="ddpm", steps=0, **kw)
    with pytest.raises(ValueError, match="eta applies to sampler 'ddim' only"):
        sample(m, s, (1, 1, 2, 2), sampler="ddpm", steps=10, eta=0.5, **kw)
    with pytest.raises(ValueError, match="shape mismatch"):
        sample(m, s, (1, 1, 2, 2), sampler="ddim", steps=10, x_T=torch.zeros(1, 1, 2, 3), **kw)
    with pytest.raises(ValueError, match=r"unknown prediction 'noise'"):
        sample(m, s, (1, 1, 2, 2), sampler="ddim", steps=10, prediction="noise", variance="fixed_small")


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_clipped_ddim_mean_uses_the_eps_implied_by_the_clipped_x0(prediction):
    """With clip_x0, Eq. 12 takes eps = (x_t - a x0_clipped) / b (as guided-diffusion does)."""
    s = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([3, 400, 999])
    xt = 3 * torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    out = 3 * torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    c = coefs(s, t, like=xt)
    mean, var, x0 = ddim_mean_variance(c, out, xt, prediction=prediction, variance="fixed_small", eta=0.5,
                                       clip_x0=True)
    assert x0.abs().max() <= 1 and (x0.abs() == 1).any()
    eps = (xt - c.a * x0) / c.b
    assert torch.allclose(mean, c.a_prev * x0 + (c.b_prev**2 - var).sqrt() * eps, atol=1e-12)


@pytest.mark.parametrize("steps", [10, 100])
def test_respaced_ddpm_with_learned_range_interpolates_the_respaced_beta_and_beta_tilde(steps):
    """Improved DDPM Eq. 15 on the respaced schedule, as improved-diffusion's respace.py builds it: at kept
    step i, log sigma^2 = frac log beta_i + (1 - frac) log beta_tilde_i with beta_i = 1 - alpha_bar(k_i) /
    alpha_bar(k_{i-1}) and beta_tilde_i = beta_i (1 - alpha_bar(k_{i-1})) / (1 - alpha_bar(k_i)), frac = (v + 1)/2.
    A model predicting x0 = 0 makes each step x <- coef_xt x + sigma z; every step's x is recomputed by hand
    from the kept alpha_bar with the same draws z."""
    s = make_schedule("linear", 1000)
    kept = list(range(0, 1000, 1000 // steps))  # leading
    v_of = lambda t: torch.cos(t.double() / 150)  # noqa: E731 - the model's variance output, varying with t
    model = lambda x, t: torch.cat([torch.zeros_like(x), v_of(t).view(-1, 1, 1, 1).expand_as(x)], 1)  # noqa: E731
    x_T = torch.randn(4, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = []
    sample(model, s, x_T.shape, sampler="ddpm", steps=steps, prediction="x0", variance="learned_range", x_T=x_T,
           generator=torch.Generator().manual_seed(2), device="cpu", callback=lambda i, t, x, x0: got.append(x))
    got = torch.stack(got)

    def by_hand(respaced: bool):
        ab = [s.alphas_cumprod[k].item() for k in kept]
        g, x, out = torch.Generator().manual_seed(2), x_T.clone(), []
        for i in reversed(range(steps)):
            ab_prev = ab[i - 1] if i > 0 else 1.0
            beta = 1 - ab[i] / ab_prev if respaced else s.betas[kept[i]].item()
            x = (1 - ab_prev) * (1 - beta) ** 0.5 / (1 - ab[i]) * x  # the posterior mean's x_t term; x0 = 0
            if i > 0:
                beta_tilde = beta * (1 - ab_prev) / (1 - ab[i])
                frac = (v_of(torch.tensor(kept[i])).item() + 1) / 2
                log_var = frac * math.log(beta) + (1 - frac) * math.log(beta_tilde)
                x = x + math.exp(0.5 * log_var) * torch.randn(x.shape, generator=g, dtype=x.dtype)
            out.append(x)
        return torch.stack(out)

    assert torch.allclose(got, by_hand(respaced=True), rtol=1e-10, atol=1e-12)
    assert (got - by_hand(respaced=False)).abs().max() > 1e-2  # the original schedule's beta_t would differ


def test_every_sampler_and_the_likelihood_predict_x0_through_the_one_denoiser(monkeypatch):
    """"Predict x0, then clip" is written once (`core.diffusion.denoise`): each model call of every sampler and
    of nll_bpd goes through it, and a sampler's callback sees the x0 it returned (clipped with clip_x0)."""
    import core.diffusion
    from core.likelihood import nll_bpd
    from core.samplers import SAMPLERS, nfe
    s = make_schedule("cosine", 50)
    model = lambda x, t: 4 * x  # noqa: E731 - predicts x0 far outside [-1, 1]
    real, seen = core.diffusion.denoise, []

    def spy(*args, **kw):
        d = real(*args, **kw)
        seen.append(d.x0)
        return d
    monkeypatch.setattr(core.diffusion, "denoise", spy)
    for sampler in SAMPLERS:
        seen.clear()
        x0s = []
        sample(model, s, (2, 1, 3, 3), sampler=sampler, steps=4, prediction="x0", variance="fixed_small",
               clip_x0=True, generator=torch.Generator().manual_seed(0), device="cpu",
               callback=lambda i, t, x, x0: x0s.append(x0))
        assert len(seen) == nfe(sampler, 4), sampler
        assert all(x0.abs().max() <= 1 for x0 in seen) and any((x0.abs() == 1).any() for x0 in seen)
        assert all(any(x0 is d for d in seen) for x0 in x0s), sampler
    seen.clear()
    nll_bpd(model, s, torch.zeros(2, 1, 3, 3), prediction="x0", variance="fixed_small", strata=5,
            generator=torch.Generator().manual_seed(0))
    assert len(seen) == 5


def test_the_denoiser_is_the_unclipped_x0_clamped():
    from core.diffusion import Denoised, denoiser
    s = make_schedule("linear", 100)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 50, 99])
    xt = 3 * torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64)
    out = torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64)
    c = coefs(s, t, like=xt)
    for prediction in ("eps", "x0", "v"):
        raw = denoiser(lambda x, t: out, prediction=prediction, variance="learned_range")(xt, t, c)
        clipped = denoiser(lambda x, t: out, prediction=prediction, variance="learned_range", clip_x0=True)(xt, t, c)
        assert isinstance(raw, Denoised) and torch.equal(raw.out, out[:, :1]) and torch.equal(raw.v, out[:, 1:])
        assert torch.equal(raw.x0, PREDICTIONS[prediction].to_x0(xt, out[:, :1], c))
        assert torch.equal(clipped.x0, raw.x0.clamp(-1, 1)) and (raw.x0.abs() > 1).any()
    with pytest.raises(ValueError, match="unknown variance 'wide'"):
        denoiser(lambda x, t: out, prediction="eps", variance="wide")
