import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.diffusion import coefs, p_mean_variance, q_posterior, q_sample
from core.parameterizations import PREDICTIONS
from core.schedules import make_schedule


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("t", [0, 10, 499, 999])
def test_q_sample_has_closed_form_moments(name, t):
    """Iterating x_s = sqrt(1 - beta_s) x_{s-1} + sqrt(beta_s) z matches N(sqrt(ab_t) x0, (1 - ab_t) I)."""
    s = make_schedule(name, 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1, 1, 1), 0.7, dtype=torch.float64)
    x = x0.clone()
    for k in range(t + 1):  # alphas_cumprod[t] includes beta_t, so t + 1 steps
        x = (1 - s.betas[k]).sqrt() * x + s.betas[k].sqrt() * torch.randn(x.shape, generator=g, dtype=x.dtype)
    ab = s.alphas_cumprod[t].item()
    assert x.mean().item() == pytest.approx(0.7 * math.sqrt(ab), abs=5e-3)
    assert x.var().item() == pytest.approx(1 - ab, abs=5e-3)
    tt = torch.full((x0.shape[0],), t)
    xt = q_sample(s, x0, tt, torch.randn(x0.shape, generator=g, dtype=x0.dtype))
    assert xt.mean().item() == pytest.approx(0.7 * math.sqrt(ab), abs=5e-3)
    assert xt.var().item() == pytest.approx(1 - ab, abs=5e-3)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("t", [1, 5, 300, 998])
def test_posterior_agrees_with_bayes_rule(name, t):
    """q(x_{t-1} | x_t, x0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x0), integrated numerically on a grid."""
    s = make_schedule(name, 1000)
    x0, xt = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[-0.4]], dtype=torch.float64)
    ab_prev, beta = s.alphas_cumprod[t - 1], s.betas[t]
    grid = torch.linspace(-6, 6, 400_001, dtype=torch.float64)
    log_prior = -((grid - ab_prev.sqrt() * x0) ** 2) / (2 * (1 - ab_prev))
    log_lik = -((xt - (1 - beta).sqrt() * grid) ** 2) / (2 * beta)
    w = torch.softmax((log_prior + log_lik).flatten(), 0)
    mean = (w * grid).sum()
    var = (w * (grid - mean) ** 2).sum()
    m, v, lv = q_posterior(s, x0, xt, torch.tensor([t]))
    assert m.item() == pytest.approx(mean.item(), abs=1e-6)
    assert v.item() == pytest.approx(var.item(), rel=1e-4)
    assert lv.item() == pytest.approx(math.log(var.item()), abs=1e-4)


def test_posterior_at_t0_is_x0_with_clipped_log_variance():
    s = make_schedule("linear", 1000)
    x0, xt = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.randn(2, 1, 4, 4, dtype=torch.float64)
    m, v, lv = q_posterior(s, x0, xt, torch.tensor([0, 0]))
    assert torch.allclose(m, x0) and (v == 0).all()
    assert torch.allclose(lv, s.posterior_variance[1].log().expand_as(lv))


@settings(max_examples=60, deadline=None)
@given(prediction=st.sampled_from(["eps", "x0", "v"]), name=st.sampled_from(["linear", "cosine"]),
       t=st.integers(0, 999), seed=st.integers(0, 2**31 - 1))
def test_parameterizations_round_trip(prediction, name, t, seed):
    s = make_schedule(name, 1000)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64)
    tt = torch.full((3,), t)
    c = coefs(s, tt, like=x0)
    xt = q_sample(s, x0, tt, eps)
    p = PREDICTIONS[prediction]
    out = p.target(x0, eps, c)
    tol = 1e-6 if prediction != "eps" else 1e-6 / max(c.a.min().item(), 1e-3)
    assert torch.allclose(p.to_x0(xt, out, c), x0, atol=tol)
    assert torch.allclose(p.to_eps(xt, out, c), eps, atol=1e-6 / max(c.b.min().item(), 1e-3))


def test_learned_range_endpoints_are_beta_tilde_and_beta():
    s = make_schedule("cosine", 1000)
    t = torch.tensor([0, 1, 500, 999])
    xt = torch.zeros(4, 1, 2, 2, dtype=torch.float64)
    out = torch.zeros(4, 2, 2, 2, dtype=torch.float64)
    lo = p_mean_variance(s, out.index_fill(1, torch.tensor([1]), -1.0), xt, t, prediction="eps",
                         variance="learned_range")
    hi = p_mean_variance(s, out.index_fill(1, torch.tensor([1]), 1.0), xt, t, prediction="eps",
                         variance="learned_range")
    assert torch.allclose(lo["log_variance"][:, 0, 0, 0], s.posterior_log_variance_clipped[t])
    assert torch.allclose(hi["log_variance"][:, 0, 0, 0], s.betas[t].log())
    assert torch.allclose(lo["variance"][1:, 0, 0, 0], s.posterior_variance[t[1:]])


def test_fixed_variances():
    s = make_schedule("linear", 1000)
    t = torch.tensor([0, 1, 999])
    xt, out = torch.zeros(3, 1, 2, 2, dtype=torch.float64), torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    small = p_mean_variance(s, out, xt, t, prediction="eps", variance="fixed_small")["variance"][:, 0, 0, 0]
    large = p_mean_variance(s, out, xt, t, prediction="eps", variance="fixed_large")["variance"][:, 0, 0, 0]
    bt = s.posterior_variance
    assert torch.allclose(small, torch.stack([bt[1], bt[1], bt[999]]))
    assert torch.allclose(large, torch.stack([bt[1], s.betas[1], s.betas[999]]))


def test_bad_arguments_name_the_choices():
    s = make_schedule("cosine", 10)
    x, t = torch.zeros(2, 1, 4, 4), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"unknown prediction 'score'.*'eps', 'x0', 'v'"):
        p_mean_variance(s, x, x, t, prediction="score", variance="fixed_small")
    with pytest.raises(ValueError, match=r"unknown variance 'learned'.*'fixed_small', 'fixed_large', 'learned_range'"):
        p_mean_variance(s, x, x, t, prediction="eps", variance="learned")
    with pytest.raises(ValueError, match=r"model output has shape \(2, 1, 4, 4\), expected \(2, 2, 4, 4\)"):
        p_mean_variance(s, x, x, t, prediction="eps", variance="learned_range")
    with pytest.raises(ValueError, match="shape mismatch"):
        q_sample(s, x, t, torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
        q_sample(s, x, torch.tensor([1, 2, 3]), x)
