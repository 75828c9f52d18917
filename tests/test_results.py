import shutil
from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from ablations.cli import main
from ablations.layout import run_folder
from results.table import ci95

ROOT = Path(__file__).resolve().parent.parent

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
    assert "0 lines that are not rows skipped" in out
    folder = tmp_path / "res" / spec.name
    rows = pd.read_csv(folder / "rows.csv")
    assert set(rows["run_id"]) == {r.run_id for r in spec.runs}
    assert {"fid", "nll_bpd", "train_loss", "train_img_per_s"} <= set(rows["metric"])
    assert (rows["status"] == "done").all()
    summary = pd.read_csv(folder / "summary.csv")
    fid = summary[summary["metric"] == "fid"]
    extractors = (spec.eval.fid_extractor, *spec.eval.extra_extractors)  # a cell per extractor
    assert set(fid["extractor"]) == set(extractors) and (fid["seeds"] == 1).all()
    assert (fid.groupby("extractor").size() == len(spec.runs) * len(spec.eval.settings)).all()
    shutil.rmtree(copy)  # the plots and the report must need nothing but the table
    _ablate("plot", spec.path, "--scale", "smoke", "--results-root", tmp_path / "res")
    _ablate("report", folder)
    for f in FIGURES:
        assert (folder / f"{f}.png").stat().st_size > 1000 and (folder / f"{f}.pdf").exists()
    report = (folder / "report.md").read_text()
    for text in ("## Protocol", "fmnist-classifier", "## FID by sampler setting", "## Bits/dim", "![bars](bars.png)",
                 "stratified timesteps per image (exact when equal to T): 4, in geometric strata; x0 clipped in the "
                 "bound: True",
                 "DDIM η=0 · 50 steps"):
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
    assert "1 lines that are not rows skipped" in out and "(1 failed)" in out
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


def test_make_results_redraws_everything_from_the_committed_rows_alone(tmp_path):
    """`ablate results` on a copy of the committed results/ (no runs folder, no models) regenerates every
    summary, figure, report and the index, and changes no committed number."""
    committed = ROOT / "results"
    copy = tmp_path / "results"
    shutil.copytree(committed, copy, ignore=shutil.ignore_patterns("bench"))
    for f in copy.glob("*/*.png"):
        f.unlink()
    out = _ablate("results", "--results-root", copy)
    assert "index:" in out
    folders = [p.parent.name for p in committed.glob("*/rows.csv")]
    assert folders
    for name in folders:
        for table in ("rows.csv", "summary.csv"):
            assert (copy / name / table).read_bytes() == (committed / name / table).read_bytes(), (name, table)
        assert (copy / name / "report.md").read_text() == (committed / name / "report.md").read_text()
        for f in FIGURES:  # the PDFs carry no date: a redraw is the same bytes, error bands included
            assert (copy / name / f"{f}.png").exists()
            assert (copy / name / f"{f}.pdf").read_bytes() == (committed / name / f"{f}.pdf").read_bytes(), (name, f)
        assert "## Verdict" in (copy / name / "report.md").read_text()
    index = (copy / "README.md").read_text()
    assert (committed / "README.md").read_text() == index
    assert all(f"[{name}]({name}/report.md)" in index for name in folders)


def test_index_counts_a_shared_run_once_and_evaluation_compile_time():
    """Each question's wall time includes its shared baseline; the scale's total counts that run once, and
    evaluation compile seconds (outside train_wall_s) are part of both."""
    from results.index import _hours, _totals

    def rows(spec, runs):
        return pd.DataFrame([{"run_id": r, "ablation": spec, "scale": "cpu", "metric": m, "phase": p, "value": v}
                             for r in runs for m, p, v in (("train_wall_s", "train", 1800.0), ("compile_s", "eval", 60.0),
                                                           ("compile_s", "train", 99.0), ("fid", "eval", 5.0))])
    a, b = rows("loss", ["base", "hybrid"]), rows("norm", ["base", "batch"])
    assert _hours(a) == "1.03 h"  # 2 x (1800 + 60): train-phase compile is inside train_wall_s
    assert _totals([a, b]) == ["Every question at scale `cpu`: 3 runs, 1.55 h in all (a run shared by several "
                               "questions counted once)."]


def test_verdicts_follow_the_stated_rule_on_paired_seeds():
    """'lower' agrees only when the whole CI of the per-seed difference is below 0; parity only inside
    +-10% of b; a one-seed difference has no CI and stays inconclusive."""
    from results.verdicts import decide, verdicts

    assert decide(-5.0, 1.0, "lower", 100) == "agrees"
    assert decide(5.0, 1.0, "lower", 100) == "disagrees"
    assert decide(-5.0, 6.0, "lower", 100) == "inconclusive"
    assert decide(1.0, 2.0, "parity", 100) == "agrees"
    assert decide(20.0, 2.0, "parity", 100) == "disagrees"
    assert decide(-416.0, float("nan"), "lower", 554) == "inconclusive"

    def rows(pairs):  # (seed, loss, nll) rows of the loss question
        return pd.DataFrame([{"metric": "nll_bpd", "seed": s, "loss": loss, "value": v} for s, loss, v in pairs])
    # hybrid is 0.3 lower on every seed: decided although the seeds' levels differ by far more
    agree = verdicts(rows([(0, "hybrid", 3.1), (0, "simple", 3.4), (1, "hybrid", 3.6), (1, "simple", 3.9),
                           (2, "hybrid", 2.7), (2, "simple", 3.01)]), "loss")
    assert [(v["seeds"], v["verdict"]) for v in agree] == [(3, "agrees")]
    mixed = verdicts(rows([(0, "hybrid", 3.1), (0, "simple", 3.4), (1, "hybrid", 3.9), (1, "simple", 3.6),
                           (2, "hybrid", 3.0), (2, "simple", 3.01)]), "loss")
    assert [v["verdict"] for v in mixed] == ["inconclusive"]


def test_a_finding_that_does_not_reproduce_lists_what_was_checked_from_the_rows(tmp_path):
    """The sampler's checks appear only where a finding disagrees or is inconclusive, and the per-seed
    differences and the η=1 ≡ DDPM line are computed from the rows, not typed."""
    from results.verdicts import section

    def rows(ddim, ddpm, eta1, noclip=()):
        out = []
        for seed, (a, b, c) in enumerate(zip(ddim, ddpm, eta1)):
            cells = [("ddim", 0.0, True, a), ("ddpm", 0.0, True, b), ("ddim", 1.0, True, c)]
            cells += [("ddim", 0.0, False, noclip[seed][0]), ("ddpm", 0.0, False, noclip[seed][1])] if noclip else []
            out += [{"metric": m, "seed": seed, "sampler": sampler, "eta": eta, "clip_x0": clip, "steps": 10,
                     "spacing": "leading", "value": v * k}
                    for sampler, eta, clip, v in cells for m, k in (("fid", 1.0), ("kid", 0.8))]
        return pd.DataFrame(out)
    disagreeing = rows([75, 80, 78], [70, 72, 71], [70.01, 72, 71.03], noclip=[(60, 70), (61, 72), (62, 71)])
    worse = "\n".join(section(disagreeing, "sampler"))
    assert "**disagrees**" in worse and "what was checked" in worse
    assert "| 77.67 ± 6.3 | 71 ± 2.5 |" in worse  # the clipped cells alone
    assert "at 10 steps their FIDs differ by at most 0.03 on any of 3 seeds" in worse
    assert "Without clipping, DDIM-10 − DDPM-10 FID = -10 ± 2.5 over 3 seeds" in worse
    assert "(with clipping: 6.667 ± 3.8): the sign changes." in worse
    assert "(disagrees), per training seed: seed 0: +5, seed 1: +8, seed 2: +7." in worse
    split = "\n".join(section(rows([75, 62, 78], [70, 72, 71], [70, 72, 71]), "sampler"))
    assert "**inconclusive**" in split and "what was checked" in split
    assert "(inconclusive), per training seed: seed 0: +5, seed 1: -10, seed 2: +7." in split
    one = "\n".join(section(rows([75], [70], [70]), "sampler"))  # one seed: no CI, nothing to investigate
    assert "**inconclusive**" in one and "what was checked" not in one
    better = "\n".join(section(rows([60, 62, 61], [70, 72, 71], [70, 72, 71]), "sampler"))
    assert "**agrees**" in better and "**disagrees**" not in better and "what was checked" not in better
    # the index links a disagreement to that section
    from results.index import write_index
    from results.verdicts import CHECKED_ANCHOR, CHECKED_TITLE
    (tmp_path / "sampler-cpu").mkdir()
    table = disagreeing.assign(ablation="sampler-cpu", scale="cpu", run_id="r", phase="eval")
    table.to_csv(tmp_path / "sampler-cpu" / "rows.csv")
    index = write_index(tmp_path).read_text()
    assert f"**disagrees** ([what was checked](sampler-cpu/report.md#{CHECKED_ANCHOR}))" in index
    assert CHECKED_ANCHOR == CHECKED_TITLE.lower().replace(":", "").replace(" ", "-")
