import pytest
import torch

from core.diffusion import coefs, q_sample
from core.likelihood import nll_bpd, prior_bpd, stratify
from core.losses import loss_terms, vb_from_coefs
from core.parameterizations import PREDICTIONS
from core.schedules import make_schedule


def _batch(s, seed=0, B=4, t=None):
    g = torch.Generator().manual_seed(seed)
    x0 = (torch.rand(B, 1, 6, 6, generator=g, dtype=torch.float64) * 2 - 1)
    noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    t = torch.randint(0, s.T, (B,), generator=g) if t is None else t
    return x0, noise, t, q_sample(s, x0, t, noise)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_kl_is_zero_when_the_model_predicts_the_true_posterior(prediction):
    s = make_schedule("cosine", 1000)
    x0, noise, t, xt = _batch(s, t=torch.tensor([1, 10, 500, 999]))
    out = PREDICTIONS[prediction].target(x0, noise, coefs(s, t, like=x0))
    terms = loss_terms(s, out, x0, xt, t, noise, prediction=prediction, variance="fixed_small", loss="hybrid")
    assert torch.allclose(terms["mse"], torch.zeros(4, dtype=torch.float64), atol=1e-20)
    assert torch.allclose(terms["vb"], torch.zeros(4, dtype=torch.float64), atol=1e-9)


def test_wrong_prediction_has_positive_kl_and_mse():
    s = make_schedule("linear", 1000)
    x0, noise, t, xt = _batch(s, t=torch.tensor([1, 10, 500, 999]))
    terms = loss_terms(s, noise + 0.1, x0, xt, t, noise, prediction="eps", variance="fixed_small", loss="vlb")
    assert (terms["vb"] > 0).all()
    assert torch.allclose(terms["mse"], torch.full((4,), 0.01, dtype=torch.float64))
    assert torch.allclose(terms["loss"], 1000 * terms["vb"])


def test_decoder_nll_at_t0_is_bits_per_dim_of_a_discretized_gaussian():
    """At t=0 a perfect mean is x0 itself; an interior pixel then costs -log2(2 Phi(h/sigma) - 1)
    bits with h = 1/255 and sigma^2 the clipped beta_tilde; an edge pixel -log2 Phi(h/sigma)."""
    s = make_schedule("linear", 1000)
    x0 = torch.tensor([-1.0, 1.0, 3 / 255, 101 / 255], dtype=torch.float64).view(4, 1, 1, 1)
    noise = torch.randn_like(x0)
    t = torch.zeros(4, dtype=torch.long)
    xt = q_sample(s, x0, t, noise)
    vb = loss_terms(s, noise, x0, xt, t, noise, prediction="eps", variance="fixed_small", loss="vlb")["vb"]
    normal = torch.distributions.Normal(0.0, s.posterior_log_variance_clipped[0].mul(0.5).exp())
    edge, inside = normal.cdf(torch.tensor(1 / 255)), 2 * normal.cdf(torch.tensor(1 / 255)) - 1
    want = -torch.stack([edge, edge, inside, inside]).log2()
    assert torch.allclose(vb, want.double(), rtol=1e-6)
    worse = loss_terms(s, noise + 1, x0, xt, t, noise, prediction="eps", variance="fixed_small", loss="vlb")["vb"]
    assert (worse[1:] > vb[1:] + 1).all()  # at x = -1 a lower mean only helps the open edge bin


def test_hybrid_is_mse_plus_lambda_T_vb_and_vb_trains_only_the_variance():
    s = make_schedule("cosine", 1000)
    x0, noise, t, xt = _batch(s)
    out = torch.randn(4, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    terms = loss_terms(s, out, x0, xt, t, noise, prediction="eps", variance="learned_range", loss="hybrid")
    assert torch.allclose(terms["loss"], terms["mse"] + 0.001 * 1000 * terms["vb"])
    (grad,) = torch.autograd.grad(terms["vb"].sum(), out)
    assert (grad[:, :1] == 0).all() and (grad[:, 1:] != 0).any()
    vlb = loss_terms(s, out, x0, xt, t, noise, prediction="eps", variance="learned_range", loss="vlb")
    (grad,) = torch.autograd.grad(vlb["loss"].sum(), out)
    assert (grad[:, :1] != 0).any()


def test_loss_shapes_and_bad_arguments():
    s = make_schedule("linear", 100)
    x0, noise, t, xt = _batch(s)
    terms = loss_terms(s, noise, x0, xt, t, noise, prediction="v", variance="fixed_large", loss="simple")
    assert {k: v.shape for k, v in terms.items()} == {k: (4,) for k in ("mse", "vb", "loss")}
    with pytest.raises(ValueError, match=r"unknown loss 'l1'.*'simple', 'hybrid', 'vlb'"):
        loss_terms(s, noise, x0, xt, t, noise, prediction="eps", variance="fixed_small", loss="l1")
    with pytest.raises(ValueError, match="needs loss 'hybrid' or 'vlb'"):
        loss_terms(s, torch.cat([noise, noise], 1), x0, xt, t, noise, prediction="eps",
                   variance="learned_range", loss="simple")
    with pytest.raises(ValueError, match=r"shape mismatch: noise"):
        loss_terms(s, noise, x0, xt, t, noise[:, :, :5], prediction="eps", variance="fixed_small", loss="simple")


def _toy_model(x, t):
    return 0.3 * x + 0.001 * t.view(-1, 1, 1, 1)


def test_stratified_nll_with_K_equal_T_is_the_exact_sum():
    s = make_schedule("cosine", 20)
    x0, *_ = _batch(s, B=3)
    exact = nll_bpd(_toy_model, s, x0, prediction="eps", variance="fixed_large",
                    generator=torch.Generator().manual_seed(1))
    strat = nll_bpd(_toy_model, s, x0, prediction="eps", variance="fixed_large", strata=20,
                    generator=torch.Generator().manual_seed(1))
    assert exact["method"] == strat["method"] == "exact" and exact["strata"] == strat["strata"] == 20
    assert torch.equal(exact["bpd"], strat["bpd"])
    assert torch.allclose(exact["bpd"], exact["prior"] + exact["vb"])


def test_stratified_nll_is_unbiased():
    s = make_schedule("cosine", 12)
    x0 = torch.full((20_000, 1, 2, 2), 0.25, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    exact = nll_bpd(_toy_model, s, x0, prediction="eps", variance="fixed_small", generator=g)["bpd"]
    strat = nll_bpd(_toy_model, s, x0, prediction="eps", variance="fixed_small", strata=3, generator=g)["bpd"]
    se = (exact.var() / len(exact) + strat.var() / len(strat)).sqrt().item()
    assert abs(exact.mean().item() - strat.mean().item()) < 4 * se
    assert strat.var() > exact.var()  # the estimate is cheaper, not free


def test_geometric_strata_give_the_low_noise_terms_blocks_of_their_own():
    assert stratify(1000, 16)[:4] == [(0, 1), (1, 2), (2, 3), (3, 5)] and stratify(1000, 16)[-1] == (649, 1000)
    for T, K in ((1000, 16), (12, 3), (20, 19), (100, 4), (4000, 32)):
        blocks = stratify(T, K)
        assert len(blocks) == K and blocks[0][0] == 0 and blocks[-1][1] == T
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        assert all(hi - lo <= b[1] - b[0] for (lo, hi), b in zip(blocks, blocks[1:]))  # widths never shrink
    assert stratify(20, 20) == stratify(20, 0) == [(t, t + 1) for t in range(20)]


def test_stratified_nll_spread_is_close_to_the_exact_sums():
    """The bound's terms peak at low noise (L_0, and the KL weight beta_t / (1 - alpha_bar_t) of the
    eps error). With 16 equal blocks of 62 steps one image's estimate spreads ~50x wider than the
    exact sum's own noise; the geometric blocks keep it within 2x, and unbiased."""
    s = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(1, 1, 6, 6, generator=g, dtype=torch.float64) * 2 - 1).repeat(400, 1, 1, 1)
    exact = nll_bpd(_toy_model, s, x0, prediction="eps", variance="fixed_small",
                    generator=torch.Generator().manual_seed(1))["bpd"]
    strat = nll_bpd(_toy_model, s, x0, prediction="eps", variance="fixed_small", strata=16,
                    generator=torch.Generator().manual_seed(2))["bpd"]
    assert strat.std() < 2 * exact.std()
    se = (exact.var() / len(exact) + strat.var() / len(strat)).sqrt().item()
    assert abs(exact.mean().item() - strat.mean().item()) < 4 * se


def test_prior_term_is_small_for_a_long_schedule():
    s = make_schedule("linear", 1000)
    assert (prior_bpd(s, torch.ones(2, 1, 3, 3)) < 1e-4).all()


def test_nll_bounds_the_clipped_sampler_model():
    """The cosine schedule's last beta is clipped to 0.999: without clipping x0 its L_{T-1} turns a
    10% eps error at pure noise into bits/dim; with it (the default, as the samplers do) it stays ~0."""
    s = make_schedule("cosine", 1000)
    x0 = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    model = lambda x, t: 0.9 * x  # noqa: E731  (at t = T-1, x_t is the noise: a 10% error)
    t = torch.full((2,), 999)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    xt = q_sample(s, x0, t, noise)
    last = {clip: vb_from_coefs(coefs(s, t, like=x0), model(xt, t), x0, xt, t, prediction="eps",
                                variance="fixed_small", clip_x0=clip) for clip in (False, True)}
    assert (last[False] > 1).all() and (last[True] < 1e-3).all()
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    default = nll_bpd(model, s, x0, prediction="eps", variance="fixed_small", generator=g())["bpd"]
    clipped = nll_bpd(model, s, x0, prediction="eps", variance="fixed_small", generator=g(), clip_x0=True)["bpd"]
    raw = nll_bpd(model, s, x0, prediction="eps", variance="fixed_small", generator=g(), clip_x0=False)["bpd"]
    assert torch.equal(default, clipped) and (raw - clipped > 1).all()
