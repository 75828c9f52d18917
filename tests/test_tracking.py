"""TensorBoard event files (the `tracking` extra), written from the rows and read back with tensorboard's own
reader; without tensorboard, nothing changes."""
import math
import shutil
import sys

import pytest
from click.testing import CliRunner

from ablations.commands.cli import main
from ablations.store.layout import ROWS, run_folder
from ablations.store.schema import read_rows
from ablations.grid.spec import load_spec
from ablations.running.tracking import TB, setting_word
from ablations.running.training import lr_at
from conftest import tiny_spec

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="tensorboard not installed (pip install -e '.[tracking]')")


def _read(folder):
    acc = event_accumulator.EventAccumulator(str(folder / TB), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A tiny spec run end to end with tensorboard installed: (spec, runs root, run output)."""
    tmp = tmp_path_factory.mktemp("tb")
    path = tmp / "t.toml"
    path.write_text(tiny_spec(name="tb"))
    result = CliRunner().invoke(main, ["run", str(path), "--runs-root", str(tmp / "runs"), "--no-progress"])
    return load_spec(path), tmp / "runs", result


def _expect(acc, rows, cfg):
    """Every finite row value is found at its train_step under its tag, and the lr at each train_loss step."""
    scalars = {tag: {(e.step, e.value) for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    seen = set()
    for r in rows:
        if not math.isfinite(r["value"]):
            continue
        tag = f"{r['phase']}/{r['metric']}"
        if r["phase"] == "eval" and r["sampler"] is not None:
            tag += f"/{setting_word(r)}" + (f"/{r['extractor']}" if r["extractor"] else "")
        got = {v for s, v in scalars.get(tag, ()) if s == (r["train_step"] or 0)}
        assert any(math.isclose(v, r["value"], rel_tol=1e-6) for v in got), (tag, r["value"], got)
        seen.add(r["metric"])
        if r["metric"] == "train_loss":
            lr = {v for s, v in scalars["train/lr"] if s == r["train_step"]}
            assert any(math.isclose(v, lr_at(cfg, r["train_step"]), rel_tol=1e-6) for v in lr)
    assert {"train_loss", "train_img_per_s", "fid", "nll_bpd", "sample_img_per_s"} <= seen


@pytest.mark.slow
def test_a_run_writes_event_files_that_hold_its_rows(tracked):
    spec, runs, result = tracked
    assert result.exit_code == 0, result.output
    run = spec.runs[0]
    folder = run_folder(runs, run.run_id)
    rows, _ = read_rows(folder / ROWS)
    acc = _read(folder)
    _expect(acc, rows, run.config)
    grids = sorted(p.name for p in folder.glob("samples-*.png"))
    assert grids and len(acc.Tags()["images"]) == len(grids)  # one image tag per setting (a grid per checkpoint)
    assert sum(len(acc.Images(t)) for t in acc.Tags()["images"]) == len(grids)


@pytest.mark.slow
def test_export_writes_them_after_the_fact_for_runs_that_have_none(tracked, tmp_path):
    spec, runs, result = tracked
    assert result.exit_code == 0, result.output
    run = spec.runs[0]
    folder = tmp_path / run.run_id
    shutil.copytree(run_folder(runs, run.run_id), folder)
    shutil.rmtree(folder / TB)
    out = CliRunner().invoke(main, ["export", str(spec.path), "--tensorboard", "--runs-root", str(tmp_path)])
    assert out.exit_code == 0 and "1 of 1 runs exported" in out.output, out.output
    _expect(_read(folder), read_rows(folder / ROWS)[0], run.config)
    again = CliRunner().invoke(main, ["export", str(spec.path), "--tensorboard", "--runs-root", str(tmp_path)])
    assert "0 of 1 runs exported" in again.output  # runs that have event files are left alone


@pytest.mark.slow
def test_without_tensorboard_nothing_changes(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith(("tensorboard.", "torch.utils.tensorboard"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    path = tmp_path / "t.toml"
    path.write_text(tiny_spec(name="notb", steps=2))
    result = CliRunner().invoke(main, ["run", str(path), "--runs-root", str(tmp_path / "runs"), "--no-progress"])
    assert result.exit_code == 0, result.output
    folder = run_folder(tmp_path / "runs", load_spec(path).runs[0].run_id)
    assert read_rows(folder / ROWS)[0] and not (folder / TB).exists()
    out = CliRunner().invoke(main, ["export", str(path), "--tensorboard", "--runs-root", str(tmp_path / "runs")])
    assert out.exit_code != 0 and "pip install -e '.[tracking]'" in out.output
