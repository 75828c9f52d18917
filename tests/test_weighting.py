"""Loss weighting over timesteps: each weighting is its paper's closed form for eps, x0 and v, uniform is the
loss as it was, bad specs fail before anything runs, and training logs the unweighted MSE beside the loss."""
import inspect
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_spec

from ablations.commands.cli import main
from ablations.run.config import TRAIN_FIELDS, TrainConfig
from ablations.store.layout import ROWS, run_folder
from ablations.grid.spec import SpecError, load_spec
from core.diffusion import coefs, q_sample
from core.losses import PARAMS, WEIGHTINGS, loss_terms, mean_flat
from core.parameterizations import PREDICTIONS
from core.schedules import make_schedule

T_ALL = torch.tensor([0, 1, 10, 50, 100, 200, 300, 500, 700, 900, 999])


def _batch(s, t, dtype=torch.float64, channels=1):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(len(t), 1, 4, 4, generator=g, dtype=dtype) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=dtype)
    out = torch.randn(len(t), channels, 4, 4, generator=g, dtype=dtype)  # a wrong prediction, of any target
    return x0, noise, q_sample(s, x0, t, noise), out


def _snr(s, t):
    ab = s.alphas_cumprod[t]
    return ab / (1 - ab)


# The papers' weights of each target's unweighted MSE (Hang et al. 2023, App. B; Choi et al. 2022, Eq. 8 with
# DDPM's lambda_t, carried to x0 and v by mse_eps = SNR mse_x0 = SNR / (SNR + 1) mse_v), and of the eps MSE
CLOSED = {
    ("min_snr", "eps"): lambda r, g: torch.minimum(r, torch.tensor(g)) / r,
    ("min_snr", "x0"): lambda r, g: torch.minimum(r, torch.tensor(g)),
    ("min_snr", "v"): lambda r, g: torch.minimum(r, torch.tensor(g)) / (r + 1),
    ("p2", "eps"): lambda r, g, k: 1 / (k + r) ** g,
    ("p2", "x0"): lambda r, g, k: r / (k + r) ** g,
    ("p2", "v"): lambda r, g, k: r / ((r + 1) * (k + r) ** g),
}
EPS_SPACE = {"min_snr": lambda r, g: torch.minimum(r, torch.tensor(g)) / r, "p2": lambda r, g, k: 1 / (k + r) ** g}
PAPERS = {"min_snr": {"snr_gamma": 5.0}, "p2": {"p2_gamma": 1.0, "p2_k": 1.0}}  # the defaults they cite
OTHER = {"min_snr": {"snr_gamma": 2.0}, "p2": {"p2_gamma": 0.5, "p2_k": 3.0}}  # and others, to see them passed


@pytest.mark.parametrize("params", ["papers", "other"])
@pytest.mark.parametrize("weighting, prediction", list(CLOSED))
def test_each_weighting_is_its_papers_closed_form(weighting, prediction, params):
    """loss = weight(t) * the target's unweighted MSE, with the paper's weight for that target; and the same
    number computed in eps space, from the eps the output implies: one objective whatever the target."""
    s = make_schedule("linear", 1000)
    x0, noise, xt, out = _batch(s, T_ALL)
    kw = PAPERS[weighting] if params == "papers" else OTHER[weighting]
    terms = loss_terms(s, out, x0, xt, T_ALL, noise, prediction=prediction, variance="fixed_small", loss="simple",
                       weighting=weighting, **({} if params == "papers" else kw))
    pred, c = PREDICTIONS[prediction], coefs(s, T_ALL, like=x0)
    mse = mean_flat((pred.target(x0, noise, c) - out) ** 2)
    assert torch.equal(terms["mse"], mse)  # unweighted
    r = _snr(s, T_ALL)
    weight = CLOSED[weighting, prediction](r, *kw.values())
    assert torch.allclose(terms["loss"], weight * mse, rtol=1e-12, atol=0)
    assert not torch.allclose(weight, torch.ones_like(weight), rtol=0.1)  # a weighting that weights
    eps_mse = mean_flat((noise - pred.to_eps(xt, out, c)) ** 2)
    assert torch.allclose(terms["loss"], EPS_SPACE[weighting](r, *kw.values()) * eps_mse, rtol=1e-6, atol=0)


@pytest.mark.parametrize("prediction", ["x0", "v"])
@pytest.mark.parametrize("weighting", ["min_snr", "p2"])
def test_weights_are_finite_at_zero_terminal_snr(weighting, prediction):
    """With alpha_bar[T-1] = 0 (Lin et al. 2023) SNR is 0 there: the closed forms give min(0, g) = 0 (min-SNR)
    and 0 / k^g = 0 (P2) for x0 and v, not 0/0."""
    s = make_schedule("linear", 1000, zero_terminal_snr=True)
    t = torch.tensor([0, 500, 999])
    x0, noise, xt, out = _batch(s, t)
    terms = loss_terms(s, out, x0, xt, t, noise, prediction=prediction, variance="fixed_small", loss="simple",
                       weighting=weighting)
    weight = CLOSED[weighting, prediction](_snr(s, t), *PAPERS[weighting].values())
    assert torch.isfinite(terms["loss"]).all() and terms["loss"][-1] == 0
    assert torch.allclose(terms["loss"], weight * terms["mse"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_uniform_is_the_loss_as_it_was_bit_for_bit(prediction):
    """float32 as in training: the loss and its gradient equal L_simple's unweighted MSE exactly, and the
    default is uniform."""
    s = make_schedule("cosine", 1000)
    x0, noise, xt, out = _batch(s, T_ALL, dtype=torch.float32)
    target = PREDICTIONS[prediction].target(x0, noise, coefs(s, T_ALL, like=x0))
    grads = []
    for kw in ({}, {"weighting": "uniform"}, None):
        o = out.clone().requires_grad_(True)
        if kw is None:
            loss = mean_flat((target - o) ** 2)  # L_simple as written before weightings
        else:
            loss = loss_terms(s, o, x0, xt, T_ALL, noise, prediction=prediction, variance="fixed_small",
                              loss="simple", **kw)["loss"]
        loss.mean().backward()
        grads.append((loss.detach(), o.grad))
    for loss, grad in grads[:2]:
        assert torch.equal(loss, grads[2][0]) and torch.equal(grad, grads[2][1])


def test_hybrid_weights_only_the_mse_term_and_vlb_takes_no_weighting():
    s = make_schedule("cosine", 1000)
    x0, noise, xt, out = _batch(s, T_ALL, channels=2)
    kw = dict(prediction="eps", variance="learned_range")
    plain = loss_terms(s, out, x0, xt, T_ALL, noise, loss="hybrid", **kw)
    weighted = loss_terms(s, out, x0, xt, T_ALL, noise, loss="hybrid", weighting="min_snr", **kw)
    weight = CLOSED["min_snr", "eps"](_snr(s, T_ALL), 5.0)
    assert torch.equal(weighted["vb"], plain["vb"]) and torch.equal(weighted["mse"], plain["mse"])
    assert torch.allclose(weighted["loss"], weight * plain["mse"] + 0.001 * 1000 * plain["vb"], rtol=1e-12)
    with pytest.raises(ValueError, match="weighting 'p2' weights the mse term, which loss 'vlb'"):
        loss_terms(s, out, x0, xt, T_ALL, noise, loss="vlb", weighting="p2", **kw)
    with pytest.raises(ValueError, match="unknown weighting 'snr'; valid choices: 'uniform', 'min_snr', 'p2'"):
        loss_terms(s, out, x0, xt, T_ALL, noise, loss="hybrid", weighting="snr", **kw)


def test_the_config_defaults_are_the_papers_and_rename_no_run():
    """Each weighting's keywords are TrainConfig fields with the same defaults; at their defaults the run id
    is unchanged, and a weighting that differs renames the run."""
    for name, params in PARAMS.items():
        signature = inspect.signature(WEIGHTINGS[name]).parameters
        assert all(TRAIN_FIELDS[p].default == signature[p].default for p in params)
    assert PARAMS == {"uniform": (), "min_snr": ("snr_gamma",), "p2": ("p2_gamma", "p2_k")}
    base = TrainConfig(T=100, seed=2)
    same = replace(base, weighting="uniform", snr_gamma=5.0, p2_gamma=1.0, p2_k=1.0)
    assert same.run_id() == base.run_id()
    ids = {replace(base, weighting=w).run_id() for w in WEIGHTINGS}
    ids.add(replace(base, weighting="min_snr", snr_gamma=3.0).run_id())
    assert len(ids) == 4


SPEC = tiny_spec("w", steps=4)


def _spec(tmp_path, base_lines):
    text = SPEC.replace("[base]\n", "[base]\n" + base_lines + "\n", 1)
    p = tmp_path / "spec.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("lines, key, words", [
    ('weighting = "minsnr"', "base.weighting", "unknown weighting 'minsnr'; valid choices: 'uniform', 'min_snr', 'p2'"),
    ('weighting = "min_snr"\nsnr_gamma = 0.0', "base.snr_gamma", "0.0 is out of range; valid: a number > 0"),
    ('weighting = "min_snr"\nsnr_gamma = -5', "base.snr_gamma", "-5.0 is out of range; valid: a number > 0"),
    ('weighting = "min_snr"\nsnr_gamma = "5"', "base.snr_gamma", "expected float, got str '5'"),
    ('weighting = "p2"\np2_k = 0.0', "base.p2_k", "valid: a number > 0"),
    ('weighting = "p2"\np2_gamma = -1.0', "base.p2_gamma", "valid: a number >= 0"),
    ('weighting = "p2"\nsnr_gamma = 3.0', "base.snr_gamma", "read only by weighting 'min_snr', but the run's "
                                                            "weighting is 'p2'"),
    ('weighting = "min_snr"\nloss = "vlb"', "base.weighting", "loss 'vlb' does not have; valid losses for it: "
                                                             "'simple', 'hybrid'"),
])
def test_a_bad_weighting_is_a_clear_error_before_anything_runs(tmp_path, lines, key, words):
    path = _spec(tmp_path, lines)
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert str(e.value).startswith(f"{path}: key '{key}': ") and words in str(e.value), str(e.value)


def test_a_min_snr_run_logs_the_unweighted_mse_beside_its_loss(tmp_path):
    """Every train_loss row has a train_mse row at the same step; min-SNR's eps weights min(1, 5 / SNR) are at
    most 1, so the weighted loss is at most the MSE, and below it where a batch drew a t with SNR > 5."""
    path = _spec(tmp_path, 'weighting = "min_snr"')
    spec = load_spec(path)
    assert spec.runs[0].config.weighting == "min_snr"
    r = CliRunner().invoke(main, ["run", str(path), "--runs-root", str(tmp_path / "runs"), "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (run_folder(tmp_path / "runs", spec.runs[0].run_id) / ROWS).open()]
    loss = {r["train_step"]: r["value"] for r in rows if r["metric"] == "train_loss"}
    mse = {r["train_step"]: r["value"] for r in rows if r["metric"] == "train_mse"}
    assert sorted(loss) == sorted(mse) == [1, 2, 3, 4]
    assert all(loss[s] <= mse[s] * (1 + 1e-6) for s in loss) and any(loss[s] < 0.99 * mse[s] for s in loss)


def test_the_weighting_finding_is_decided_at_each_checkpoint():
    """min-SNR's finding (Hang et al. 2023, Fig. 1) compares min_snr with uniform on FID, per seed, at every
    checkpoint the rows scored: here min_snr is 20 FID lower at 175 and 350 steps and level at 700."""
    import pandas as pd

    from ablations.reporting.verdicts import assess, published
    spec = load_spec(Path(__file__).resolve().parent.parent / "ablations" / "weighting.toml")
    found_in = {"weighting-cpu": published(spec.findings)}  # as collect writes it
    (finding,) = found_in["weighting-cpu"].findings
    assert (finding.metric, finding.expect, finding.a, finding.b) == (
        "fid", "lower", {"weighting": "min_snr"}, {"weighting": "uniform"})
    gap, spread = {175: -20.0, 350: -20.0, 700: 0.0}, (0.0, 1.0, -1.0)  # min_snr - uniform: mean, per seed
    rows = pd.DataFrame([{"metric": "fid", "phase": "eval", "train_step": step, "seed": s, "weighting": w,
                          "sampler": "ddim", "steps": 20, "eta": 0.0, "spacing": "leading", "clip_x0": True,
                          "value": 300.0 - step / 10 + 7 * s + (gap[step] + spread[s] if w == "min_snr" else 0.0)}
                         for step in gap for s in range(3) for w in ("min_snr", "uniform")])
    found = {v["train_step"]: v for v in assess([("weighting-cpu", "weighting", rows)], found_in)}
    assert sorted(found) == [175, 350, 700]
    assert found[175]["verdict"] == found[350]["verdict"] == "agrees"
    assert found[700]["verdict"] == "inconclusive" and found[700]["last"]


def test_the_loss_plot_draws_the_unweighted_mse_beside_the_loss(monkeypatch, tmp_path):
    import pandas as pd

    from ablations.reporting import plots
    figures = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, out_dir, name: figures.setdefault(name, fig) and [])
    rows = pd.DataFrame([{"metric": m, "phase": "train", "train_step": step, "seed": s, "weighting": w,
                          "prediction": "eps", "value": 1.0 / step + (0.1 if m == "train_mse" else 0.0)}
                         for m in ("train_loss", "train_mse") for step in (1, 2, 3) for s in range(2)
                         for w in ("uniform", "min_snr")])

    def curves(d):
        figures.clear()
        plots.loss_curves(d, "weighting", tmp_path)
        return [line for ax in figures["loss"].axes for line in ax.get_lines() if len(line.get_xdata())]
    assert len(curves(rows)) == 4  # loss and MSE of each weighting
    assert len(curves(rows[rows["metric"] == "train_loss"])) == 2  # rows from before train_mse: the loss only
