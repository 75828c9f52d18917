"""x0_rms and nll_term_bpd: the network's x0 estimate from x_t and the bound's term, scored by timestep
(eval.denoise_t), as rows: checked against models whose error is known in closed form and against the NLL's
exact sum, then end to end (rows per t and checkpoint, added to a finished run without training, a bad timestep
refused before anything runs)."""
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import special
from click.testing import CliRunner
from conftest import tiny_spec

from ablations.commands.cli import main
from ablations.run.config import TrainConfig
from ablations.grid.spec import SpecError, load_spec
from ablations.running import ledger, scoring
from ablations.run.data import to_model
from ablations.running.evaluation import denoising
from ablations.store.io import read_jsonl
from ablations.store.layout import run_folder
from core.diffusion import coefs
from core.schedules import make_schedule


class Zero(torch.nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


def _images(n=64):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)


def _by_t(prediction, images, ts, metric="x0_rms", model=None, **kw):
    got = denoising(model or Zero(), make_schedule("linear", T=1000), TrainConfig(prediction=prediction), images, ts,
                    seed=0, device="cpu", **{"batch": 16, **kw})
    return {t: got[t][metric] for t in ts}


def test_x0_rms_of_models_whose_error_is_known():
    """eps predicted as 0, unclipped: x0_hat = x_t / sqrt(abar_t) = x0 + sqrt((1 - abar_t) / abar_t) eps, so the
    RMS error is sqrt((1 - abar_t) / abar_t) times eps's RMS over 784 pixels (1 within a few %). x0 predicted
    as 0: the error is -x0 at every t, the images' own RMS."""
    abar, images, ts = make_schedule("linear", T=1000).alphas_cumprod, _images(), (0, 100, 500, 900)
    eps = _by_t("eps", images, ts, clip_x0=False)
    for t in ts:
        assert math.isclose(eps[t], math.sqrt((1 - abar[t]) / abar[t]), rel_tol=0.03), (t, eps[t])
    own = to_model(images).double().pow(2).flatten(1).mean(1).sqrt().mean().item()
    assert all(math.isclose(v, own, rel_tol=1e-6) for v in _by_t("x0", images, ts).values())
    assert _by_t("eps", images, ts, clip_x0=False, batch=64) == pytest.approx(eps, rel=1e-12)  # image i's own noise
    # clipped to [-1, 1], as the samplers use it: never farther from x0 (which lies in [-1, 1]), and at t = 900,
    # where 1 / sqrt(abar_t) ~ 50 amplifies eps, below the [-1, 1] range's RMS of 2
    clipped = _by_t("eps", images, ts)
    assert all(clipped[t] <= eps[t] + 1e-12 for t in ts) and clipped[900] < 2 < eps[900]


class Oracle(torch.nn.Module):
    """Predicts x0 exactly: the batch's clean images, known in advance."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t):
        return self.x0


def test_the_bounds_term_by_timestep_in_closed_form():
    """The bound's term at t > 0 is KL(q(x_{t-1} | x_t, x0) || p) with p's mean at the posterior mean of x0_hat
    and the posterior's own variance (fixed_small): (c1 (x0 - x0_hat))^2 / (2 beta~_t) a pixel, c1 =
    beta_t sqrt(abar_{t-1}) / (1 - abar_t) (Ho et al. 2020, Eq. 7), in bits. eps predicted as 0 (unclipped)
    gives x0 - x0_hat = -sqrt((1 - abar_t) / abar_t) eps. The exact x0 gives 0 at every t > 0, and at t = 0 the
    decoder's NLL of a Gaussian at the pixel itself: -log2 of its mass on the pixel's bin of width 2/255 (the
    edge bins reach to ±inf, Ho et al. 2020, Eq. 13), with sigma_0 the fixed_small sigma at t = 0."""
    s, images, ts = make_schedule("linear", T=1000), _images(), (1, 100, 500, 900)
    abar, beta = s.alphas_cumprod, s.betas
    term = _by_t("eps", images, ts, "nll_term_bpd", clip_x0=False)
    for t in ts:
        c1 = beta[t] * math.sqrt(abar[t - 1]) / (1 - abar[t])
        var = beta[t] * (1 - abar[t - 1]) / (1 - abar[t])
        expected = c1 ** 2 * (1 - abar[t]) / abar[t] / (2 * var) / math.log(2)
        assert math.isclose(term[t], expected, rel_tol=0.03), (t, term[t], expected)
    exact = Oracle(to_model(images))
    assert all(v < 1e-9 for v in _by_t("x0", images, (0, *ts), model=exact, batch=64).values())
    zero = _by_t("x0", images, (0, *ts), "nll_term_bpd", model=exact, batch=64)
    assert all(abs(zero[t]) < 1e-6 for t in ts), zero
    sigma = math.exp(0.5 * float(coefs(s, torch.zeros(1, dtype=torch.long), like=torch.zeros(1)).log_var_small))
    x = to_model(images).double()
    half = torch.full_like(x, 1 / 255 / sigma)  # the bin's half-width over sigma, around the mean x itself
    mass = torch.where(x > 0.999, 1.0, special.ndtr(half)) - torch.where(x < -0.999, 0.0, special.ndtr(-half))
    assert math.isclose(zero[0], -torch.log2(mass).mean().item(), rel_tol=1e-4), (zero[0], sigma)



class OracleLearned(torch.nn.Module):
    """Predicts x0 exactly and a constant learned-range output v (the variance's channels)."""

    def __init__(self, x0, v):
        super().__init__()
        self.x0, self.v = x0, v

    def forward(self, x, t):
        return torch.cat([self.x0, torch.full_like(self.x0, self.v)], dim=1)


@pytest.mark.parametrize("v", [-1.0, 0.0, 1.0])
def test_the_bounds_term_reads_a_learned_variance(v):
    """With learned_range (Improved DDPM, Eq. 15) the term is the KL between two Gaussians of the same mean (the
    exact x0) whose variances differ: the posterior's beta~_t and sigma^2 = exp(frac log beta_t + (1 - frac)
    log beta~_t), frac = (v + 1) / 2, that is 0.5 (log(sigma^2 / beta~_t) + beta~_t / sigma^2 - 1) nats a pixel.
    v = -1 is fixed_small's variance (KL 0), v = 1 fixed_large's (beta_t): the loss question's hybrid model is
    scored with its own variance, not a fixed one. (Absolute tolerance 2e-7 bits, float32's resolution of the
    KL's terms of order 1: from t = 500 on, beta_t and beta~_t differ by under 0.1%.)"""
    s, images, ts = make_schedule("linear", T=1000), _images(), (1, 100, 500, 900)
    abar, beta = s.alphas_cumprod, s.betas
    model = OracleLearned(to_model(images), v)
    got = denoising(model, s, TrainConfig(prediction="x0", loss="hybrid", variance="learned_range"), images, ts,
                    seed=0, device="cpu", batch=64)
    frac = (v + 1) / 2
    for t in ts:
        small = beta[t] * (1 - abar[t - 1]) / (1 - abar[t])
        var = math.exp(frac * math.log(beta[t]) + (1 - frac) * math.log(small))
        expected = 0.5 * (math.log(var / small) + small / var - 1) / math.log(2)
        assert math.isclose(got[t]["nll_term_bpd"], expected, rel_tol=1e-3, abs_tol=2e-7), (t, got[t], expected)
    assert (got[1]["nll_term_bpd"] > 1e-2) == (v > -1)  # at t = 1, beta_t is about twice beta~_t


def _ablate(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_denoising_rows_per_timestep_and_checkpoint_added_without_training(tmp_path, monkeypatch):
    spec_path, runs = tmp_path / "d.toml", tmp_path / "runs"
    text = tiny_spec("d").replace("[eval]\n", "[eval]\neval_at = [2]\ndenoise_t = [0, 50]\n")
    spec_path.write_text(text)
    _ablate("run", spec_path, "--runs-root", runs, "--no-progress")
    run = load_spec(spec_path).runs[0]
    folder = run_folder(runs, run.run_id)
    rows = [r for r in read_jsonl(Path(folder) / "rows.jsonl")[0] if r["metric"] in ("x0_rms", "nll_term_bpd")]
    assert sorted((r["train_step"], r["t"], r["metric"]) for r in rows) == [
        (step, t, m) for step in (2, 4) for t in (0, 50) for m in ("nll_term_bpd", "x0_rms")]
    assert all(r["n"] == 8 and r["reference"] == "fashion_mnist:test:8" and r["clip_x0"] is True
               and r["value"] > 0 and type(r["t"]) is int for r in rows)
    assert ledger.state(load_spec(spec_path), run, runs)["state"] == "done"

    def no_sampling(*a, **k):
        raise AssertionError("sampled again")

    def all_rows():
        return read_jsonl(Path(folder) / "rows.jsonl")[0]

    train = [r for r in all_rows() if r["phase"] == "train"]
    spec_path.write_text(text.replace("denoise_t = [0, 50]", "denoise_t = [0, 50, 99]"))
    assert ledger.state(load_spec(spec_path), run, runs)["state"] == "needs-eval"
    monkeypatch.setattr(scoring, "generate", no_sampling)  # the FID rows are all there
    _ablate("run", spec_path, "--runs-root", runs, "--no-progress")
    again = [r for r in all_rows() if r["metric"] in ("x0_rms", "nll_term_bpd")]
    assert again[:8] == rows and sorted((r["train_step"], r["t"]) for r in again[8:]) == [(2, 99)] * 2 + [(4, 99)] * 2
    assert [r for r in all_rows() if r["phase"] == "train"] == train  # not trained again
    before = all_rows()
    _ablate("run", spec_path, "--runs-root", runs, "--no-progress")  # nothing left: no row written twice
    assert all_rows() == before
    # the rows reach the table, the report (a column per t, at the last checkpoint) and a figure
    results = tmp_path / "results"
    for command in ("collect", "plot", "report"):
        target = spec_path if command == "collect" else results / "d"
        _ablate(command, target, *(("--runs-root", runs, "--results-root", results) if command == "collect" else ()))
    table = pd.read_csv(results / "d" / "rows.csv")
    assert sorted(table.loc[table["metric"] == "x0_rms", "t"]) == [0, 0, 50, 50, 99, 99]
    report = (results / "d" / "report.md").read_text()
    assert "## Denoising error by timestep" in report and "## The bound's term by timestep (bits/dim)" in report
    assert report.count("| norm | t = 0 | t = 50 | t = 99 |") == 2
    for metric in ("x0_rms", "nll_term_bpd"):
        last = {r["t"]: r["value"] for r in again if r["train_step"] == 4 and r["metric"] == metric}
        assert f"| group | {last[0]:.3g} (1 seed) | {last[50]:.3g} (1 seed) | {last[99]:.3g} (1 seed) |" in report
    assert (results / "d" / "denoising.png").stat().st_size > 1000 and "![denoising](denoising.png)" in report


def test_rows_without_a_timestep_keep_their_table_as_it_was(smoke, tmp_path):
    """A column added to the rows after they were first written (`t`) appears in rows.csv only where a row
    uses it, so a folder collected before it, and recollected after, keeps its bytes."""
    spec, runs, result = smoke
    assert result.exit_code == 0, result.output
    _ablate("collect", spec.path, "--scale", "smoke", "--runs-root", runs, "--results-root", tmp_path)
    folder = tmp_path / "norm-smoke"
    table, summary = pd.read_csv(folder / "rows.csv"), pd.read_csv(folder / "summary.csv")
    assert "t" not in table.columns and "strata" in table.columns and "nll_bpd" in set(table["metric"])
    assert "t" not in summary.columns and len(summary) > 0


@pytest.mark.parametrize("ts", ["[100]", "[50, 0]", "[-1]"])
def test_a_timestep_outside_the_schedule_is_refused_naming_the_key(tmp_path, ts):
    path = tmp_path / "bad.toml"
    path.write_text(tiny_spec("bad").replace("[eval]\n", f"[eval]\ndenoise_t = {ts}\n"))
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert "bad.toml" in str(e.value) and "denoise_t" in str(e.value) and "0..99" in str(e.value)
