"""One run store: a training config named by several specs is trained once, evaluated once per eval row,
never twice at once (claims), and a runs root in the first layout is migrated by moving it."""
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny_spec

from ablations.commands.cli import main
from ablations.store.io import read_jsonl
from ablations.store.layout import checkpoints, read_status, run_folder, run_ids
from ablations.store.migrate import migrate, old_run_folders, set_aside_stale_nll, stale_nll
from ablations.reporting.legend import label
from ablations.store.schema import key
from ablations.grid.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent


def _spec(tmp_path, name, norms, steps=4, steps_eval="5"):
    path = tmp_path / f"{name}.toml"
    path.write_text(tiny_spec(name, norms, steps, every=10, sample_steps=steps_eval))
    return path


def _ablate(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _rows(folder):
    rows, bad = read_jsonl(folder / "rows.jsonl")
    assert bad == 0
    return rows


def _eval_keys_unique(rows):
    keys = [key(r) for r in rows if r["phase"] == "eval"]
    return len(keys) == len(set(keys))


def test_a_config_named_by_two_specs_is_trained_once_and_evaluated_per_spec(tmp_path):
    a = _spec(tmp_path, "a", '["group", "layer"]')
    b = _spec(tmp_path, "b", '["layer", "batch"]', steps_eval="[5, 8]")
    runs = tmp_path / "runs"
    _ablate("run", a, "--runs-root", runs, "--no-progress")
    spec_a, spec_b = load_spec(a), load_spec(b)
    shared = spec_a.runs[1]
    assert shared.run_id == spec_b.runs[0].run_id  # layer, seed 0: one config, one id
    folder = run_folder(runs, shared.run_id)
    ckpt = {p.name: p.read_bytes() for p in checkpoints(folder)}
    before = _rows(folder)
    out = _ablate("run", b, "--runs-root", runs, "--no-progress")
    assert "2 runs, 0 complete, 2 to run" in out  # the shared run needs b's extra setting
    # the ETA counts the shared run's missing setting only, and the new run in full
    from ablations.running.budget import run_flops
    fresh = spec_b.runs[1]
    last = shared.config.train_steps
    left = [run_flops(shared.config, spec_b.eval, 0, [(last, s) for s in spec_b.eval.settings if s.steps == 8]),
            run_flops(fresh.config, spec_b.eval, fresh.config.train_steps)]
    assert f"{sum(sum(w.values()) for w in left) / 1e12:.3g} TFLOP" in out
    assert left[0]["train"] == left[0]["nll"] == 0 < left[0]["sample"]
    everything = sum(run_flops(shared.config, spec_b.eval, 0).values()) + sum(left[1].values())
    assert f"{everything / 1e12:.3g} TFLOP" not in out  # what the ETA said before it read the rows
    after = _rows(folder)
    assert {p.name: p.read_bytes() for p in checkpoints(folder)} == ckpt  # not retrained
    assert after[:len(before)] == before  # a's rows untouched
    added = after[len(before):]
    assert {r["steps"] for r in added if r["metric"] == "fid"} == {8}  # only b's missing setting
    assert not [r for r in added if r["phase"] == "train"] and _eval_keys_unique(after)
    assert (folder / "log.txt").read_text().count("training on") == 1
    assert run_ids(runs) == sorted({r.run_id for r in spec_a.runs + spec_b.runs})
    assert "0 to run" in _ablate("run", b, "--runs-root", runs, "--no-progress")


def test_two_ablate_runs_at_once_on_overlapping_grids_train_each_run_once(tmp_path):
    a = _spec(tmp_path, "a", '["group", "layer", "instance"]', steps=40)
    b = _spec(tmp_path, "b", '["instance", "layer", "batch"]', steps=40)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "ablations.commands.cli", "run"]
    procs = [subprocess.Popen([*cmd, str(p), "--runs-root", str(runs), "--no-progress"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for p in (a, b)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ids = {r.run_id for s in (load_spec(a), load_spec(b)) for r in s.runs}
    assert len(ids) == 4
    for run_id in ids:
        folder = run_folder(runs, run_id)
        assert read_status(folder)["state"] == "done"
        assert (folder / "log.txt").read_text().count("training on") == 1, run_id
        rows = _rows(folder)
        assert _eval_keys_unique(rows)
        assert [r["metric"] for r in rows].count("train_img_per_s") == 1
        assert [r["metric"] for r in rows].count("fid") == 1
        assert not (folder / "claim.json").exists()
    trainers = {read_status(run_folder(runs, i))["pid"] for i in ids}
    assert trainers == {p.pid for p in procs}  # both processes trained, each run exactly once


def test_a_superseded_old_folder_goes_to_superseded_and_an_old_migrated_folder_is_not_a_spec(tmp_path):
    """`_superseded/` keeps an old folder whose run another folder already holds; a runs root migrated
    when that folder was called `_migrated/` is still read right: its folders are not taken for specs."""
    train = {"base": 8, "ema": 0.999, "steps": 4}
    for spec in ("a", "b", "_migrated/c"):
        old = tmp_path / spec / "0123456789"
        old.mkdir(parents=True)
        (old / "config.json").write_text(json.dumps({"run_id": "0123456789", "train": train}))
        (old / "metrics.jsonl").write_text("")
    assert [p.parent.name for p in old_run_folders(tmp_path)] == ["a", "b"]
    assert migrate(tmp_path, echo=lambda msg: None) == 2
    assert (tmp_path / "_superseded" / "b" / "0123456789" / "config.json").exists()
    assert (tmp_path / "_migrated" / "c" / "0123456789" / "config.json").exists()  # left where it was
    assert len(run_ids(tmp_path)) == 1


def test_a_runs_root_in_the_first_layout_is_migrated_not_retrained(tmp_path):
    path = _spec(tmp_path, "mig", '["group"]')
    spec = load_spec(path)
    run = spec.runs[0]
    fresh = tmp_path / "fresh"
    _ablate("run", path, "--runs-root", fresh, "--no-progress")
    # Build the first layout from it: <root>/<spec>/<run_id>/, old field names, metrics.jsonl, old rows.
    old_root = tmp_path / "old"
    old = old_root / "mig" / "0123456789"
    old.mkdir(parents=True)
    for p in checkpoints(run_folder(fresh, run.run_id)):
        (old / p.name).write_bytes(p.read_bytes())
    train = {{"model_channels": "base", "ema_decay": "ema", "train_steps": "steps"}.get(k, k): v
             for k, v in asdict(run.config).items()}
    (old / "config.json").write_text(json.dumps({"run_id": "0123456789", "spec": "mig", "train": train}))
    (old / "status.json").write_text(json.dumps({"state": "done", "step": 4}))
    old_rows = [{"ablation": "mig", "run_id": "0123456789", "metric": "train_loss", "value": 0.5, "step": 4, "n": 16},
                {"ablation": "mig", "run_id": "0123456789", "metric": "fid", "value": 99.0, "sampler": "ddim",
                 "steps": 5, "eta": 0.0, "n": 32, "protocol": "reference=fashion_mnist:train:1000 sample_seed=0"}]
    (old / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old_rows))
    (old_root / "mig" / "submissions.jsonl").write_text('{"run_id": "0123456789", "job_id": "7"}\n')
    ckpt = {p.name: p.read_bytes() for p in checkpoints(old)}

    listing = _ablate("list", path, "--runs-root", old_root)  # a command that reads: it says, moves nothing
    assert "the first layout" in listing and "pending" in listing and old.exists()
    from ablations.commands.common import migrate_store
    migrate_store(old_root)  # what `ablate run` and `submit` do first
    folder = run_folder(old_root, run.run_id)
    assert "needs-eval" in _ablate("list", path, "--runs-root", old_root)
    assert not (old_root / "mig").exists() and (old_root / "_slurm" / "mig" / "submissions.jsonl").exists()
    assert {p.name: p.read_bytes() for p in checkpoints(folder)} == ckpt
    assert (folder / "migrated" / "metrics.jsonl").exists()  # old eval rows kept aside, not mixed with new
    assert [r["metric"] for r in _rows(folder)] == ["train_loss"] and _rows(folder)[0]["train_step"] == 4
    _ablate("run", path, "--runs-root", old_root, "--no-progress")
    assert {p.name: p.read_bytes() for p in checkpoints(folder)} == ckpt  # evaluated, not retrained
    fid = [r["value"] for r in _rows(folder) if r["metric"] == "fid"]
    expected = [r["value"] for r in _rows(run_folder(fresh, run.run_id)) if r["metric"] == "fid"]
    assert fid == expected  # same model, same per-image seeds: the same number as a fresh run


def test_one_label_for_a_sampler_setting_its_word_from_its_registry_entry():
    from core.samplers import SAMPLERS
    assert label("ddim", 10, 0.0, word=SAMPLERS["ddim"].word) == "DDIM η=0 · 10 steps"
    assert label("ddpm", 100, 0.0, word=SAMPLERS["ddpm"].word) == "DDPM · 100 steps"
    assert label("ddim", eta=0.5, clip_x0=False, word=SAMPLERS["ddim"].word) == "DDIM η=0.5 · no clip"
    assert label("ddpm", 100, 0.0, spacing="trailing") == "ddpm · trailing · 100 steps"  # no word: its name


def test_exact_nll_rows_are_current_whatever_their_spacing():
    assert stale_nll({"clip_x0": True, "strata": 100}, 100) is None  # exact: every t, no strata to lay out
    assert stale_nll({"clip_x0": True, "strata": 16}, 100) == "from before the strata were geometric"
    assert stale_nll({"clip_x0": True, "strata": 16, "spacing": "geometric"}, 100) is None
    assert stale_nll({"strata": 100}, 100) == "from before the bound clipped x0"


@pytest.mark.parametrize("dropped, why", [("clip_x0", "from before the bound clipped x0"),
                                           ("spacing", "from before the strata were geometric")])
def test_stale_nll_rows_are_set_aside_and_recomputed(tmp_path, dropped, why):
    path = _spec(tmp_path, "clip", '["group"]')
    run = load_spec(path).runs[0]
    _ablate("run", path, "--runs-root", tmp_path / "runs", "--no-progress")
    folder = run_folder(tmp_path / "runs", run.run_id)
    fresh = _rows(folder)
    nll = [r for r in fresh if r["metric"] == "nll_bpd"]
    assert len(nll) == 1 and nll[0]["clip_x0"] is True and nll[0]["spacing"] == "geometric"
    # The rows as the suite wrote them before: the NLL pass's rows without the column, then a half-written line.
    old = [{k: v for k, v in r.items() if not (k == dropped and r["strata"] is not None)} for r in fresh]
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in old) + '{"metric": "fi'
    (folder / "rows.jsonl").write_text(lines)
    ckpt = {p.name: p.read_bytes() for p in checkpoints(folder)}

    said = []
    set_aside_stale_nll(tmp_path / "runs", echo=said.append)  # what `ablate run` and `submit` do first
    listing = "\n".join(said) + _ablate("list", path, "--runs-root", tmp_path / "runs")
    assert "needs-eval" in listing and f"NLL rows {why} -> migrated/rows.jsonl" in listing
    aside = read_jsonl(folder / "migrated" / "rows.jsonl")[0]
    assert aside and all(r["strata"] is not None and dropped not in r for r in aside)
    kept = (folder / "rows.jsonl").read_text()
    assert kept.endswith('{"metric": "fi') and not any(r.get("strata") for r in read_jsonl(folder / "rows.jsonl")[0])
    _ablate("run", path, "--runs-root", tmp_path / "runs", "--no-progress")
    assert {p.name: p.read_bytes() for p in checkpoints(folder)} == ckpt  # evaluated, not retrained
    again = [r for r in _rows(folder) if r["metric"] == "nll_bpd"]
    assert len(again) == 1 and again[0]["clip_x0"] is True and again[0]["value"] == nll[0]["value"]
    assert "needs-eval" not in _ablate("list", path, "--runs-root", tmp_path / "runs")
