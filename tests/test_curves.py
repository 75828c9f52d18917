"""Curves over training on hand-made rows: a summary cell per checkpoint, verdicts per checkpoint with a Holm
family per train_step, the settled rule, the cost to each checkpoint, and old rows read as one checkpoint."""
import math
from pathlib import Path

import pandas as pd

from conftest import registry_words, spec_findings, worded
from ablations.grid.spec import load_spec
from ablations.store.io import write_json
from ablations.store.schema import RUN_COLUMNS, SPEC_COLUMNS, STATUS_COLUMNS
from ablations.reporting import axes, notes, stats
from ablations.reporting.table import checkpointed, checkpoints, cost, summarize
from ablations.reporting.verdicts import ALPHA, FILE, assess, last, settled, trajectories
from ablations.reporting.wording import p_text, settled_text, trajectory_text

ROOT = Path(__file__).resolve().parent.parent
FOUND = spec_findings("prediction-cpu", "schedule-cpu", "sampler-cpu")
STEPS = [350, 700, 1400, 2800]
BATCH = 32
DDIM20 = {"sampler": "ddim", "steps": 20, "eta": 0.0, "clip_x0": True, "spacing": "leading"}
COLUMNS = list(dict.fromkeys([*RUN_COLUMNS, *SPEC_COLUMNS, *STATUS_COLUMNS, "prediction", "schedule"]))


def _runs(spec, axis, a, b, diffs, steps, metric="fid", base=200.0, setting=DDIM20):
    """Rows of a spec with cells axis=a and axis=b over seeds: at checkpoint steps[k], a − b on seed i is
    diffs[k][i] (b reads base + 10 i - step / 100). Train rows at every checkpoint carry the cost: images,
    FLOPs (1e9 a step) and wall seconds (0.5 a step, 0.6 for a)."""
    rows = []
    for value in (a, b):
        for seed in range(len(diffs[0])):
            run = {"run_id": f"{spec}-{value}-{seed}", "ablation": f"{spec}-cpu", "scale": "cpu", "seed": seed,
                   axis: value, "status": "done"}
            for k, step in enumerate(steps):
                v = base + 10 * seed - step / 100 + (diffs[k][seed] if value == a else 0.0)
                cell = setting if metric != "nll_bpd" else {}
                rows.append({**run, **cell, "metric": metric, "phase": "eval", "train_step": step, "n": 1000,
                             "sample_seed": 0, "value": v})
                slow = 0.6 if value == a else 0.5
                rows += [{**run, "metric": m, "phase": "train", "train_step": step, "n": BATCH, "value": x}
                         for m, x in (("train_images", step * BATCH), ("train_flops", 1e9 * step),
                                      ("train_wall_s", slow * step), ("train_img_per_s", BATCH / slow))]
                rows.append({**run, "metric": "train_loss", "phase": "train", "train_step": step, "n": BATCH,
                             "value": 1.0 / step})
    return worded(pd.DataFrame(rows).reindex(columns=COLUMNS))


def _pred(diffs, steps=STEPS):
    return _runs("prediction", "prediction", "eps", "x0", diffs, steps)


def _sched(diffs, steps=STEPS):
    return _runs("schedule", "schedule", "cosine", "linear", diffs, steps, metric="nll_bpd", base=4.0)


MIXED, LATE = [[5.0, -5.0, 1.0], [3.0, -4.0, 2.0]], [[-10.0, -11.0, -12.0], [-20.0, -22.0, -25.0]]
NLL = [[-0.5, -0.52, -0.55]] * 4


def _folder(root, name, rows, axis) -> Path:
    """A results folder of these rows: rows.csv, and axes.json naming `axis` as the grid's."""
    (root / name).mkdir()
    rows.drop(columns="word", errors="ignore").to_csv(root / name / "rows.csv", index=False)
    axes.write(root / name, **{**axes.from_rows(rows.drop(columns="word", errors="ignore"), f"ablations/{axis}.toml",
                                                [axis]), "words": registry_words(rows)})
    write_json(root / name / FILE, load_spec(ROOT / "ablations" / f"{axis}.toml").findings)  # as collect writes it
    return root / name


def _curve(found, folder, metric):
    (c,) = [c for c in trajectories(found) if c[-1]["folder"] == folder and c[-1]["finding"].metric == metric]
    return c


def test_summary_has_a_cell_per_checkpoint():
    rows = _pred(MIXED + LATE)
    s = summarize(rows, ["prediction"])
    fid = s[s["metric"] == "fid"].sort_values(["prediction", "train_step"])
    assert list(fid["train_step"]) == STEPS * 2 and (fid["seeds"] == 3).all()
    eps = fid[fid["prediction"] == "eps"].set_index("train_step")["mean"]
    for k, step in enumerate(STEPS):  # b's mean is 210 - step / 100; a adds the mean difference
        assert math.isclose(eps[step], 210 - step / 100 + sum((MIXED + LATE)[k]) / 3)
    wall = s[s["metric"] == "train_wall_s"]
    assert len(wall) == 2 * len(STEPS)  # the cost to each checkpoint is a cell too


def test_verdicts_per_checkpoint_with_a_holm_family_per_train_step():
    """Two questions scored at the same four checkpoints: at each, the family is the two findings at that
    train_step (m = 2), so each adjusted p is Holm over the two raw p-values of that checkpoint alone."""
    found = assess([("prediction-cpu", "prediction", _pred(MIXED + LATE)),
                    ("schedule-cpu", "schedule", _sched(NLL))], FOUND)
    assert len(found) == 8 and len(last(found)) == 2
    for step in STEPS:
        pair = [v for v in found if v["train_step"] == step]
        assert len(pair) == 2 and {v["family"] for v in pair} == {2}
        for v, p in zip(pair, stats.holm([v["p"] for v in pair])):
            assert v["p_holm"] == p
    pred = _curve(found, "prediction-cpu", "fid")
    assert [v["verdict"] for v in pred] == ["inconclusive", "inconclusive", "agrees", "agrees"]
    assert [v["train_images"] for v in pred] == [s * BATCH for s in STEPS]
    assert settled(pred) == ("settled", 1400)
    assert trajectory_text(pred) == "inconclusive at 350-700, agrees from 1,400"
    assert settled_text(pred) == "settled from 1,400 steps"
    sched = _curve(found, "schedule-cpu", "nll_bpd")
    assert trajectory_text(sched) == "agrees from 350" and settled(sched) == ("settled", 350)


def test_a_disagreement_shows_the_reverses_adjusted_p_that_decided_it():
    """eps − x0 of +20, +25, +22 FID: the claim (eps lower) has p near 1; its reverse (eps higher) passes, and
    that reverse's adjusted p is the one the verdict table and the over-training cells print."""
    from ablations.reporting.report import over_training, section
    up = [[20.0, 25.0, 22.0]] * 2
    found = assess([("prediction-cpu", "prediction", _pred(up, STEPS[2:]))], FOUND)
    end = _curve(found, "prediction-cpu", "fid")[-1]
    assert end["verdict"] == "disagrees" and end["p_holm"] > 0.99 and end["p_reverse_holm"] < ALPHA
    shown = f"reverse p {p_text(end['p_reverse_holm'])}"
    table = "\n".join(section(_pred(up, STEPS[2:]), "prediction", found=last(found), curves=found,
                              published=FOUND["prediction-cpu"]))
    assert f"| **disagrees** ({shown}) |" in table
    assert f"| {p_text(end['p_holm'])} | **disagrees**" in table  # the claim's own p stays in its column
    cells = "\n".join(over_training(found))
    assert cells.count(f": disagrees ({shown})") == 2 and "disagrees (p " not in cells


def test_every_questions_last_checkpoint_is_the_verdicts_family():
    """A question trained to 1,400 steps and one to 2,800: at 1,400 the first is at its end, so its verdict
    joins the 2,800-step question's in the last family (m = 2), and the longer question's 1,400-step
    finding is a family of one."""
    found = assess([("prediction-cpu", "prediction", _pred(MIXED + LATE)),
                    ("schedule-cpu", "schedule", _sched(NLL[:3], STEPS[:3]))], FOUND)
    final = last(found)
    assert {v["train_step"] for v in final} == {2800, 1400} and {v["family"] for v in final} == {2}
    for v, p in zip(final, stats.holm([v["p"] for v in final])):
        assert v["p_holm"] == p
    (mid,) = [v for v in found if v["folder"] == "prediction-cpu" and v["train_step"] == 1400]
    assert mid["family"] == 1 and mid["p_holm"] == mid["p"]


def test_a_finding_whose_last_two_checkpoints_differ_is_unsettled():
    back = MIXED + [LATE[0], [5.0, -6.0, 2.0]]  # agrees at 1,400, mixed again at 2,800
    found = assess([("prediction-cpu", "prediction", _pred(back))], FOUND)
    c = _curve(found, "prediction-cpu", "fid")
    assert [v["verdict"] for v in c] == ["inconclusive", "inconclusive", "agrees", "inconclusive"]
    assert settled(c)[0] == "unsettled" and settled_text(c) == (
        f"unsettled: agrees at 1,400 (p {p_text(c[2]['p_holm'])}), inconclusive at 2,800 (p {p_text(c[3]['p_holm'])})")
    assert trajectory_text(c) == "inconclusive at 350-700, agrees at 1,400, inconclusive at 2,800"


def test_the_seeds_a_test_would_take_reach_its_power():
    """stats.seeds_to_decide against the exact power of the t test (one-sample, delta / sd = 1, alpha 0.05, 80%:
    8 seeds one-sided, 10 two-sided) and against simulation: at the n it gives, the test passes in at least
    ~80% of 4,000 draws from the normal of the observed mean and sd, and at n - 1 in under ~80%."""
    import random
    assert stats.seeds_to_decide([0.0, 1.0, 2.0], "lower", ALPHA) == 8
    assert stats.seeds_to_decide([0.0, 1.0, 2.0], "differs", ALPHA) == 10
    assert stats.seeds_to_decide([-1.0, 0.0, 1.0], "lower", ALPHA) is None  # no difference: no n decides it
    assert stats.seeds_to_decide([1.0, 1.0, 1.0], "higher", ALPHA) == 2  # no spread
    gen = random.Random(0)

    def passes(n, mean, sd, test):
        return sum(test([gen.gauss(mean, sd) for _ in range(n)]) < alpha for _ in range(4000)) / 4000

    for d, expect, alpha, test in (
            ([-3.0, -1.0, -8.0], "lower", ALPHA / 8, stats.p_lower),
            ([1.0, 4.0, -0.5], "higher", ALPHA, stats.p_higher),
            ([1.0, -1.0, 0.5], "parity", ALPHA, lambda x: stats.p_tost(x, 2.0))):
        n = stats.seeds_to_decide(d, expect, alpha, margin=2.0 if expect == "parity" else 0.0)
        mean, se, dof = stats.paired(d)
        sd = se * math.sqrt(dof + 1)
        assert passes(n, mean, sd, test) >= 0.78, (d, n)
        assert n == 2 or passes(n - 1, mean, sd, test) < 0.82, (d, n)


def test_an_inconclusive_verdict_says_what_would_decide_it(tmp_path):
    """eps − x0 of +4, -1, +3 FID at the last checkpoint is inconclusive: the index's settled cell and the
    report's over-training table say how many seeds would decide it, toward which verdict, at the family's
    strictest Holm step; a decided finding says nothing more; +3, -4, +2 (mean +0.33, sd 3.8) would take
    more than 100 seeds, and says so with its numbers."""
    from ablations.reporting.index import regenerate
    from ablations.reporting.wording import to_decide_text
    diffs = LATE + [LATE[1], [4.0, -1.0, 3.0]]
    found = assess([("prediction-cpu", "prediction", _pred(diffs)), ("schedule-cpu", "schedule", _sched(NLL))], FOUND)
    c, sched = _curve(found, "prediction-cpu", "fid"), _curve(found, "schedule-cpu", "nll_bpd")[-1]
    end = c[-1]
    assert end["verdict"] == "inconclusive" and end["family"] == 2 and sched["verdict"] == "agrees"
    n = stats.seeds_to_decide(diffs[-1], "lower", ALPHA / 2)
    assert end["to_decide"] == (n, "disagrees") and 3 < n < 100  # eps − x0 is +2 on average: toward the reverse
    text = to_decide_text(end)
    assert text == (f"about {n} seeds would decide it (disagrees, 80% power at α = 0.05/2, if the mean a − b 2 "
                    "and its per-seed sd 2.65 held)") and to_decide_text(sched) == ""
    _folder(tmp_path, "prediction-cpu", _pred(diffs), "prediction")
    _folder(tmp_path, "schedule-cpu", _sched(NLL), "schedule")
    regenerate(tmp_path)
    index = (tmp_path / "README.md").read_text()
    (line,) = [x for x in index.splitlines() if x.startswith("| [prediction-cpu]")]
    per_run = (0.5 + 0.6) / 2 * 2800  # each run's train_wall_s at its last checkpoint (b's 0.5 s a step, a's 0.6)
    more = f"{2 * (n - 3)} more runs, ~{2 * (n - 3) * per_run / 3600:.1f} h on one worker at this grid's mean run " \
           f"({per_run / 60:.0f} min)"  # a cell each: eps and x0 are other runs
    assert "| unsettled | current |" in line and "seeds would decide" not in line  # the report says it
    report = (tmp_path / "prediction-cpu" / "report.md").read_text()
    assert f"| unsettled: agrees at 1,400 (p {p_text(c[2]['p_holm'])}), inconclusive at 2,800 " \
           f"(p {p_text(end['p_holm'])}); {text} |" in report  # the over-training table
    assert f"### What would decide it\n\n- **fid: {end['a']} − {end['b']}**: {text}; {more}." in report
    (nll,) = [x for x in index.splitlines() if x.startswith("| [schedule-cpu]")]
    assert "seeds would decide" not in nll
    far = last(assess([("prediction-cpu", "prediction", _pred(LATE + MIXED))], FOUND))[0]
    assert far["to_decide"] == (None, "disagrees") and to_decide_text(far) == (
        "no number of seeds up to 100 would decide it at α = 0.05: mean a − b 0.333 against a per-seed sd of 3.79")


def test_a_cell_scored_only_at_the_last_checkpoint_has_one_verdict():
    rows = _pred(MIXED + LATE)
    ddpm = rows[(rows["metric"] == "fid") & (rows["train_step"] == 2800)].assign(sampler="ddpm")
    more = pd.concat([rows, ddpm, ddpm.assign(sampler="ddim", steps=10), ddpm.assign(steps=10)],
                     ignore_index=True).drop(columns="prediction").assign(ablation="sampler-cpu")
    more = more[more["run_id"].str.contains("eps")]
    found = assess([("sampler-cpu", "sampler", worded(more))], FOUND)
    ten = [v for v in found if v["a"] == "DDIM η=0 · 10 steps" and v["b"] == "DDPM · 10 steps"
           and v["finding"].metric == "fid"]
    assert len(ten) == 1 and ten[0]["last"] and ten[0]["train_step"] == 2800
    assert trajectory_text([ten[0]]) == "last checkpoint only (2,800 steps)"
    assert settled_text([ten[0]]).startswith("not followed: its cells are scored at the last checkpoint only")
    twenty = [v for v in found if v["a"] == "DDIM η=0 · 20 steps" and v["finding"].metric == "fid"]
    assert len(twenty) == 1  # DDIM-20 is scored at every checkpoint, DDPM-20 only at the last


def test_old_rows_without_a_train_step_are_one_checkpoint_the_last():
    """Rows from before checkpoint scoring (the suite's until issue 25): eval rows of the final weights with an
    empty train_step, and no train_images or train_flops rows. They read as the run's last training step, and
    decide as the same rows would with that step written in."""
    rows = _pred(MIXED + LATE)
    rows = rows[((rows["phase"] == "train") | (rows["train_step"] == STEPS[-1]))
                & ~rows["metric"].isin(["train_images", "train_flops"])]
    rows = rows.assign(train_step=rows["train_step"].where(rows["phase"] == "train"))
    assert rows.loc[rows["phase"] == "eval", "train_step"].isna().all()
    last_step = rows.loc[rows["phase"] == "train", "train_step"].max()
    filled = checkpointed(rows)
    assert checkpoints(filled) == [last_step] and (filled.loc[filled["phase"] == "eval", "train_step"] == last_step).all()
    written = rows.assign(train_step=rows["train_step"].fillna(last_step))
    old, new = assess([("prediction-cpu", "prediction", rows)], FOUND), assess([("prediction-cpu", "prediction", written)],
                                                                              FOUND)
    assert [(v["verdict"], v["p"], v["p_holm"], v["diff"]) for v in old] == \
        [(v["verdict"], v["p"], v["p_holm"], v["diff"]) for v in new]
    assert all(trajectory_text([v]) == f"one checkpoint ({int(last_step):,} steps)" for v in old)
    spent = cost(rows)
    batch = rows.loc[rows["metric"] == "train_loss", "n"].iloc[0]
    assert (spent["train_images"] == last_step * batch).all() and spent["train_flops"].isna().all()
    assert spent["train_wall_s"].notna().all() and len(spent) == rows["run_id"].nunique()
    s = summarize(rows, ["prediction"])
    assert (s.loc[s["phase"] == "eval", "train_step"] == last_step).all()


def test_the_grid_time_counts_each_runs_last_train_wall_once():
    from ablations.reporting.cost import hours
    rows = _pred(MIXED + LATE)
    train = rows[rows["metric"] == "train_wall_s"]
    ends = train[train["train_step"] == 2800]["value"].sum()
    assert hours(rows) == f"{ends / 3600:.2f} h" != f"{train['value'].sum() / 3600:.2f} h"


def test_curves_reach_the_figures_the_report_and_the_index(tmp_path):
    from ablations.reporting.index import regenerate
    _folder(tmp_path, "prediction-cpu", _pred(MIXED + LATE), "prediction")
    _folder(tmp_path, "schedule-cpu", _sched(NLL), "schedule")
    regenerate(tmp_path)
    for name in ("prediction-cpu", "schedule-cpu"):
        for fig in ("curves", "differences"):
            assert (tmp_path / name / f"{fig}.png").stat().st_size > 1000, (name, fig)
    report = (tmp_path / "prediction-cpu" / "report.md").read_text()
    assert "checkpoints scored (training step): 350, 700, 1,400, 2,800" in report
    assert "### FID by checkpoint" in report and "| prediction | sampler setting | 350 | 700 | 1,400 | 2,800 |" in report
    assert "### Verdicts over training" in report
    assert "| inconclusive at 350-700, agrees from 1,400 | settled from 1,400 steps |" in report
    assert "![curves](curves.png)" in report and "![differences](differences.png)" in report
    index = (tmp_path / "README.md").read_text()
    assert "| p (Holm) | verdict | settled | protocol |" in index
    assert "| **agrees** | from 1,400 steps | current |" in index and "inconclusive at 350-700" not in index
    # the cost to each checkpoint, in the report: 2,800 steps of 32 images, 1e9 FLOPs a step, 0.5 or 0.6 s a step
    assert "| 2,800 | 6 | 89,600 | 2.8 TFLOP | 23.3 min to 28.0 min | 2.57 h |" in report and "TFLOP" not in index


def test_one_checkpoint_draws_no_curve(tmp_path):
    from ablations.reporting.index import regenerate
    _folder(tmp_path, "prediction-cpu", _pred(LATE[1:], STEPS[-1:]), "prediction")
    regenerate(tmp_path)
    assert not (tmp_path / "prediction-cpu" / "curves.png").exists()
    assert not (tmp_path / "prediction-cpu" / "differences.png").exists()
    report = (tmp_path / "prediction-cpu" / "report.md").read_text()
    assert "## Over training" not in report and "Verdicts over training" not in report
    assert "| one checkpoint (2,800 steps) | current |" in (tmp_path / "README.md").read_text()


def test_the_report_gives_the_trajectory_from_the_rows_not_typed():
    """Where the rows hold the curve, what-was-checked gives a − b at each checkpoint from them and drops the
    typed trajectory measured outside the suite; with one checkpoint the typed line stays."""
    from ablations.reporting.report import section
    published = FOUND["prediction-cpu"]
    noted = notes.read(ROOT / "results", "prediction", ["prediction"])
    (typed,) = [x["text"] for x in noted.checked if x.get("ad_hoc")]
    assert typed.startswith("- **Training length")
    rows = _pred(MIXED + [[4.0, -6.0, 1.0], [2.0, -3.0, 4.0]])  # inconclusive throughout
    found = assess([("prediction-cpu", "prediction", rows)], FOUND)
    text = "\n".join(section(rows, "prediction", last(found), found, published, noted))
    assert "what was checked" in text and typed not in text
    assert ("- **fid: prediction=eps, DDIM η=0 · 20 steps − prediction=x0, DDIM η=0 · 20 steps over training** "
            "(95% CI): 0.3333 ± 13 at 350 (3 seeds); ") in text
    half = 4.303 * (13 / 3) ** 0.5  # d = 2, -3, 4: mean 1, sd sqrt(13); the t table's 0.975 quantile at 2 dof
    assert f"1 ± {half:.2g} at 2,800 (3 seeds). Verdict: inconclusive from 350; settled from 350 steps as inconclusive: undecided." in text
    one = _pred([[4.0, -6.0, 1.0]], STEPS[-1:])
    found = assess([("prediction-cpu", "prediction", one)], FOUND)
    marked = f"- {notes.AD_HOC} {typed.removeprefix('- ')}"  # kept, and marked as not from these rows
    assert marked in "\n".join(section(one, "prediction", last(found), found, published, noted))


def test_what_a_sampler_finding_would_take_counts_one_run_a_seed():
    """Two sampler settings of the same runs: each more seed is one more run; two training configs are two."""
    from ablations.reporting.cost import would_take
    from ablations.reporting.verdicts import Finding
    rows = _pred(MIXED + LATE)
    per_run = (0.5 + 0.6) / 2 * 2800
    sampler = Finding("sampler", "fid", {**DDIM20, "steps": 10}, {**DDIM20, "sampler": "ddpm", "steps": 10}, "lower",
                      "p")
    config = Finding("prediction", "fid", {"prediction": "eps"}, {"prediction": "x0"}, "lower", "p")
    for f, runs in ((sampler, 4), (config, 8)):
        v = {"finding": f, "seeds": 3, "to_decide": (7, "agrees")}
        assert would_take(v, rows) == (f"{runs} more runs, ~{runs * per_run / 3600:.1f} h on one worker at this "
                                       f"grid's mean run ({per_run / 60:.0f} min)")
    assert would_take({"finding": config, "seeds": 3, "to_decide": (None, "agrees")}, rows) == ""
    assert would_take({"finding": config, "seeds": 3, "to_decide": None}, rows) == ""
