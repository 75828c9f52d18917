"""Evaluation at checkpoints: eval_at's checkpoints are kept and scored, while training goes on or
after it ends, with the same rows; one run serves every train_steps; legacy folders move to the id
that leaves train_steps out."""
import inspect
import json
import shutil
from dataclasses import asdict, replace

import pytest
from click.testing import CliRunner
from conftest import tiny_spec

from ablations.run import data
from ablations.commands.cli import main
from ablations.run.config import TrainConfig, eval_steps, scored_at
from ablations.store.io import write_json
from ablations.store.layout import checkpoint_step, checkpoints, read_status, run_folder
from ablations.running.ledger import missing, state, wanted
from ablations.running.runner import run_one
from ablations.store.schema import CURVES, read_rows
from ablations.grid.spec import SpecError, load_spec
from ablations.running.training import train

TIMING = {"sample_img_per_s", "nfe_per_s", "sample_wall_s", "peak_mem_mb", "fid_wall_s", "nll_wall_s", "prc_wall_s",
          "denoise_wall_s", "compile_s", "train_wall_s", "train_img_per_s"}


def _curve_spec(tmp_path, name="curve", steps=6, eval_at="[2, 4]", every=4):
    text = tiny_spec(name, steps=steps, every=every).replace("[eval]\n", f"[eval]\neval_at = {eval_at}\nsolver_images = 8\n")
    text += '[[eval.setting]]\nsampler = "ddpm"\nsteps = 5\ncurve = false\n'
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return load_spec(path)


@pytest.fixture(scope="module")
def curve(tmp_path_factory):
    """The curve spec's run, trained and scored at steps 2 and 4 while training goes on, then at 6: (spec,
    runs root). Shared by the tests that only read it; a test that writes to it copies it first."""
    tmp = tmp_path_factory.mktemp("curve")
    spec = _curve_spec(tmp)
    assert run_one(spec, spec.runs[0], tmp / "runs", progress=False) == "done"
    return spec, tmp / "runs"


def _scores(folder) -> dict:
    """{(metric, train_step, sampler): value} of the rows that do not measure time."""
    rows, skipped = read_rows(folder / "rows.jsonl")
    assert skipped == 0
    out = {}
    for r in rows:
        if r["metric"] in TIMING or r["metric"] in CURVES:  # logged by the training loop, not scored
            continue
        k = (r["metric"], r["train_step"], r["sampler"], r["extractor"])
        assert k not in out, f"row {k} written twice"
        out[k] = r["value"]
    return out


def test_run_id_leaves_out_where_training_stops():
    base = TrainConfig(T=100, seed=1)
    assert replace(base, train_steps=700).run_id() == replace(base, train_steps=2800).run_id()
    assert replace(base, epochs=3).run_id() == base.run_id()
    assert replace(base, train_steps=700).legacy_run_id() != replace(base, train_steps=2800).legacy_run_id()
    assert replace(base, lr=1e-3).run_id() != base.run_id()
    assert TrainConfig().run_id() == "5455bddd66"  # pinned: changing the rule renames every run
    assert TrainConfig().legacy_run_id() == "bc6c92a43b"  # the committed results' rule


def test_eval_steps_and_settings_scored_at_each():
    from ablations.run.config import EvalConfig, Setting
    ddim, ddpm = Setting("ddim", 5, 0.0, True), Setting("ddpm", 5, 0.0, True)
    ev = EvalConfig(settings=(ddim, ddpm), eval_at=(2, 4), last_only=(ddpm,))
    assert eval_steps(ev, 6) == (2, 4, 6) and eval_steps(EvalConfig(), 6) == (6,)
    assert scored_at(ev, 6, 2) == (ddim,) and scored_at(ev, 6, 6) == (ddim, ddpm)


def test_wanted_keys_name_every_checkpoint(tmp_path):
    spec = _curve_spec(tmp_path)
    run = spec.runs[0]
    what = list(wanted(spec, run).values())
    ddim, ddpm = spec.eval.settings
    assert spec.eval.last_only == (ddpm,)
    for at in (2, 4, 6):
        assert (at, ddim) in what and (at, "nll") in what and (at, "cost") in what
    assert (6, ddpm) in what and (2, ddpm) not in what and (4, ddpm) not in what


@pytest.mark.parametrize("eval_at, why", [("[2, 9]", "within 1..6"), ("[4, 2]", "ascending"), ("[0]", "within"),
                                          ('["a"]', "list of integers")])
def test_bad_eval_at_names_the_key(tmp_path, eval_at, why):
    with pytest.raises(SpecError) as e:
        _curve_spec(tmp_path, eval_at=eval_at)
    assert "eval_at" in str(e.value) and why in str(e.value) and "curve.toml" in str(e.value)


def test_bad_curve_value_names_the_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(tiny_spec("c").replace('steps = 5\n', 'steps = 5\ncurve = "no"\n'))
    with pytest.raises(SpecError, match=r"eval\.setting\[0\]\.curve.*expected bool"):
        load_spec(path)


def test_eval_at_checkpoints_are_kept_whatever_the_pruning(tmp_path):
    cfg = TrainConfig(T=100, model_channels=8, mults=(1, 2), res_blocks=1, groups=4, batch=16, train_steps=7,
                      checkpoint_every=1)
    train(cfg, tmp_path, data.load("fashion_mnist", "train")[0][:256], device="cpu", progress=False, keep=(2, 3))
    assert [checkpoint_step(p) for p in checkpoints(tmp_path)] == [2, 3, 6, 7]


def test_scoring_while_training_and_after_it_give_the_same_rows(curve, tmp_path):
    """Run a: scored at steps 2 and 4 while training goes on. Run b: trained to the end first (keeping
    the same checkpoints), then scored. Every number that does not measure time is equal."""
    spec, inline = curve
    run = spec.runs[0]
    after = tmp_path / "after"
    folder = run_folder(after, run.run_id)
    folder.mkdir(parents=True)
    write_json(folder / "config.json", {"run_id": run.run_id, "train": asdict(run.config)})
    train(run.config, folder, data.load("fashion_mnist", "train")[0], device="cpu", progress=False, keep=(2, 4))
    assert run_one(spec, run, after, progress=False) == "done"
    a, b = _scores(run_folder(inline, run.run_id)), _scores(folder)
    assert a.keys() == b.keys() and a == b
    steps = {k[1] for k in a if k[0] == "fid"}
    assert steps == {2, 4, 6}
    assert {k[2] for k in a if k[0] == "fid" and k[1] == 6} == {"ddim", "ddpm"}  # ddpm: curve = false, last only
    assert {k[2] for k in a if k[0] == "fid" and k[1] < 6} == {"ddim"}
    assert a[("train_images", 4, None, None)] == 4 * 16 and a[("train_flops", 4, None, None)] > 0
    assert a[("train_flops", 6, None, None)] == pytest.approx(1.5 * a[("train_flops", 4, None, None)])
    wall = {r["train_step"]: r["value"] for r in read_rows(run_folder(inline, run.run_id) / "rows.jsonl")[0]
            if r["metric"] == "train_wall_s"}
    assert sorted(wall) == [2, 4, 6] and wall[2] < wall[4] < wall[6]


def test_a_run_stopped_during_scoring_resumes_it(curve, tmp_path):
    """A stop while step 2 is scored: the run is interrupted; run again, it scores what step 2 lacks,
    trains on and scores the rest, each row once, as the uninterrupted run (`curve`)."""
    spec, reference = curve
    run = spec.runs[0]

    def stop():  # polled per training step and per sampler setting: true at the first poll of scoring
        return inspect.stack()[1].function == "evaluate"
    assert run_one(spec, run, tmp_path / "runs", progress=False, should_stop=stop) == "interrupted"
    folder = run_folder(tmp_path / "runs", run.run_id)
    assert [checkpoint_step(p) for p in checkpoints(folder)] == [2]  # stopped while step 2 was scored
    assert not [k for k in _scores(folder) if k[0] == "fid"]
    assert run_one(spec, run, tmp_path / "runs", progress=False) == "done"
    assert _scores(folder) == _scores(run_folder(reference, run.run_id))


def test_one_run_serves_a_spec_that_trains_fewer_steps(curve, tmp_path):
    long, done = curve  # 6 steps, scored at 2, 4 and 6
    short = _curve_spec(tmp_path, "short", steps=4, eval_at="[2]")
    runs = tmp_path / "runs"
    assert short.runs[0].run_id == long.runs[0].run_id
    shutil.copytree(done, runs)
    folder = run_folder(runs, long.runs[0].run_id)
    assert state(long, long.runs[0], runs)["state"] == "done"
    before = _scores(folder)
    assert missing(short, short.runs[0], folder) == [(4, short.eval.settings[1])]  # ddpm at 4: short's last
    assert run_one(short, short.runs[0], runs, progress=False) == "done"
    after = _scores(folder)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing rewritten
    assert set(after) - set(before) == {(m, 4, "ddpm", "fmnist-classifier") for m in ("fid", "kid", "kid_std",
                                                                                      "precision", "recall")}
    assert [checkpoint_step(p) for p in checkpoints(folder)] == [2, 4, 6]  # no training: no new checkpoint
    odd = _curve_spec(tmp_path, "odd", steps=4, eval_at="[3]")
    status = read_status(folder)
    assert run_one(odd, odd.runs[0], runs, progress=False) == "unscorable"  # this spec's outcome, not the run's
    assert read_status(folder) == status
    reason = state(odd, odd.runs[0], runs)
    assert reason["state"] == "unscorable" and "step(s) 3" in reason["reason"] and "eval_at" in reason["reason"]
    assert state(long, long.runs[0], runs)["state"] == "done"


def test_a_legacy_folder_moves_to_the_id_without_train_steps(tmp_path):
    """A run folder written before (named by legacy_run_id, eval rows without train_step, kept samples
    named without the step) is moved by the next command, and needs no evaluation again."""
    path = tmp_path / "old.toml"
    path.write_text(tiny_spec("old", steps=4, every=2))
    spec, runs = load_spec(path), tmp_path / "runs"
    run = spec.runs[0]
    assert run_one(spec, run, runs, progress=False) == "done"
    new = run_folder(runs, run.run_id)
    old = run_folder(runs, run.config.legacy_run_id())
    rows = [json.loads(line) for line in (new / "rows.jsonl").read_text().splitlines()]
    for r in rows:
        r["run_id"] = old.name
        if r["phase"] == "eval":
            r["train_step"] = None
    (new / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = json.loads((new / "config.json").read_text())
    (new / "config.json").write_text(json.dumps({**config, "run_id": old.name}))
    for p in new.glob("samples-*-step4*"):
        p.rename(new / p.name.replace("-step4", ""))
    shutil.move(str(new), str(old))
    listed = CliRunner().invoke(main, ["list", str(path), "--runs-root", str(runs)])  # reads: moves nothing
    assert listed.exit_code == 0, listed.output
    assert "legacy id" in listed.output and "pending" in listed.output.splitlines()[-1] and old.exists()
    out = CliRunner().invoke(main, ["run", str(path), "--runs-root", str(runs), "--no-progress"])
    assert out.exit_code == 0, out.output
    assert f"{old.name} -> {new.name}" in out.output and "0 to run" in out.output
    assert not old.exists() and (new / "samples-ddim-5-eta0-step4-seed0.npz").exists()
    moved, _ = read_rows(new / "rows.jsonl")
    assert {r["run_id"] for r in moved} == {new.name}
    assert {r["train_step"] for r in moved if r["phase"] == "eval"} == {4}
    assert missing(spec, run, new) == []


def test_collect_copies_each_checkpoints_sample_grid_and_plots_the_last(curve, tmp_path):
    spec, runs = curve
    out = tmp_path / "results"
    result = CliRunner().invoke(main, ["collect", str(spec.path), "--runs-root", str(runs), "--results-root", str(out)])
    assert result.exit_code == 0, result.output
    copied = sorted(p.name.split("-", 1)[1] for p in (out / spec.name / "samples").glob("*.png"))
    assert copied == ["samples-ddim-5-eta0-step2.png", "samples-ddim-5-eta0-step4.png",
                      "samples-ddim-5-eta0-step6.png", "samples-ddpm-5-eta0-step6.png"]
    import pandas as pd

    from ablations.reporting.plots import grid_cells
    from ablations.reporting.table import checkpointed, final
    rows = final(checkpointed(pd.read_csv(out / spec.name / "rows.csv")))
    _, _, found = grid_cells(rows, "norm", out / spec.name)
    assert sorted(f.name.split("-", 1)[1] for f in found.values()) == ["samples-ddim-5-eta0-step6.png",
                                                                        "samples-ddpm-5-eta0-step6.png"]
