"""x0_rms: the network's x0 estimate from x_t, scored by timestep (eval.denoise_t), as rows: checked against
models whose error is known in closed form, then end to end (rows per t and checkpoint, added to a finished
run without training, a bad timestep refused before anything runs)."""
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_spec

from ablations.commands.cli import main
from ablations.grid.config import TrainConfig
from ablations.grid.spec import SpecError, load_spec
from ablations.running import runner
from ablations.running.data import to_model
from ablations.running.evaluation import x0_rms
from ablations.store.io import read_jsonl
from ablations.store.layout import run_folder
from core.schedules import make_schedule


class Zero(torch.nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


def _images(n=64):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)


def test_x0_rms_of_models_whose_error_is_known():
    """eps predicted as 0, unclipped: x0_hat = x_t / sqrt(abar_t) = x0 + sqrt((1 - abar_t) / abar_t) eps, so the RMS
    error is sqrt((1 - abar_t) / abar_t) times eps's RMS over 784 pixels (1 within a few %). x0 predicted
    as 0: the error is -x0 at every t, the images' own RMS."""
    schedule, images = make_schedule("linear", T=1000), _images()
    ts = (0, 100, 500, 900)
    eps = x0_rms(Zero(), schedule, TrainConfig(prediction="eps"), images, ts, seed=0, device="cpu", batch=16,
                 clip_x0=False)
    for t in ts:
        abar = float(schedule.alphas_cumprod[t])
        assert math.isclose(eps[t], math.sqrt((1 - abar) / abar), rel_tol=0.03), (t, eps[t])
    x0 = x0_rms(Zero(), schedule, TrainConfig(prediction="x0"), images, ts, seed=0, device="cpu", batch=16)
    own = to_model(images).double().pow(2).flatten(1).mean(1).sqrt().mean().item()
    assert all(math.isclose(x0[t], own, rel_tol=1e-6) for t in ts)
    # the batch size changes nothing: image i's noise is its own
    assert x0_rms(Zero(), schedule, TrainConfig(prediction="eps"), images, ts, seed=0, device="cpu", batch=64,
                  clip_x0=False) == pytest.approx(eps, rel=1e-12)
    # clipped to [-1, 1], as the samplers use it: never farther from x0 (which lies in [-1, 1]), and at t = 900,
    # where 1 / sqrt(abar_t) ~ 4.5 amplifies eps, at most the [-1, 1] range's RMS of 2
    clipped = x0_rms(Zero(), schedule, TrainConfig(prediction="eps"), images, ts, seed=0, device="cpu", batch=16)
    assert all(clipped[t] <= eps[t] + 1e-12 for t in ts) and clipped[900] < 2 < eps[900]


def _ablate(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_x0_rms_rows_per_timestep_and_checkpoint_and_added_without_training(tmp_path, monkeypatch):
    spec_path, runs = tmp_path / "d.toml", tmp_path / "runs"
    text = tiny_spec("d").replace("[eval]\n", "[eval]\neval_at = [2]\ndenoise_t = [0, 50]\n")
    spec_path.write_text(text)
    _ablate("run", spec_path, "--runs-root", runs, "--no-progress")
    run = load_spec(spec_path).runs[0]
    folder = run_folder(runs, run.run_id)
    rows = [r for r in read_jsonl(Path(folder) / "rows.jsonl")[0] if r["metric"] == "x0_rms"]
    assert sorted((r["train_step"], r["t"]) for r in rows) == [(2, 0), (2, 50), (4, 0), (4, 50)]
    assert all(r["n"] == 8 and r["reference"] == "fashion_mnist:test:8" and r["clip_x0"] is True
               and r["value"] > 0 for r in rows)
    assert runner.state(load_spec(spec_path), run, runs)["state"] == "done"

    def no_sampling(*a, **k):
        raise AssertionError("sampled again")

    def all_rows():
        return read_jsonl(Path(folder) / "rows.jsonl")[0]

    train = [r for r in all_rows() if r["phase"] == "train"]
    spec_path.write_text(text.replace("denoise_t = [0, 50]", "denoise_t = [0, 50, 99]"))
    assert runner.state(load_spec(spec_path), run, runs)["state"] == "needs-eval"
    monkeypatch.setattr(runner, "generate", no_sampling)  # the FID rows are all there
    _ablate("run", spec_path, "--runs-root", runs, "--no-progress")
    again = [r for r in all_rows() if r["metric"] == "x0_rms"]
    assert again[:4] == rows and sorted((r["train_step"], r["t"]) for r in again[4:]) == [(2, 99), (4, 99)]
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
    assert "## Denoising error by timestep" in report and "| norm | t = 0 | t = 50 | t = 99 |" in report
    last = {r["t"]: r["value"] for r in again if r["train_step"] == 4}
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
