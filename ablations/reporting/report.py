"""report.md from rows.csv and summary.csv alone: tables, figures and the protocol behind every number."""
from pathlib import Path

import pandas as pd

from ablations.reporting import axes, comparisons, cost, notes, verdicts
from ablations.reporting.plots import with_labels
from ablations.reporting.table import checkpointed, checkpoints, final, first_sample_set, spec_of
from ablations.reporting.wording import (CHECKED_TITLE, LACKING, checked, deciding_p, diff_text, family_lines, over_line,
                                         p_text, paper_text, per_seed, pm, settled_cell, step_text, to_decide_text,
                                         trajectory_text, verdict_text)
from ablations.store.io import write_text
from ablations.store.schema import DENOISING


def markdown(df: pd.DataFrame) -> str:
    cells = [[str(c) for c in df.columns]] + [[_fmt(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join([lines[0], "|" + "---|" * len(df.columns), *lines[1:]])


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _fmt_int(v) -> str:
    """1000.0 -> "1000": pandas reads integer columns with gaps as floats."""
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _cell(mean, ci, n):
    return f"{mean:.3g}" + (f" ± {ci:.2g}" if ci == ci else "") + f" ({n} seed{'s' if n != 1 else ''})"


def pivot(summary: pd.DataFrame, metric: str, axis: str | None, by_setting: bool) -> pd.DataFrame:
    d = summary[summary["metric"] == metric].copy()
    if d.empty:
        return d
    d["cell"] = [_cell(m, c, n) for m, c, n in zip(d["mean"], d["ci95"], d["seeds"])]
    if not by_setting:
        return d[[axis or "ablation", "cell"]].rename(columns={"cell": metric})
    d = with_labels(d)
    if axis is None:
        return d[["setting_steps", "cell"]].rename(columns={"setting_steps": "sampler setting", "cell": metric})
    return d.pivot_table(index=axis, columns="setting_steps", values="cell", aggfunc="first").reset_index()


EQUAL_STRATA = (
    "  - These NLL rows predate the geometric strata (`core.likelihood.stratify`): one t per equal block of "
    "T/K steps, drawn the same for every run. On the full L[t, i] matrices of five 700-step models (500 test "
    "images), that estimate's standard error from its t draws alone is 0.49-0.66 bits/dim for one run and "
    "0.06-0.16 for the paired difference of two, and the CIs over seeds do not hold it. The baseline eps model "
    "(seed 0, trained again) reads 3.44 with these draws; its exact sum over all 1,000 t is 4.09.")


SECOND_SET = (" (the tables, figures and verdicts read the lowest; the others score the same weights again: the "
              "index's sample-set noise line)")


def protocol(rows: pd.DataFrame) -> list[str]:
    fid, nll = rows[rows["metric"] == "fid"], rows[rows["metric"] == "nll_bpd"]
    vals = lambda d, c: ", ".join(sorted({_fmt_int(v) for v in d[c].dropna()})) or "-"  # noqa: E731
    layout = "equal" if vals(nll, "spacing") == "-" and not nll.empty else vals(nll, "spacing")  # before geometric
    return [
        f"- FID extractor: {vals(fid, 'extractor')}; generated images per setting (n): {vals(fid, 'n')}",
        f"- FID reference: {vals(fid, 'reference')}; sample seed (x_T and noise, per image): "
        f"{vals(fid, 'sample_seed')}{SECOND_SET if fid['sample_seed'].nunique() > 1 else ''}; x0 clipped: "
        f"{vals(fid, 'clip_x0')}",
        f"- NLL: {vals(nll, 'reference')}; stratified timesteps per image (exact when equal to T): "
        f"{vals(nll, 'strata')}, in {layout} strata; x0 clipped in the bound: {vals(nll, 'clip_x0')}",
        *([EQUAL_STRATA] if layout == "equal" else []),
        *kid_note(rows),
        f"- checkpoints scored (training step): {', '.join(f'{int(s):,}' for s in checkpoints(rows) if s == s) or '-'}",
        f"- seeds: {vals(rows, 'seed')}; runs: {rows['run_id'].nunique()}",
        f"- device: {vals(rows, 'device')}; torch: {vals(rows, 'torch')}; host: {vals(rows, 'host')}",
        f"- commit: {vals(rows, 'commit')}",
    ]


def kid_note(rows: pd.DataFrame) -> list[str]:
    """What KID's two spreads measure: the tables' ± (seeds) and the rows' kid_std (subsets)."""
    kid = rows[rows["metric"] == "kid"]
    if kid.empty:
        return []
    n = sorted({int(v) for v in kid["n"].dropna()})
    line = ("- KID: unbiased MMD² (cubic kernel), mean over 100 subsets; the KID tables' ± is the 95% CI over "
            "training seeds. The rows' `kid_std` is the std over the subsets.")
    if n and max(n) <= 1000:
        line += (f" Before issue 24 the suite drew subsets of min(1,000, n) images; at n = {', '.join(map(str, n))} "
                 "every subset holds every generated image, so `kid_std` reflects only the reference subsets, not "
                 "the model or its samples.")
    return [line]


TABLES = (("FID by sampler setting", "fid", True), ("KID by sampler setting", "kid", True),
          ("Precision by sampler setting", "precision", True), ("Recall by sampler setting", "recall", True),
          ("Solver error by sampler setting (RMS from the 1,000-step DDIM endpoint of the same x_T)", "solver_rms",
           True),
          ("Bits/dim", "nll_bpd", False), ("Training images/s", "train_img_per_s", False),
          ("Sampling images/s", "sample_img_per_s", True))
FIGURES = ("fid_vs_steps", "bars", "forest", "curves", "differences", "denoising", "loss", "throughput",
           "samples")
CURVES = (("FID", "fid"), ("KID", "kid"), ("Precision", "precision"), ("Recall", "recall"), ("Bits/dim", "nll_bpd"))


def metric_tables(summary: pd.DataFrame, axis: str | None) -> list[str]:
    """The report's tables (markdown lines); one per extractor where the rows hold two."""
    parts = []
    for title, metric, by in TABLES:
        d = summary[summary["metric"] == metric]
        extractors = sorted(d["extractor"].dropna().unique()) if "extractor" in d else []
        for ex in extractors if len(extractors) > 1 else [None]:
            table = pivot(d if ex is None else d[d["extractor"] == ex], metric, axis, by)
            if not table.empty:
                parts += [f"## {title}" + (f" ({ex})" if ex else ""), "", markdown(table), ""]
    return parts


DENOISING_TITLES = {  # schema.DENOISING's metrics -> (title, what the table holds)
    "x0_rms": ("Denoising error by timestep", "RMS error of the network's x0 estimate from x_t ({clip}), mean "
               "per-image over the {n} test images, one noise draw per image for every t"),
    "nll_term_bpd": ("The bound's term by timestep (bits/dim)", "The NLL bound's term at t (the decoder's NLL at "
                     "t = 0, the step's KL above; `nll_bpd` sums them over all T), on the same images and x_t")}


def denoising_tables(summary: pd.DataFrame, axis: str | None) -> list[str]:
    """x0_rms and nll_term_bpd by timestep (a column per t), at the last checkpoint (`summary` is its)."""
    parts = []
    for metric in DENOISING if "t" in summary else ():
        title, what = DENOISING_TITLES[metric]
        d = summary[summary["metric"] == metric]
        if d.empty:
            continue
        d = d.assign(cell=[_cell(m, c, n) for m, c, n in zip(d["mean"], d["ci95"], d["seeds"])])
        table = d.pivot_table(index=axis or "ablation", columns="t", values="cell", aggfunc="first")
        table.columns = [f"t = {int(t)}" for t in table.columns]
        clipped = d["clip_x0"].astype(str).eq("True").all()
        clip = "clipped to [-1, 1] as the samplers clip it" if clipped else "unclipped"
        n = ", ".join(sorted({_fmt_int(v) for v in d["n"].dropna()}))
        parts += [f"## {title}", "", what.format(clip=clip, n=n) + f" (the `{metric}` rows).", "",
                  markdown(table.reset_index()), ""]
    return parts


def checkpoint_tables(summary: pd.DataFrame, axis: str | None) -> list[str]:
    """Each metric of CURVES at every checkpoint (a column per training step), for the cells scored at two
    checkpoints or more; nothing when the table holds one checkpoint."""
    eval_ = summary[summary["phase"] == "eval"]
    if "train_step" not in eval_ or eval_["train_step"].nunique() < 2:
        return []
    parts = ["## Over training", "",
             "Mean ± 95% CI over seeds at each checkpoint (columns: the training step of the EMA weights scored); "
             "the tables above are the last checkpoint's.", ""]
    for title, metric in CURVES:
        d = eval_[eval_["metric"] == metric]
        if "extractor" in d and d["extractor"].nunique() > 1:
            d = d[d["extractor"] == d["extractor"].dropna().iloc[0]]
        index = [axis] if axis else []
        if metric != "nll_bpd":
            d = with_labels(d).rename(columns={"setting_steps": "sampler setting"})
            index.append("sampler setting")
        index = index or ["ablation"]
        d = d.assign(cell=[_cell(m, c, n) for m, c, n in zip(d["mean"], d["ci95"], d["seeds"])])
        table = d.pivot_table(index=index, columns="train_step", values="cell", aggfunc="first")
        table = table[table.notna().sum(axis=1) >= 2]
        if table.empty:
            continue
        table.columns = [f"{int(c):,}" for c in table.columns]
        parts += [f"### {title} by checkpoint", "", markdown(table.fillna("-").reset_index()), ""]
    return parts


def section(rows: pd.DataFrame, spec: str, found: list[dict] | None = None,
            curves: list[dict] | None = None, published: verdicts.Published = verdicts.NONE,
            noted: notes.Notes = notes.NONE) -> list[str]:
    """The report's verdict section (markdown lines); `found` is this folder's share of the index's family
    (its last checkpoint), `curves` its share at every checkpoint (assess's entries), `published` the
    folder's findings.json (`read`), `noted` its question's notes (`notes.read`)."""
    out = ["## Verdict", "", verdicts.RULE, ""]
    out += [published.no_paper, ""] if published.no_paper else [LACKING, ""] if not published.spec else []
    found = verdicts.verdicts(rows, spec, found=published) if found is None else found
    spent, rows = rows, final(rows)  # the notes and checks read the last checkpoint, as the verdicts do
    extra = notes.lines(rows, noted.note)
    noted_lines = ["### Notes", "", *extra, ""] if extra else []  # kept with or without a finding decided here
    if not found:
        said = published.no_paper or not published.spec
        return out + ([] if said else ["No published finding is compared by this spec's cells.", ""]) + noted_lines
    out += [*family_lines(found), "",
              "| metric | a | b | paper | a (mean ± CI) | b (mean ± CI) | a − b | seeds | p | p (Holm) | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in found:
        f = v["finding"]
        out.append(f"| {f.metric} | {v['a']} | {v['b']} | {paper_text(f)} | {pm(v['a_mean'], v['a_ci'])} | "
                   f"{pm(v['b_mean'], v['b_ci'])} | {diff_text(v)} | {v['seeds']} | {p_text(v['p'])} | "
                   f"{p_text(v['p_holm'])} | {verdict_text(v)} |")
    out.append("")
    out += to_decide_lines(found, spent) + noted_lines
    off = [v for v in found if checked(v)]
    if off:
        over = [c for c in verdicts.trajectories(curves or []) if checked(c[-1])]
        out += [f"### {CHECKED_TITLE}", "", *map(per_seed, off), *(over_line(c) for c in over if len(c) > 1),
                *notes.lines(rows, noted.checked, curve=any(len(c) > 1 for c in over)), ""]
    return out


def to_decide_lines(found: list[dict], rows: pd.DataFrame) -> list[str]:
    """What would decide each inconclusive verdict (markdown lines): the seeds (`to_decide_text`) and the runs
    and worker hours they would add at the folder's mean run (`cost.would_take`, from all of `rows`)."""
    lines = [f"- **{v['finding'].metric}: {v['a']} − {v['b']}**: " +
             "; ".join(filter(None, (to_decide_text(v), cost.would_take(v, rows)))) + "."
             for v in found if to_decide_text(v)]
    return ["### What would decide it", "", *lines, ""] if lines else []


def over_training(found: list[dict]) -> list[str]:
    """The report's verdicts at every checkpoint (markdown lines), from one folder's share of `assess`: a
    row per finding, a column per checkpoint with a − b, its CI and the verdict; nothing for one checkpoint."""
    curves = verdicts.trajectories(found)
    steps = sorted({v["train_step"] for c in curves for v in c if v["train_step"] == v["train_step"]})
    if len(steps) < 2:
        return []
    lines = ["### Verdicts over training", "",
             "Each finding at every checkpoint scored (columns: training step): a − b with its CI, the verdict and "
             "the Holm-adjusted p that decided it within the checkpoint's family (a disagreement's: its reverse's).",
             "",
             "| metric | a | b | " + " | ".join(step_text(s) for s in steps) + " | over training | settled |",
             "|---|---|---|" + "---|" * len(steps) + "---|---|"]
    for c in curves:
        at = {v["train_step"]: v for v in c}
        cells = [f"{diff_text(at[s])}: {at[s]['verdict']} ({deciding_p(at[s])})" if s in at else "-"
                 for s in steps]
        lines.append(f"| {c[-1]['finding'].metric} | {c[-1]['a']} | {c[-1]['b']} | " + " | ".join(cells) +
                     f" | {trajectory_text(c)} | {settled_cell(c)} |")
    return lines + [""]


def write_report(out_dir, assessed: verdicts.Assessed | None = None) -> Path:
    """out_dir/report.md from the folder alone: rows.csv, summary.csv and axes.json (its axis); its verdicts are
    Holm-adjusted over the whole index (`assessed`: read and decided once by `ablate results` for every folder,
    or here)."""
    out_dir = Path(out_dir)
    assessed = assessed or verdicts.assessed(out_dir.parent)
    every, summary = checkpointed(assessed.read(out_dir)), first_sample_set(pd.read_csv(out_dir / "summary.csv"))
    record, rows = assessed.axes(out_dir, every), first_sample_set(every)  # the protocol names every sample set
    axis, summary = axes.axis(record), axes.as_written(summary, record)  # its tables: axis values as axes.json's
    name = rows["ablation"].iloc[0]
    runs = axes.as_written(rows.drop_duplicates("run_id"), record)
    what = (f"Axis: `{axis}`." if axis else
            "No grid axis: the spec compares sampler settings on one training config (one model per seed).")
    parts = [f"# {name}", "", f"{what} Cells are mean ± 95% CI half-width over seeds (Student's t), "
             "with the number of seeds in brackets. Regenerate with `ablate report`.", "", "## Protocol", "",
             *protocol(every), "", "## Runs", "",
             markdown(runs[["run_id", *([axis] if axis else []), "seed", "status", "reason"]]
                      .astype(object).fillna("")), "", *cost.section(rows)]
    steps = checkpoints(rows)
    at_last = summary if len(steps) < 2 else summary[summary["train_step"].isna() | (summary["train_step"] == steps[-1])]
    parts += metric_tables(at_last, axis) + denoising_tables(at_last, axis) + checkpoint_tables(summary, axis)
    curves = assessed.of(out_dir)
    published = assessed.published.get(out_dir.name, verdicts.NONE)  # the folder's findings.json
    parts += section(rows, spec_of(rows), verdicts.last(curves), curves, published,  # Holm over the whole index
                     notes.read(out_dir.parent, published.spec, record["axes"]))
    parts += over_training(curves)
    parts += comparisons.lines(rows, record.get("grid", []), verdicts.last(curves))
    figures = [f for f in FIGURES if (out_dir / f"{f}.png").exists()]
    if figures:
        parts += ["## Figures", ""] + [f"![{f}]({f}.png)" for f in figures] + [""]
    path = out_dir / "report.md"
    write_text(path, "\n".join(parts))
    return path
