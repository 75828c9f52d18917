"""Evaluation rows beyond FID: precision/recall, a second extractor on the same samples, solver_rms,
and kept samples that let `ablate run` add a metric without sampling again."""
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny_spec

from ablations.running import evaluation, ledger, scoring
from ablations.commands.cli import main
from ablations.running.evaluation import load_images
from ablations.store.io import read_jsonl
from ablations.store.layout import run_folder, sample_grid_name, samples_name, solver_reference_name
from ablations.grid.spec import SpecError, load_spec

EXTRA = '[eval]\nextra_extractors = ["fmnist-classifier-seed1"]\n'
DDPM = '[[eval.setting]]\nsampler = "ddpm"\nsteps = 5\n'
DPMPP = '[[eval.setting]]\nsampler = "dpmpp_2m"\nsteps = 5\n'


def _ablate(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _rows(folder):
    return read_jsonl(Path(folder) / "rows.jsonl")[0]


def test_a_second_sample_seed_adds_its_rows_and_its_own_grid_beside_the_first(tmp_path):
    """Scoring the same weights again with --set eval.sample_seed=1 (the sample-set noise check) adds FID rows
    at sample seed 1 and writes its grid beside seed 0's, which the figures show and which stays as it was."""
    spec_path, runs = tmp_path / "s.toml", tmp_path / "runs"
    spec_path.write_text(tiny_spec("s"))
    _ablate("run", spec_path, "--runs-root", runs, "--no-progress")
    folder = run_folder(runs, load_spec(spec_path).runs[0].run_id)
    first = (folder / sample_grid_name("ddim", 5, 0.0, True, train_step=4)).read_bytes()
    _ablate("run", spec_path, "--runs-root", runs, "--no-progress", "--set", "eval.sample_seed=1")
    fid = {(r["sample_seed"], r["train_step"]): r["value"] for r in _rows(folder) if r["metric"] == "fid"}
    assert {(0, 4), (1, 4)} <= set(fid) and fid[(0, 4)] != fid[(1, 4)]
    assert (folder / sample_grid_name("ddim", 5, 0.0, True, train_step=4)).read_bytes() == first
    second = folder / sample_grid_name("ddim", 5, 0.0, True, train_step=4, sample_seed=1)
    assert second.name.endswith("-step4-sampleseed1.png") and second.read_bytes() != first


def test_a_new_metric_comes_from_the_kept_samples(tmp_path, monkeypatch):
    spec_path, runs = tmp_path / "m.toml", tmp_path / "runs"
    text = tiny_spec("m").replace("[eval]\n", "[eval]\nsolver_images = 8\n") + DDPM
    spec_path.write_text(text)
    _ablate("run", spec_path, "--runs-root", runs, "--no-progress")
    spec = load_spec(spec_path)
    run = spec.runs[0]
    folder = run_folder(runs, run.run_id)
    rows = _rows(folder)
    by = {(r["metric"], r["sampler"], r["extractor"]): r for r in rows if r["phase"] == "eval"}
    for sampler in ("ddim", "ddpm"):
        for m in ("fid", "kid", "kid_std", "precision", "recall"):
            assert (m, sampler, "fmnist-classifier") in by, (m, sampler)
        kept = load_images(folder / samples_name(sampler, 5, 0.0, True, sample_seed=0, train_step=4), 32)
        assert kept is not None and kept.shape == (32, 1, 28, 28)
    p = by[("precision", "ddim", "fmnist-classifier")]
    assert p["n"] == 32 and p["reference"] == "fashion_mnist:train:32" and 0 <= p["value"] <= 1
    solver = [r for r in rows if r["metric"] == "solver_rms"]
    assert [r["sampler"] for r in solver] == ["ddim"]  # the deterministic setting only, not DDPM
    assert solver[0]["n"] == 8 and solver[0]["reference"] == "ddim:100" and solver[0]["value"] > 0
    assert (folder / solver_reference_name(100, True, sample_seed=0, train_step=4)).exists()

    def no_sampling(*a, **k):
        raise AssertionError("sampled again")

    spec_path.write_text(text.replace("[eval]\n", EXTRA, 1))  # a second extractor, added after the run
    assert ledger.state(load_spec(spec_path), run, runs)["state"] == "needs-eval"
    monkeypatch.setattr(scoring, "generate", no_sampling)
    _ablate("run", spec_path, "--runs-root", runs, "--no-progress")
    again = _rows(folder)
    new = again[len(rows):]
    assert sorted((r["metric"], r["sampler"]) for r in new) == sorted(
        (m, s) for m in ("fid", "kid", "kid_std", "fid_wall_s", "precision", "recall", "prc_wall_s")
        for s in ("ddim", "ddpm"))
    assert {r["extractor"] for r in new} == {"fmnist-classifier-seed1"}
    assert ledger.state(load_spec(spec_path), run, runs)["state"] == "done"

    sampled = []

    def spy(model, schedule, cfg, setting, n, **kw):
        sampled.append(setting)
        return evaluation.generate(model, schedule, cfg, setting, n, **kw)

    monkeypatch.setattr(scoring, "generate", spy)
    spec_path.write_text(text.replace("[eval]\n", EXTRA, 1) + DPMPP)  # a new deterministic setting
    _ablate("run", spec_path, "--runs-root", runs, "--no-progress")
    assert [(s.sampler, s.steps) for s in sampled] == [("dpmpp_2m", 5)]  # the DDIM reference is reused
    solver = {r["sampler"]: r["value"] for r in _rows(folder) if r["metric"] == "solver_rms"}
    assert set(solver) == {"ddim", "dpmpp_2m"} and solver["dpmpp_2m"] > 0


@pytest.mark.parametrize("line, key, words", [
    ('extra_extractors = ["clip"]', "eval.extra_extractors", "'fmnist-classifier-seed1'"),
    ('extra_extractors = ["fmnist-classifier"]', "eval.extra_extractors", "repeats"),
    ("extra_extractors = [1]", "eval.extra_extractors", "list of names"),
    ("solver_images = 33", "eval.solver_images", "valid: 0..32"),
    ("solver_images = -1", "eval.solver_images", ">= 0"),
])
def test_bad_extractor_and_solver_keys_name_the_file_and_key(tmp_path, line, key, words):
    path = tmp_path / "bad.toml"
    path.write_text(tiny_spec("bad").replace("[eval]\n", f"[eval]\n{line}\n"))
    with pytest.raises(SpecError) as e:
        load_spec(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: key '{key}': ") and words in msg, msg
