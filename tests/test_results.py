import shutil

import pandas as pd
from click.testing import CliRunner

from ablations.cli import main
from ablations.layout import run_folder
from results.table import ci95

FIGURES = ["fid_vs_steps", "bars", "loss", "throughput", "samples"]


def _ablate(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_collect_plot_report_from_the_table_alone(smoke, tmp_path):
    spec, runs, _ = smoke
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    out = _ablate("collect", spec.path, "--scale", "smoke", "--runs-root", copy, "--results-root", tmp_path / "res")
    assert "0 half-written lines skipped" in out
    folder = tmp_path / "res" / spec.name
    rows = pd.read_csv(folder / "rows.csv")
    assert set(rows["run_id"]) == {r.run_id for r in spec.runs}
    assert {"fid", "nll_bpd", "train_loss", "train_img_per_s"} <= set(rows["metric"])
    assert (rows["status"] == "done").all()
    summary = pd.read_csv(folder / "summary.csv")
    fid = summary[summary["metric"] == "fid"]
    assert len(fid) == len(spec.runs) * len(spec.eval.settings) and (fid["seeds"] == 1).all()
    shutil.rmtree(copy)  # the plots and the report must need nothing but the table
    _ablate("plot", spec.path, "--scale", "smoke", "--results-root", tmp_path / "res")
    _ablate("report", folder)
    for f in FIGURES:
        assert (folder / f"{f}.png").stat().st_size > 1000 and (folder / f"{f}.pdf").exists()
    report = (folder / "report.md").read_text()
    for text in ("## Protocol", "fmnist-classifier", "## FID by sampler setting", "## Bits/dim", "![bars](bars.png)",
                 "stratified timesteps per image (exact when equal to T): 4", "DDIM η=0 · 50 steps"):
        assert text in report
    for r in spec.runs:
        assert r.run_id in report


def test_failed_runs_and_half_written_rows_are_kept_and_counted(smoke, tmp_path):
    spec, runs, _ = smoke
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    first, second = (run_folder(copy, r.run_id) for r in spec.runs[:2])
    with open(first / "rows.jsonl", "a") as f:
        f.write('{"metric": "fid", "value": 1')  # a writer interrupted mid-line
    (second / "status.json").write_text('{"state": "failed", "reason": "CUDA out of memory", "step": 2}')
    (second / "rows.jsonl").unlink()
    out = _ablate("collect", spec.path, "--scale", "smoke", "--runs-root", copy, "--results-root", tmp_path / "res")
    assert "1 half-written lines skipped" in out and "(1 failed)" in out
    rows = pd.read_csv(tmp_path / "res" / spec.name / "rows.csv")
    failed = rows[rows["run_id"] == spec.runs[1].run_id]
    assert len(failed) == 1 and failed["status"].item() == "failed" and failed["reason"].item() == "CUDA out of memory"
    assert failed["norm"].item() == spec.runs[1].config.norm
    again = _ablate("collect", spec.path, "--scale", "smoke", "--runs-root", copy, "--results-root", tmp_path / "res")
    assert again == out and pd.read_csv(tmp_path / "res" / spec.name / "rows.csv").equals(rows)


def test_ci95_uses_students_t():
    assert abs(ci95(1.0, 2) - 12.706 / 2**0.5) < 1e-9
    assert abs(ci95(2.0, 100) - 1.96 * 2 / 10) < 1e-9
    assert ci95(1.0, 1) != ci95(1.0, 1)  # NaN for one seed
