import json
import re
import shutil
from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from ablations.commands.cli import main
from ablations.grid.spec import load_spec
from ablations.store.io import write_json
from ablations.store.layout import run_folder
from ablations.run.axes import STANDARD
from ablations.reporting import notes
from ablations.reporting.table import ci95
from conftest import spec_findings, worded

ROOT = Path(__file__).resolve().parent.parent

FIGURES = ["fid_vs_steps", "bars", "loss", "throughput", "samples"]


def _found(*folders):
    """folder -> its spec's findings (what `ablate collect` writes into findings.json)."""
    return spec_findings(*folders)


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
    assert json.loads((folder / "findings.json").read_text()) == spec.findings  # the norm question's
    assert {"fid", "nll_bpd", "train_loss", "train_img_per_s"} <= set(rows["metric"])
    assert (rows["status"] == "done").all()
    summary = pd.read_csv(folder / "summary.csv")
    fid = summary[summary["metric"] == "fid"]
    extractors = (spec.eval.fid_extractor, *spec.eval.extra_extractors)  # a cell per extractor
    assert set(fid["extractor"]) == set(extractors) and (fid["seeds"] == 1).all()
    assert (fid.groupby("extractor").size() == len(spec.runs) * len(spec.eval.settings)).all()
    record = json.loads((folder / "axes.json").read_text())  # each run's identity, from its config.json
    assert record["grid"] == list(spec.axes) == ["norm", "conditioning"] and record["scale"] == "smoke"
    assert record["runs"] == {r.run_id: {"seed": r.config.seed, "conditioning": r.config.conditioning,
                                         **{a: getattr(r.config, a) for a in STANDARD}} for r in spec.runs}
    shutil.rmtree(copy)  # the plots and the report must need nothing but the results folder
    _ablate("plot", spec.name, "--results-root", tmp_path / "res")
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
    """`ablate results` on a copy of the committed results/ (no runs folder, no models), its figures deleted,
    regenerates every summary, figure, report and the index byte for byte, PNGs included (a PNG carries no date
    and a PDF no CreationDate; both name the matplotlib that drew them), and changes no committed number."""
    copy = tmp_path / "results"
    shutil.copytree(ROOT / "results", copy, ignore=shutil.ignore_patterns("bench"))
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    drawn = [*copy.glob("*.p[nd][gf]"), *copy.glob("*/*.p[nd][gf]")]
    assert len(drawn) > 50
    for f in drawn:
        f.unlink()
    out = _ablate("results", "--results-root", copy)
    assert "index:" in out
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert sorted(after) == sorted(before)
    changed = [str(f) for f in before if after[f] != before[f]]
    assert not changed, changed
    folders = [p.parent.name for p in copy.glob("*/rows.csv")]
    assert folders
    for name in folders:
        for f in FIGURES:
            assert len(after[Path(name, f"{f}.png")]) > 1000, (name, f)
        assert "## Verdict" in (copy / name / "report.md").read_text()
    index = (copy / "README.md").read_text()
    for text in ("| p (Holm) | verdict |", "legacy protocol (FID against the training split", "within ±5 FID",
                 "![forest](forest.png)", "(90% CI, 3 seeds)", "counted once"):
        assert text in index, text
    assert all(f"[{name}]({name}/report.md)" in index for name in folders)


def test_index_counts_a_shared_run_once_and_evaluation_compile_time():
    """Each question's wall time includes its shared baseline; the scale's total counts that run once, and
    evaluation compile seconds (outside train_wall_s) are part of both."""
    from ablations.reporting.cost import hours, totals

    def rows(spec, runs):
        return pd.DataFrame([{"run_id": r, "ablation": spec, "scale": "cpu", "metric": m, "phase": p, "value": v}
                             for r in runs for m, p, v in (("train_wall_s", "train", 1800.0), ("compile_s", "eval", 60.0),
                                                           ("compile_s", "train", 99.0), ("fid", "eval", 5.0))])
    a, b = rows("loss", ["base", "hybrid"]), rows("norm", ["base", "batch"])
    assert hours(a) == "1.03 h"  # 2 x (1800 + 60): train-phase compile is inside train_wall_s
    assert totals([a, b]) == ["Every question at scale `cpu`: 3 runs, 1.55 h in all (a run shared by several "
                               "questions counted once)."]


# Student's t quantiles from a printed t-table (dof, t, P(T <= t)): the independent reference for the
# p-values below (scipy is not in the venv).
T_TABLE = [(1, 6.314, 0.95), (2, 1.886, 0.90), (2, 2.920, 0.95), (2, 4.303, 0.975), (2, 4.849, 0.98),
           (2, 6.965, 0.99), (2, 9.925, 0.995), (3, 2.353, 0.95), (4, 2.132, 0.95), (5, 2.015, 0.95),
           (10, 1.812, 0.95), (29, 2.045, 0.975)]


def test_the_t_distribution_matches_the_t_table():
    from ablations.reporting.stats import t_cdf, t_quantile
    for dof, t, q in T_TABLE:
        assert abs(t_cdf(t, dof) - q) < 2e-4 and abs(t_cdf(-t, dof) - (1 - q)) < 2e-4, (dof, t)
        assert abs(t_quantile(q, dof) - t) < 2e-3, (dof, q)
    assert t_cdf(0.0, 7) == 0.5


def _triple(mean, t):
    """Three paired differences with this mean whose one-sample t statistic mean / (sd / sqrt 3) is t."""
    sd = abs(mean) * 3 ** 0.5 / abs(t)
    return [mean - sd, mean, mean + sd]


def _index(cells):
    """(folder, spec, rows) tables from {spec: [(cell columns, per-seed values)]}."""
    out = []
    for spec, group in cells.items():
        rows = [{"metric": metric, "seed": seed, "value": v, **cell} for metric, cell, values in group
                for seed, v in enumerate(values)]
        out.append((f"{spec}-cpu", spec, worded(pd.DataFrame(rows))))
    return out


def test_holm_over_the_index_counts_a_duplicate_once_and_decides_reverses():
    """Hand-made rows whose paired t statistics sit at t-table quantiles (2 dof), so each raw one-sided p is
    known: 0.005, 0.02, 0.025, 0.1 and, for a finding the rows contradict, 0.995 (its reverse 0.005). Holm
    over the m = 5 distinct findings multiplies the k-th smallest by m - k + 1 (then takes the running max);
    the eta=1 finding repeats the DDIM-10 vs DDPM-10 numbers and is counted once."""
    from ablations.reporting.stats import holm
    from ablations.reporting.verdicts import assess

    ddim = {"sampler": "ddim", "eta": 0.0, "spacing": "leading", "clip_x0": True}
    ddpm = {**ddim, "sampler": "ddpm"}
    base = [300.0, 310.0, 320.0]

    def pair(metric, a, b, d):
        return [(metric, a, [x + y for x, y in zip(base, d)]), (metric, b, base)]
    d10, d20, d50 = _triple(-4.0, 1.886), _triple(-3.0, 4.303), _triple(+2.0, 9.925)
    tables = _index({
        "loss": pair("nll_bpd", {"loss": "hybrid"}, {"loss": "simple"}, _triple(-0.3, 9.925)),
        "schedule": pair("nll_bpd", {"schedule": "cosine"}, {"schedule": "linear"}, _triple(-0.2, 4.849)),
        "sampler": [*pair("fid", {**ddim, "steps": 10}, {**ddpm, "steps": 10}, d10),
                    ("fid", {**ddim, "eta": 1.0, "steps": 10}, base),  # DDIM eta=1 = DDPM, bit for bit
                    *pair("fid", {**ddim, "steps": 20}, {**ddpm, "steps": 20}, d20),
                    *pair("fid", {**ddim, "steps": 50}, {**ddpm, "steps": 50}, d50)],
    })
    committed = _found("loss-cpu", "schedule-cpu", "sampler-cpu")
    found = {(v["folder"], v["finding"].metric, v["a"], v["b"]): v for v in assess(tables, committed)}
    raw = {"loss": 0.005, "schedule": 0.02, "10": 0.10, "20": 0.025, "50": 0.995}
    by = {"loss": found[("loss-cpu", "nll_bpd", "loss=hybrid", "loss=simple")],
          "schedule": found[("schedule-cpu", "nll_bpd", "schedule=cosine", "schedule=linear")],
          **{s: found[("sampler-cpu", "fid", f"DDIM η=0 · {s} steps", f"DDPM · {s} steps")] for s in ("10", "20", "50")}}
    # Holm by hand, on the table's p-values: sorted 0.005, 0.02, 0.025, 0.1, 0.995 -> x5, x4, x3, x2, x1, running max
    expected = {"loss": 0.025, "schedule": 0.08, "20": 0.08, "10": 0.2, "50": 0.995}
    for name, v in by.items():
        assert abs(v["p"] - raw[name]) < 2e-4, name
        assert abs(v["p_holm"] - expected[name]) < 1e-3, name
        assert v["family"] == 5, name
    assert holm([0.005, 0.02, 0.025, 0.1, 0.995]) == [0.025, 0.08, 0.08, 0.2, 0.995]
    assert {k: v["verdict"] for k, v in by.items()} == {
        "loss": "agrees", "schedule": "inconclusive", "20": "inconclusive", "10": "inconclusive",
        "50": "disagrees"}  # schedule passes alone (0.02) and drops out; 50 steps' reverse: 0.005 x 5 = 0.025
    assert abs(by["50"]["p_reverse_holm"] - 0.025) < 1e-3
    eta = found[("sampler-cpu", "fid", "DDIM η=0 · 10 steps", "DDIM η=1 · 10 steps")]
    assert eta["same_as"] is by["10"] and eta["p_holm"] == by["10"]["p_holm"]
    without = assess([t for t in tables if t[1] != "loss"], committed)  # a smaller family: smaller corrections
    assert {v["family"] for v in without} == {4}


def test_parity_is_tost_against_the_findings_absolute_margin():
    """v vs eps parity (margin 5 FID): TOST's p is the larger one-sided p; with d's mean 0 and 5 / se at the
    table's 0.99 quantile it is 0.01 (agrees, 90% CI inside ±5); with mean 3 and (5 - 3) / se at the 0.90
    quantile it is 0.10 (inconclusive); with mean 20 and (20 - 5) / se at the 0.995 quantile the reverse
    (|d| > 5, each side at alpha / 2) has p = 2 x 0.005 (disagrees)."""
    from ablations.reporting.verdicts import assess

    committed = _found("prediction-cpu")
    parity = next(f for f in committed["prediction-cpu"].findings if f.expect == "parity")
    assert parity.margin == 5.0 and parity.why
    base = [230.0, 240.0, 250.0]

    def tost(mean, bound_over_se):
        se = abs(bound_over_se and (5 - abs(mean) if abs(mean) < 5 else abs(mean) - 5)) / bound_over_se
        d = [mean - se * 3 ** 0.5, mean, mean + se * 3 ** 0.5]
        rows = pd.DataFrame([{"metric": "fid", "seed": s, "prediction": p, "sampler": "ddim", "steps": 20,
                              "eta": 0.0, "value": b + (x if p == "v" else 0.0)}
                             for s, (b, x) in enumerate(zip(base, d)) for p in ("v", "eps")])
        (v,) = assess([("prediction-cpu", "prediction", rows)], committed)  # eps vs x0 has no x0 cells: absent
        return v
    inside = tost(0.0, 6.965)
    assert abs(inside["p"] - 0.01) < 2e-4 and inside["verdict"] == "agrees" and inside["level"] == 0.90
    assert abs(inside["diff_ci"] - 2.920 * 5 / 6.965) < 2e-3 < 5 - inside["diff_ci"]  # 90% CI inside the margin
    edge = tost(3.0, 1.886)
    assert abs(edge["p"] - 0.10) < 2e-4 and edge["verdict"] == "inconclusive"
    outside = tost(20.0, 9.925)
    assert abs(outside["p_reverse"] - 0.01) < 4e-4 and outside["verdict"] == "disagrees"


def test_one_seed_reads_na_and_is_outside_the_family():
    from ablations.reporting.report import section
    from ablations.reporting.verdicts import assess
    ddim = {"sampler": "ddim", "eta": 0.0, "spacing": "leading", "clip_x0": True, "steps": 10}
    rows = pd.DataFrame([{"metric": "fid", "seed": 0, **ddim, "value": 138.2},
                         {"metric": "fid", "seed": 0, **ddim, "sampler": "ddpm", "value": 554.2}])
    (v,) = assess([("demo", "demo", rows)], _found("demo"))
    assert v["verdict"] == "n/a (1 seed)" and v["family"] == 0 and v["p"] != v["p"] and v["diff"] == 138.2 - 554.2
    text = "\n".join(section(rows, "demo", published=_found("demo")["demo"]))
    assert "| **n/a (1 seed)**" in text and "what was checked" not in text


def test_the_loss_fid_finding_reads_ancestral_ddpm_and_awaits_it():
    """DDIM (eta=0) never reads the learned variance: the loss question's FID finding reads DDPM at 100
    respaced steps, and says that it awaits the rerun where the rows hold DDIM only."""
    from ablations.reporting.verdicts import assess
    cells = [("ddim", 20), ("ddpm", 100)]

    def rows(settings):
        return worded(pd.DataFrame([{"metric": "fid", "seed": s, "loss": loss, "sampler": sampler, "steps": steps, "eta": 0.0,
                              "spacing": "leading", "clip_x0": True, "value": 250.0 + s + (9.0 * (sampler == "ddim") if
                                                                                          loss == "hybrid" else 0.0)}
                             for s in range(3) for loss in ("hybrid", "simple") for sampler, steps in settings]))
    committed = _found("loss-cpu")
    (waiting,) = assess([("loss-cpu", "loss", rows(cells[:1]))], committed)
    assert waiting["verdict"] == "awaits the rerun" and "never reads the learned variance" in waiting["finding"].awaits
    (read,) = assess([("loss-cpu", "loss", rows(cells))], committed)
    assert read["a"].startswith("DDPM · 100 steps") and read["diff"] == 0.0 and read["verdict"] == "agrees"


def test_the_index_shows_the_extractor_check_and_reports_show_the_new_metrics(tmp_path):
    """Two extractors on the same four cells: the index gives their FIDs' Spearman rank correlation,
    1 - 6 sum(d^2) / (n (n^2 - 1)) with rank differences (0, 1, -1, 0): 0.8. Precision, recall and
    solver_rms rows get their tables, and solver_rms explains DPM++-20 vs DPM++-10."""
    from ablations.reporting.index import write_index
    from ablations.reporting.report import metric_tables
    from ablations.reporting.table import summarize
    from ablations.reporting.notes import solver_note

    settings = [("dpmpp_2m", 10), ("dpmpp_2m", 20), ("ddim", 10), ("ddim", 20)]
    by_extractor = {"fmnist-classifier": [10.0, 20.0, 30.0, 40.0], "fmnist-classifier-seed1": [1.0, 3.0, 2.0, 4.0]}
    rows = []
    for seed in range(2):
        for i, (sampler, steps) in enumerate(settings):
            cell = {"run_id": f"r{seed}", "ablation": "sampler-cpu", "scale": "cpu", "seed": seed, "phase": "eval",
                    "sampler": sampler, "steps": steps, "eta": 0.0, "clip_x0": True, "spacing": "leading", "n": 1000}
            rows += [{**cell, "metric": "fid", "extractor": ex, "value": v[i] + seed} for ex, v in by_extractor.items()]
            rows += [{**cell, "metric": m, "extractor": "fmnist-classifier", "value": x}
                     for m, x in (("precision", 0.5 + i / 10), ("recall", 0.4), ("solver_rms", 0.2 / steps + seed * steps / 1000))]
    from ablations.store.schema import RUN_COLUMNS, SPEC_COLUMNS, STATUS_COLUMNS
    table = pd.DataFrame(rows).reindex(columns=list(dict.fromkeys([*RUN_COLUMNS, *SPEC_COLUMNS, *STATUS_COLUMNS])))
    (tmp_path / "sampler-cpu").mkdir()
    table.to_csv(tmp_path / "sampler-cpu" / "rows.csv", index=False)
    index = write_index(tmp_path).read_text()
    assert ("Spearman rank correlation of FID between `fmnist-classifier` and `fmnist-classifier-seed1` over the 4 "
            "cells both scored, each run once (sampler-cpu; mean over seeds) is 0.800.") in index
    text = "\n".join(metric_tables(summarize(table, []), None))
    for title in ("## Precision by sampler setting", "## Recall by sampler setting", "## Solver error by sampler",
                  "## FID by sampler setting (fmnist-classifier-seed1)"):
        assert title in text
    (note,) = solver_note(table)
    # solver_rms at 10 steps: 0.02, 0.03 (mean 0.025); 20 - 10 per seed: -0.01, 0.0; FID is 10 higher at 20
    assert "0.025 at 10 steps, 20 − 10 = -0.005 ± 0.064 over 2 seeds" in note and "FID = 10 ± 0, higher on 2 of 2" in note
    assert "the solver lands closer to the ODE's endpoint at 20 steps" in note


def test_a_finding_that_does_not_reproduce_lists_what_was_checked_from_the_rows(tmp_path):
    """The sampler's checks appear only where a finding disagrees or is inconclusive, and the per-seed
    differences and the η=1 ≡ DDPM line are computed from the rows, not typed."""
    from ablations.reporting.report import section
    sampler = _found("sampler-cpu")["sampler-cpu"]
    noted = notes.read(ROOT / "results", "sampler")

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
    worse = "\n".join(section(disagreeing, "sampler", published=sampler, noted=noted))
    assert "| **disagrees**" in worse and "what was checked" in worse
    assert "| 77.67 ± 6.3 | 71 ± 2.5 |" in worse  # the clipped cells alone
    assert "at 10 steps their FIDs differ by at most 0.03 on any of 3 seeds" in worse
    assert "Without clipping, DDIM-10 − DDPM-10 FID = -10 ± 2.5 over 3 seeds" in worse
    assert "(with clipping: 6.667 ± 3.8): the sign changes." in worse
    assert "(disagrees), per training seed: seed 0: +5, seed 1: +8, seed 2: +7." in worse
    split = "\n".join(section(rows([75, 62, 78], [70, 72, 71], [70, 72, 71]), "sampler", published=sampler,
                               noted=noted))
    assert "| **inconclusive**" in split and "what was checked" in split
    assert "(inconclusive), per training seed: seed 0: +5, seed 1: -10, seed 2: +7." in split
    one = "\n".join(section(rows([75], [70], [70]), "sampler", published=sampler, noted=noted))  # one seed: no test
    assert "| **n/a (1 seed)**" in one and "what was checked" not in one
    better = "\n".join(section(rows([60, 62, 61], [70, 72, 71], [70, 72, 71]), "sampler", published=sampler,
                                noted=noted))
    assert "| **agrees**" in better and "| **disagrees**" not in better and "what was checked" not in better
    # the index links a disagreement to that section
    from ablations.reporting.index import write_index
    from ablations.reporting.verdicts import FILE
    from ablations.reporting.wording import CHECKED_ANCHOR, CHECKED_TITLE
    (tmp_path / "sampler-cpu").mkdir()
    write_json(tmp_path / "sampler-cpu" / FILE, load_spec(ROOT / "ablations" / "sampler.toml").findings)
    table = disagreeing.assign(ablation="sampler-cpu", scale="cpu", run_id="r", phase="eval")
    table.to_csv(tmp_path / "sampler-cpu" / "rows.csv")
    index = write_index(tmp_path).read_text()
    assert re.search(r"\*\*disagrees\*\* \(reverse p [0-9.e-]+\) "
                     rf"\(\[what was checked\]\(sampler-cpu/report.md#{CHECKED_ANCHOR}\)\)", index)
    assert CHECKED_ANCHOR == CHECKED_TITLE.lower().replace(":", "").replace(" ", "-")


def test_the_sample_figure_has_a_row_per_setting_and_a_column_per_seed():
    """sampler-cpu: 23 settings x 3 seeds, every panel present, each row one setting on every seed; a
    panel is drawn at 2.1 in (252 px at 120 dpi), so three seeds and the labels fit 1,200 px."""
    from ablations.reporting.plots import LABEL_IN, PANEL_IN, grid_cells
    folder = ROOT / "results" / "sampler-cpu"
    rows = pd.read_csv(folder / "rows.csv")
    names, seeds, found = grid_cells(worded(rows), None, folder)
    fid = rows[rows["metric"] == "fid"]
    assert len(names) == len(fid.drop_duplicates(["sampler", "steps", "eta", "clip_x0", "spacing"])) == 23
    assert seeds == [0, 1, 2] and len(found) == 69
    assert all(f.name.startswith(tuple(rows.loc[rows["seed"] == s, "run_id"])) for (_, s), f in found.items())
    assert (LABEL_IN + PANEL_IN * len(seeds)) * 120 <= 1200
    norm = ROOT / "results" / "norm-cpu"
    names, seeds, _ = grid_cells(pd.read_csv(norm / "rows.csv"), "norm", norm)
    assert names[0].startswith("norm=group\n") and len(names) == 4 and seeds == [0, 1, 2]


def test_the_index_shows_the_sample_set_noise_and_verdicts_keep_the_first_sample_seed(tmp_path):
    """Two models (seeds) x two cells, each scored at sample seeds 0 and 1. |FID(0) - FID(1)| is 3, 2, 1, 4
    (mean 2.5, largest 4); the cells' means over sample seeds are (101.5, 109) and (50.5, 72), whose std
    over seeds is 7.5/sqrt(2) and 21.5/sqrt(2), 10.25 on average. A verdict reads sample seed 0 only."""
    from ablations.reporting.index import write_index
    from ablations.reporting.verdicts import select

    fids = {("ddim", 10): {0: (100.0, 103.0), 1: (110.0, 108.0)}, ("ddim", 20): {0: (50.0, 51.0), 1: (70.0, 74.0)}}
    rows = [{"run_id": f"r{seed}", "ablation": "sampler-cpu", "scale": "cpu", "seed": seed, "phase": "eval",
             "metric": "fid", "sampler": sampler, "steps": steps, "eta": 0.0, "clip_x0": True, "spacing": "leading",
             "n": 1000, "extractor": "fmnist-classifier", "sample_seed": k, "value": v}
            for (sampler, steps), by_seed in fids.items() for seed, pair in by_seed.items() for k, v in enumerate(pair)]
    # a cell scored at sample seed 0 only (its spread is not the check's) and a training row (no sample seed)
    rows += [{**rows[0], "run_id": f"r{seed}", "seed": seed, "steps": 50, "sample_seed": 0, "value": v}
             for seed, v in ((0, 10.0), (1, 90.0))]
    rows.append({"run_id": "r0", "ablation": "sampler-cpu", "scale": "cpu", "seed": 0, "phase": "train",
                 "metric": "train_loss", "value": 1.0})
    from ablations.store.schema import RUN_COLUMNS, SPEC_COLUMNS, STATUS_COLUMNS
    table = pd.DataFrame(rows).reindex(columns=list(dict.fromkeys([*RUN_COLUMNS, *SPEC_COLUMNS, *STATUS_COLUMNS])))
    (tmp_path / "sampler-cpu").mkdir()
    table.to_csv(tmp_path / "sampler-cpu" / "rows.csv", index=False)
    index = write_index(tmp_path).read_text()
    assert ("Sample-set noise (sampler-cpu): over the 4 (model, cell) pairs scored at sample seeds 0 and 1, "
            "|FID(0) − FID(1)| is 2.5 on average (largest 4); the training seeds' std of those cells is 10.3 on "
            "average.") in index
    assert select(table, "fid", {"sampler": "ddim", "steps": 10}).tolist() == [100.0, 110.0]


def test_the_extractor_check_ranks_within_a_checkpoint_counts_a_shared_run_once_and_checks_each_seeds_sign():
    """The fault: the check ranked cells across checkpoints (training progress made the 1.000) and counted a run
    two folders share twice. Now one correlation per checkpoint over distinct runs, and each FID finding's
    per-seed sign under both extractors."""
    from ablations.reporting.index import extractor_check
    from ablations.reporting import verdicts
    from ablations.reporting.verdicts import Finding, Published
    rows = []
    for folder, arms in (("a-curve", ("x", "y")), ("b-curve", ("x", "z"))):  # run "x" is in both folders
        for step in (100, 200):
            for arm in arms:
                for seed in range(2):
                    fid = {"x": 300.0, "y": 250.0, "z": 280.0}[arm] - step + seed
                    for extractor, scale in (("e1", 1.0), ("e2", 2.0 if arm != "z" or step == 100 else 10.0)):
                        rows.append({"folder": folder, "run_id": f"{arm}{seed}", "arm": arm, "seed": seed,
                                     "metric": "fid", "phase": "eval", "train_step": step, "sampler": "ddim",
                                     "steps": 20, "eta": 0.0, "clip_x0": True, "spacing": "leading",
                                     "extractor": extractor, "value": fid * scale})
    table = pd.DataFrame(rows)
    tables = [(f, f.split("-")[0], table[table["folder"] == f].drop(columns="folder")) for f in ("a-curve", "b-curve")]
    found = verdicts.assess(tables, {"b-curve": Published("b", (Finding("b", "fid", {"arm": "z"}, {"arm": "x"},
                                                                        "lower", "z beats x"),))})
    lines = extractor_check(tables, found)
    assert [line.split(":")[0] for line in lines[:2]] == ["Extractor check at 100 steps", "Extractor check at 200 steps"]
    assert "over the 3 cells both scored, each run once" in lines[0]  # x, y, z: x not twice
    assert lines[0].endswith("is 1.000.") and lines[1].endswith("is 0.500.")  # z's e2 rises to the top at 200
    assert lines[2].startswith("Extractor check, per seed: a − b has the same sign under both extractors on every "
                               "seed in 1 of 2 (FID finding, checkpoint) pairs; not in b-curve")


def test_the_extractor_check_reads_one_sample_set_a_second_of_the_same_weights_is_not_a_cell():
    """The fault: rows scored again at sample seed 1 (the sample-set noise check) became cells of their own in
    the extractor check, so one model was ranked twice and the 1,400-step correlation moved (0.891 -> 0.867)
    when the last seed-1 run landed. Now the check reads the lowest sample seed, as the tables do."""
    from ablations.reporting.index import extractor_check
    rows = []
    for arm, fid in (("x", 300.0), ("y", 250.0), ("z", 280.0)):
        for seed in range(2):
            for extractor, scale in (("e1", 1.0), ("e2", 1.0 if arm != "z" else 0.8)):
                rows.append({"run_id": f"{arm}{seed}", "arm": arm, "seed": seed, "metric": "fid", "phase": "eval",
                             "train_step": 100, "sampler": "ddim", "steps": 20, "eta": 0.0, "clip_x0": True,
                             "spacing": "leading", "extractor": extractor, "sample_seed": 0,
                             "value": fid * scale + seed})
    first = pd.DataFrame(rows)
    again = first[first["arm"] == "x"].assign(sample_seed=1)  # the same weights, another x_T: e2 ranks it lowest
    again = again.assign(value=again["value"].where(again["extractor"] == "e1", 100.0))
    alone, both = (extractor_check([("a-curve", "a", t)]) for t in (first, pd.concat([first, again])))
    assert alone == both
    assert "over the 3 cells both scored" in both[0] and both[0].endswith("is 0.500.")


ROW_LIMIT, CLAIM_LIMIT, CELL_LIMIT = 250, 160, 45  # rendered characters; see the test below


def _rendered(line: str) -> list[str]:
    """An index row's cells as a reader sees them: link targets and bold marks dropped."""
    cells = line.strip().strip("|").split(" | ")
    return [re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", c).replace("**", "").strip() for c in cells]


def test_the_index_is_one_short_row_per_finding_under_the_rule_in_five_bullets():
    """results/README.md reads at a glance: one sentence, the rule as five bullets and a link to METHODS.md,
    which holds the rule in full; then one row per finding: question, claim (source), a − b with its CI's
    level named, Holm p, verdict, settled, protocol, what needs more than a word a footnote under the table.
    A row as rendered is the paper's claim, at most 160 characters (the spec's sentence up to its source; the
    longest, weighting's, is 147), and six cells of at most 45 (a − b with its CI, level and seeds is 41 at
    most): at most 250 characters of text in all (239 now), against the 500-585 a row ran to with our cells,
    cost and machine in it."""
    from ablations.reporting import verdicts, wording
    root = ROOT / "results"
    text = (root / "README.md").read_text()
    lines = text.splitlines()
    header = lines.index("| question | claim (source) | a − b ± CI | p (Holm) | verdict | settled | protocol |")
    preamble = [x for x in lines[1:header] if x]
    assert preamble[0] == wording.INDEX_INTRO and preamble[1:6] == [f"- {b}" for b in wording.RULE_BRIEF]
    assert "[METHODS.md](METHODS.md#the-verdict-rule)" in preamble[6]
    methods = (root / "METHODS.md").read_text()
    assert "\n### The verdict rule\n" in methods and " ".join(verdicts.RULE.split()) in " ".join(methods.split())
    family = verdicts.last(verdicts.assess(verdicts.tables(root), verdicts.read_all(root)))
    rows = [_rendered(x) for x in lines[header + 2:] if x.startswith("| [")]
    assert len(rows) == len(family) > 10
    marks = set()
    for cells, v in zip(rows, family):
        question, claim, effect, p, verdict, settled, protocol = cells
        assert question == v["folder"] and claim == wording.claim_text(v["finding"]) and v["finding"].source in claim
        assert p == wording.p_text(v["p_holm"]) and verdict.startswith(v["verdict"])
        if v["diff_ci"] == v["diff_ci"]:
            assert effect.endswith(f"({v['level']:.0%} CI, {v['seeds']} seeds)"), effect
        assert protocol.startswith("legacy" if v["legacy"] else "current")
        assert len(claim) <= CLAIM_LIMIT and all(len(c) <= CELL_LIMIT for c in cells if c != claim), cells
        assert sum(map(len, cells)) <= ROW_LIMIT, cells
        marks |= set(re.findall("[¹²³⁴⁵⁶⁷⁸⁹]", verdict + protocol))
    assert {"¹", "²", "³", "⁴"} <= marks  # the legacy protocol, two reasons to await the rerun, a repeat
    for mark in marks:  # each explained once, under the table
        (note,) = [x for x in lines if x.startswith(f"- {mark} ")]
    legacy = re.compile("- [¹²³⁴⁵⁶⁷⁸⁹] legacy protocol \\(FID against the training split")
    assert sum(bool(legacy.match(x)) for x in lines) == 1


def test_what_the_index_leaves_out_is_in_each_report():
    """The index's former columns are each question's report's: our cells, the raw p, the paper's numbers and
    the margin's reason, the verdict's reasons, the trajectory and whether it is settled, what would decide
    an inconclusive verdict, the grid's wall time and machine, and the training cost to each checkpoint."""
    from ablations.reporting import cost, verdicts, wording
    from ablations.reporting.table import first_sample_set
    root = ROOT / "results"
    tables = verdicts.tables(root)
    found = verdicts.assess(tables, verdicts.read_all(root))
    rows_of = {name: first_sample_set(rows) for name, _, rows in tables}  # a report's cost: the grid's own sample set
    for curve in verdicts.trajectories(found):
        v, rows = curve[-1], rows_of[curve[-1]["folder"]]
        report = (root / v["folder"] / "report.md").read_text()
        for text in (wording.paper_text(v["finding"]), v["a"], v["b"], wording.pm(v["a_mean"], v["a_ci"]),
                     wording.pm(v["b_mean"], v["b_ci"]), wording.diff_text(v), f"| {wording.p_text(v['p'])} |",
                     wording.verdict_text(v), wording.to_decide_text(v), cost.would_take(v, rows),
                     f"Wall time of the grid: {cost.hours(rows)} ", f"on {cost.machine(rows)}."):
            assert text in report, (v["folder"], text)
        if v["n_checkpoints"] > 1:  # a curve, or a cell of a curve's folder scored at the last checkpoint only
            assert f"| {wording.trajectory_text(curve)} | {wording.settled_cell(curve)} |" in report
        else:
            assert f"checkpoints scored (training step): {wording.step_text(v['train_step'])}" in report
    for name, rows in rows_of.items():
        spent = cost.checkpoint_lines(rows)
        assert spent and all(x in (root / name / "report.md").read_text() for x in spent), name


def test_every_comparison_of_a_grid_is_reported_two_sided():
    """Each pair of a grid axis's values, on FID and NLL at the last checkpoint: a − b per seed, two-sided p
    (Student's t), Holm over the table; a pair a published finding compares is shown in the finding's order
    and names it, and a finding on other cells (one that names a sampler setting) is not taken for it."""
    from ablations.reporting import stats
    from ablations.reporting.comparisons import compare, lines
    from ablations.reporting.verdicts import Finding

    setting = {"sampler": "ddim", "steps": 20, "eta": 0.0, "spacing": "leading", "clip_x0": True}
    shift = {"linear": 0.0, "cosine": 30.0, "sigmoid": 5.0}
    rows = pd.DataFrame([{"metric": m, "seed": s, "schedule": k, "train_step": step, "phase": "eval", **setting,
                          "value": (100.0 if m == "fid" else 4.0)
                          + shift[k] * (1 if m == "fid" else -0.01) * (1 + s / 3) * (3 if step == 700 else 1)}
                         for m in ("fid", "nll_bpd") for s in range(3) for k in shift for step in (700, 1400)])
    nll = Finding("t", "nll_bpd", {"schedule": "linear"}, {"schedule": "cosine"}, "higher", "paper", source="P")
    fid_ddpm = Finding("t", "fid", {"schedule": "cosine", **setting, "sampler": "ddpm"}, {"schedule": "linear"},
                       "lower", "paper", source="P")
    found = [{"finding": nll}, {"finding": fid_ddpm}]
    entries = compare(rows, ["schedule"], found)
    assert [(e["metric"], e["a"]["schedule"], e["b"]["schedule"]) for e in entries] == [
        ("fid", "cosine", "linear"), ("fid", "sigmoid", "linear"), ("fid", "sigmoid", "cosine"),
        ("nll_bpd", "linear", "cosine"), ("nll_bpd", "sigmoid", "linear"), ("nll_bpd", "sigmoid", "cosine")]
    first = entries[0]
    d = [30.0 * (1 + s / 3) for s in range(3)]  # the last checkpoint's (the 700-step rows' are 3x)
    assert abs(first["diff"] - sum(d) / 3) < 1e-9 and abs(first["p"] - stats.p_two_sided(d)) < 1e-12
    assert [e["p_holm"] for e in entries] == stats.holm([e["p"] for e in entries])
    assert [e["finding"] for e in entries] == [None, None, None, nll, None, None]
    assert entries[3]["diff"] > 0  # linear − cosine NLL, as the finding reads it
    table = lines(rows, ["schedule"], found)
    assert len([t for t in table if t.startswith("| fid") or t.startswith("| nll_bpd")]) == 6
    assert "| higher (P) |" in table[table.index(next(t for t in table if t.startswith("| nll_bpd")))]
    assert lines(rows, [], found) == []  # no grid axis: nothing to pair


def test_a_run_another_spec_holds_reads_done_in_the_rows_of_a_spec_it_has_finished(smoke, tmp_path):
    """status.json says what the run is (running, for whichever spec holds it); a spec whose every asked row the
    run already holds collects and lists it as done (ledger.state), and one that still lacks a row as the run's
    own state."""
    import os

    spec, runs, _ = smoke
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    held = spec.runs[0].run_id
    status = json.loads((copy / held / "status.json").read_text())
    from ablations.store.layout import start_time
    live = {"state": "running", "pid": os.getpid(), "start": start_time(os.getpid())}  # this process: alive
    write_json(copy / held / "status.json", {**status, **live})

    def collected():
        _ablate("collect", spec.path, "--scale", "smoke", "--runs-root", copy, "--results-root", tmp_path / "res")
        rows = pd.read_csv(tmp_path / "res" / spec.name / "rows.csv")
        listed = next(line for line in _ablate("list", spec.path, "--scale", "smoke", "--runs-root", copy).splitlines()
                      if line.startswith(held))
        assert set(rows.loc[rows["run_id"] == held, "status"]) <= set(listed.split()), listed  # list says the same
        return set(rows.loc[rows["run_id"] == held, "status"]), set(rows.loc[rows["run_id"] != held, "status"])

    assert collected() == ({"done"}, {"done"})
    table = tmp_path / "res" / spec.name / "rows.csv"
    while_held = table.read_bytes()
    write_json(copy / held / "status.json", status)  # done, and held by no one
    assert collected() == ({"done"}, {"done"}) and table.read_bytes() == while_held  # whoever holds the run
    write_json(copy / held / "status.json", {**status, **live})
    lines = (copy / held / "rows.jsonl").read_text().splitlines()
    fid = next(i for i, line in enumerate(lines) if '"metric": "fid"' in line)
    (copy / held / "rows.jsonl").write_text("\n".join(lines[:fid] + lines[fid + 1:]) + "\n")
    assert collected() == ({"running"}, {"done"})


def test_a_second_sample_set_leaves_the_tables_figures_and_verdicts_as_they_were(smoke, tmp_path):
    """The same weights scored again at sample seed 1 (the sample-set noise check) join the folder's rows; the
    report's tables, its cost and verdicts, and every figure read sample seed 0 as before (the same bytes), and the
    protocol names both sets."""
    from ablations.reporting.table import summarize, write_csv
    spec, runs, _ = smoke
    _ablate("collect", spec.path, "--scale", "smoke", "--runs-root", runs, "--results-root", tmp_path)
    folder = tmp_path / spec.name

    def drawn():
        _ablate("plot", folder)
        _ablate("report", folder)
        return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}, (folder / "report.md").read_text()
    figures, report = drawn()
    rows = pd.read_csv(folder / "rows.csv")
    again = rows[rows["sample_seed"].notna()].assign(sample_seed=1, value=lambda d: d["value"] + 1000.0)
    both = pd.concat([rows, again], ignore_index=True)
    write_csv(both, folder / "rows.csv")
    write_csv(summarize(pd.read_csv(folder / "rows.csv"), json.loads((folder / "axes.json").read_text())["axes"]),
              folder / "summary.csv")
    figures_after, report_after = drawn()
    assert figures_after == figures
    old, new = report.splitlines(), report_after.splitlines()
    changed = [(a, b) for a, b in zip(old, new) if a != b]
    assert len(old) == len(new) and len(changed) == 1, changed
    assert "sample seed (x_T and noise, per image): 0, 1 (the tables, figures and verdicts read the lowest" in changed[0][1]
