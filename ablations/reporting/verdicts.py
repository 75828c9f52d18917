"""Verdicts decided by code: each question's published findings, held against our paired differences.

The findings are data: a spec's [[finding]] tables (ablations/grid/findings.py), which `ablate collect` writes
into the results folder as findings.json (`read`); this module holds only the rule. A finding compares two
cells of one spec's rows.csv on one metric. The cells are paired by training
seed (the same seed's runs, or the same run for sampler settings), so the difference d = a - b is taken
per seed and tested with Student's t over seeds (ablations/reporting/stats.py):

- "lower" (the paper found a < b): the one-sided paired t test of mean d < 0, shown with d's 95% CI;
- "higher" (the paper found a > b): the one-sided paired t test of mean d > 0, likewise;
- "parity" (the paper found a = b): TOST (Schuirmann 1987) against an absolute margin fixed in the
  finding with its reason: p < 0.05 exactly when d's 90% CI lies inside +-margin;
- "differs" (no published direction, e.g. the norm question): the two-sided paired t test.

Every distinct published finding of the results index (every folder beside this one) is one p-value
of one family, corrected by Holm's step-down procedure (Holm 1979) at alpha = 0.05: a finding agrees
when its adjusted p is below alpha. A question's comparisons without a published direction (the norm
question's) are exploratory: a family of their own, so that they cost the published findings no power. It disagrees when its reverse (a > b; |d| > margin) passes the same
correction over the family of reverses; otherwise it is inconclusive. A finding whose cells hold another
finding's numbers (DDIM eta=1 is DDPM bit for bit) counts once; one seed has no test: "n/a (1 seed)".

Runs scored at several checkpoints (eval rows' train_step) get a verdict at each, corrected within the
checkpoint's family (the findings scored at that train_step; every question's last checkpoint together is
the verdicts' family). A finding is settled from the first checkpoint after which its verdict no longer
changes, unsettled when its last two checkpoints differ (`settled`).
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ablations.store.schema import label
from ablations.reporting import stats
from ablations.reporting.table import at_step, checkpointed, checkpoints, ci95, cost, final, spec_of

ALPHA = 0.05
RULE = ("Verdicts test paired per-seed differences d = a − b (Student's t over seeds). A finding 'a lower "
        "than b' is the one-sided test of mean d < 0 (95% CI shown: a one-sided test at 0.05 can pass while that CI "
        "spans zero, as its bound is the 90% CI's); a finding of parity is TOST against the "
        "absolute margin the finding states (90% CI shown: p < 0.05 exactly when it lies inside the margin); a "
        "comparison without a published direction is the two-sided test. The p-values of every distinct published "
        "finding of the results index form one family, Holm-adjusted (Holm 1979); a question's comparisons "
        "without a published direction (the norm question's) form a family of their own. A finding **agrees** "
        "when its adjusted "
        "p < 0.05, **disagrees** when its reverse (a > b; |d| > margin) passes the same correction over the "
        "reverses, and is **inconclusive** otherwise. A finding on the same numbers as another (DDIM η=1 is DDPM "
        "bit for bit) counts once; with one seed there is no test: **n/a (1 seed)**. Where runs are scored at several "
        "checkpoints, each checkpoint is decided the same way, with a Holm family per checkpoint: the same "
        "findings at that train_step. Every question's last checkpoint belongs to one family, the verdicts' (the "
        "family above, whatever each question's training length), so the verdict the index reports is corrected "
        "as if each run were scored once, and the earlier checkpoints, which ask how far training must go rather "
        "than which choice wins, cost it no power. A finding is **settled** from the first checkpoint after which "
        "its verdict no longer changes (settled as inconclusive, it is undecided: its verdict stopped changing, "
        "not the question), and **unsettled** when its last two checkpoints differ. An inconclusive "
        "verdict says what would decide it: the seeds at which its test, or its reverse, would pass with 80% power "
        "at the family's strictest Holm step (0.05 / the family's size), if the observed mean difference and "
        "per-seed spread were the truth (a plug-in estimate: the observed effect of an undecided finding is "
        "noisy, so read it as an order of magnitude).")


@dataclass(frozen=True)
class Finding:
    spec: str  # the spec's name (without scale)
    metric: str
    a: dict  # column -> value selecting cell a
    b: dict
    expect: str  # "lower" (a < b), "higher" (a > b), "parity" (|a - b| < margin) or "differs" (no direction)
    paper: str  # what the paper found, with source and table, as the report shows it
    margin: float = 0.0  # parity: the largest |a - b| that still counts as equal, in the metric's units
    why: str = ""  # parity: why that margin
    awaits: str = ""  # why the committed rows may lack the cells: shown instead of a verdict until they hold them
    source: str = ""  # the paper
    table: str = ""  # its table or figure


@dataclass(frozen=True)
class Published:
    """A results folder's findings.json (ablations/grid/findings.py, written by `ablate collect`): the spec's
    findings, what to say when no paper compares its cells, and its notes and checks (line tables)."""
    spec: str = ""
    findings: tuple = ()
    no_paper: str = ""
    note: tuple = ()
    checked: tuple = ()


FILE = "findings.json"  # in each results folder
NONE = Published()  # a folder without findings.json
LACKING = (f"This folder holds no {FILE}, so no finding is decided here: `ablate collect SPEC` writes the spec's "
           "findings into it.")
CHECKED_TITLE = "Where it does not reproduce: what was checked"
CHECKED_ANCHOR = "where-it-does-not-reproduce-what-was-checked"  # GitHub's anchor of that heading
DDPM = {"sampler": "ddpm", "spacing": "leading", "clip_x0": True}  # the sampler cells `sampler_identity` reads
DDIM = {"sampler": "ddim", "eta": 0.0, "spacing": "leading", "clip_x0": True}


def published(data: dict) -> Published:
    """A Published from findings.json's object."""
    spec = data.get("spec") or ""
    return Published(spec, tuple(Finding(spec, **f) for f in data.get("findings", ())), data.get("no_paper", ""),
                     tuple(data.get("note", ())), tuple(data.get("checked", ())))


def read(folder) -> Published:
    """The findings.json of a results folder; a folder without one has no findings."""
    path = Path(folder) / FILE
    return published(json.loads(path.read_text())) if path.exists() else NONE


def read_all(results_root) -> dict[str, Published]:
    """folder name -> its Published, for every results folder under results_root."""
    return {p.parent.name: read(p.parent) for p in sorted(Path(results_root).glob("*/rows.csv"))}


def _select(rows: pd.DataFrame, metric: str, cell: dict) -> pd.Series:
    """Per-seed values of one cell (seed -> value). The FID-like settings are taken at the spec's first
    sampler setting when the cell does not name one, at the first extractor when the rows hold two, and at
    the lowest sample seed when they hold two."""
    d = rows[(rows["metric"] == metric) & rows["value"].notna()]
    for col, value in cell.items():
        if col in d:
            d = d[d[col].astype(str) == str(value)] if isinstance(value, (str, bool)) else d[d[col] == value]
        elif col not in ("eta", "spacing", "clip_x0"):  # a column the rows lack (old rows: these 3): no such cell
            d = d.iloc[:0]
    if "extractor" in d and d["extractor"].nunique() > 1:
        d = d[d["extractor"] == d["extractor"].iloc[0]]
    if "sample_seed" in d and d["sample_seed"].nunique() > 1:  # a second sample set is the noise check's
        d = d[d["sample_seed"] == d["sample_seed"].min()]
    if metric in ("fid", "kid") and "sampler" not in cell and not d.empty:
        first = d.iloc[0]
        d = d[(d["sampler"] == first["sampler"]) & (d["steps"] == first["steps"]) & (d["eta"] == first["eta"])]
    return d.groupby("seed")["value"].mean()


def describe_cell(rows: pd.DataFrame, metric: str, cell: dict) -> str:
    d = rows[(rows["metric"] == metric)]
    parts = [f"{k}={v}" for k, v in cell.items() if k not in ("sampler", "steps", "eta", "spacing", "clip_x0")]
    if "sampler" in cell:
        parts.insert(0, label(cell["sampler"], cell.get("steps"), cell.get("eta"), cell.get("clip_x0", True),
                              cell.get("spacing")))
    elif metric in ("fid", "kid") and not d.empty:
        first = d.iloc[0]
        parts.append(label(first["sampler"], first["steps"], first["eta"], first.get("clip_x0", True),
                           first.get("spacing", "leading")))
    return ", ".join(parts)


def _pair(rows, metric, a: dict, b: dict) -> tuple[pd.Series, pd.Series]:
    """Per-seed values of cells a and b, on the seeds both have."""
    a, b = _select(rows, metric, a), _select(rows, metric, b)
    seeds = sorted(set(a.index) & set(b.index))
    return a[seeds], b[seeds]


def _paired(rows, metric, a: dict, b: dict) -> pd.Series:
    """Per-seed a - b on the seeds both cells have."""
    a, b = _pair(rows, metric, a, b)
    return a - b


TESTS = {  # expect -> (p of the claim, p of its reverse or None, the CI level shown)
    "lower": (lambda d, margin: stats.p_lower(d), lambda d, margin: stats.p_higher(d), 0.95),
    "higher": (lambda d, margin: stats.p_higher(d), lambda d, margin: stats.p_lower(d), 0.95),
    "parity": (stats.p_tost, stats.p_outside, 0.90),
    "differs": (lambda d, margin: stats.p_two_sided(d), None, 0.95),
}
NAN = float("nan")


def measure(rows: pd.DataFrame, f: Finding, folder: str = "") -> dict | None:
    """A finding's numbers in one table, before the family's correction; None when the rows lack its cells
    and nothing awaits them."""
    a, b = _pair(rows, f.metric, f.a, f.b)
    if a.empty and not f.awaits:
        return None
    d = a - b
    claim, reverse, level = TESTS[f.expect]
    v = {"finding": f, "folder": folder, "a": describe_cell(rows, f.metric, f.a),
         "b": describe_cell(rows, f.metric, f.b), "per_seed": d, "seeds": len(d), "level": level,
         "a_mean": float(a.mean()) if len(a) else NAN, "a_ci": ci95(float(a.std()), len(a)),
         "b_mean": float(b.mean()) if len(b) else NAN, "b_ci": ci95(float(b.std()), len(b)),
         "diff": float(d.mean()) if len(d) else NAN, "diff_ci": NAN,
         "p": NAN, "p_holm": NAN, "p_reverse": None, "p_reverse_holm": None, "same_as": None, "family": 0,
         "key": (folder, f.metric, tuple(a.round(9).items()), tuple(b.round(9).items()))}
    if len(d) >= 2:
        values = [float(x) for x in d]
        v.update(diff_ci=stats.ci(values, level), p=claim(values, f.margin),
                 p_reverse=reverse(values, f.margin) if reverse else None)
    return v


def decide(v: dict) -> str:
    """The verdict from a measured finding's Holm-adjusted p-values."""
    if v["seeds"] == 0:
        return "awaits the rerun"
    if v["seeds"] < 2:
        return f"n/a ({v['seeds']} seed)"
    if v["finding"].expect == "differs":
        return ("lower than b" if v["diff"] < 0 else "higher than b") if v["p_holm"] < ALPHA else "inconclusive"
    if v["p_holm"] < ALPHA:
        return "agrees"
    return "disagrees" if v["p_reverse_holm"] is not None and v["p_reverse_holm"] < ALPHA else "inconclusive"


def assess(tables: list[tuple[str, str, pd.DataFrame]], found_in: dict[str, Published] | None = None) -> list[dict]:
    """Every finding of every table (folder, spec, rows), the folder's findings in `found_in` (folder ->
    Published, `read_all`; none where absent), at each checkpoint the rows scored, with raw and
    Holm-adjusted p-values over its family (`family` is its size, `checkpoint` its name) and its verdict.
    Each entry has `train_step`, `last` (the folder's last checkpoint: the verdict), `n_checkpoints` (how
    many the folder scores) and `train_images` (mean over the runs, NaN where unknown). Holm's family is
    one checkpoint: the distinct findings with two seeds or more that the index scores at the same
    train_step; every question's last checkpoint together is one (the verdicts' family, whatever each
    question's training length)."""
    found = []
    for folder, spec, rows in tables:
        rows = checkpointed(rows)
        steps = checkpoints(rows)
        images = cost(rows).groupby("train_step")["train_images"].mean()
        for i, step in enumerate(steps):
            at, last = at_step(rows, step), i == len(steps) - 1
            for f in (found_in or {}).get(folder, NONE).findings:
                v = measure(at, f, folder)
                if v is not None and (last or v["seeds"]):  # a cell scored only at the end: no earlier verdict
                    v.update(train_step=step, last=last, train_images=images.get(step, NAN),
                             n_checkpoints=len(steps), checkpoint="last" if last else step,
                             key=("last" if last else step, *v["key"]))
                    found.append(v)
    first = {}
    for v in found:
        if v["seeds"] >= 2:
            original = first.setdefault(v["key"], v)
            v["same_as"] = None if original is v else original
    tested = [v for v in found if v["seeds"] >= 2 and v["same_as"] is None]
    size = {}
    for name in dict.fromkeys(_family(v) for v in tested):
        members = [v for v in tested if _family(v) == name]
        size[name] = len(members)
        for v, p in zip(members, stats.holm([v["p"] for v in members])):
            v["p_holm"] = p
        reversible = [v for v in members if v["p_reverse"] is not None]
        for v, p in zip(reversible, stats.holm([v["p_reverse"] for v in reversible])):
            v["p_reverse_holm"] = p
    for v in found:
        if v["same_as"] is not None:
            v.update(p_holm=v["same_as"]["p_holm"], p_reverse_holm=v["same_as"]["p_reverse_holm"])
        v.update(family=size.get(_family(v), 0), verdict=decide(v))
        v["to_decide"] = to_decide(v)
    return found


def to_decide(v: dict) -> tuple[int | None, str] | None:
    """For an inconclusive verdict on two seeds or more: (the seeds its test or its reverse would pass with
    80% power if the observed mean and spread of d were the truth, at the family's strictest Holm step
    ALPHA / m, or None when no n up to 100 would; the verdict it would then read). None otherwise."""
    if v["verdict"] != "inconclusive" or v["seeds"] < 2 or v["family"] < 1:
        return None
    f, d = v["finding"], [float(x) for x in v["per_seed"]]
    if f.expect == "differs":
        toward = "lower than b" if v["diff"] < 0 else "higher than b"
    elif f.expect == "parity":
        toward = "agrees" if abs(v["diff"]) < f.margin else "disagrees"
    else:
        toward = "agrees" if (v["diff"] < 0) == (f.expect == "lower") else "disagrees"
    return stats.seeds_to_decide(d, f.expect, ALPHA / v["family"], f.margin), toward


def _family(v: dict) -> tuple:
    return family_of(v["finding"]), v["checkpoint"]


def last(found: list[dict]) -> list[dict]:
    """The verdicts: each finding at its folder's last checkpoint."""
    return [v for v in found if v["last"]]


def trajectories(found: list[dict]) -> list[list[dict]]:
    """Each finding's entries over its checkpoints (ascending), one list per finding, in `last` order."""
    by = {}
    for v in found:
        by.setdefault((v["folder"], id(v["finding"])), []).append(v)
    return [sorted(by[(v["folder"], id(v["finding"]))], key=lambda x: x["train_step"]) for v in last(found)]


def settled(curve: list[dict]) -> tuple[str, float]:
    """("one checkpoint", its step); ("unsettled", nan) when the last two checkpoints' verdicts differ; else
    ("settled", the first checkpoint after which the verdict no longer changes)."""
    said = [v["verdict"] for v in curve]
    if len(said) == 1:
        return "one checkpoint", curve[0]["train_step"]
    if said[-1] != said[-2]:
        return "unsettled", NAN
    k = len(said) - 1
    while k > 0 and said[k - 1] == said[-1]:
        k -= 1
    return "settled", curve[k]["train_step"]


def step_text(step) -> str:
    return "-" if step != step else f"{int(step):,}"


def trajectory_text(curve: list[dict]) -> str:
    """The verdicts over training in words, e.g. "inconclusive at 350-700, agrees from 1,400"; the final
    run of one verdict reads "from" when the finding is settled."""
    state, _ = settled(curve)
    if state == "one checkpoint":
        step = curve[0]["train_step"]
        return ("last checkpoint only" if _last_only(curve) else "one checkpoint") + (
            f" ({step_text(step)} steps)" if step == step else "")
    runs = []
    for v in curve:
        if runs and runs[-1][0] == v["verdict"]:
            runs[-1][2] = v["train_step"]
        else:
            runs.append([v["verdict"], v["train_step"], v["train_step"]])
    words = []
    for i, (said, lo, hi) in enumerate(runs):
        if i == len(runs) - 1 and state == "settled":
            words.append(f"{said} from {step_text(lo)}")
        else:
            words.append(f"{said} at {step_text(lo)}" + (f"-{step_text(hi)}" if hi != lo else ""))
    return ", ".join(words)


def settled_text(curve: list[dict]) -> str:
    """Whether the finding is settled, and from which step (a finding settled as inconclusive is undecided:
    its verdict stopped changing, not the question); unsettled, with the last two checkpoints' verdicts and the
    adjusted p that decided each."""
    state, step = settled(curve)
    was, now = curve[-2:] if len(curve) > 1 else (None, None)
    undecided = " as inconclusive: undecided" if curve[-1]["verdict"] == "inconclusive" else ""
    return (f"settled from {step_text(step)} steps{undecided}" if state == "settled" else
            f"unsettled: {was['verdict']} at {step_text(was['train_step'])} ({deciding_p(was)}), {now['verdict']} at "
            f"{step_text(now['train_step'])} ({deciding_p(now)})" if state == "unsettled" else
            "not followed: its cells are scored at the last checkpoint only (`curve = false`)" if _last_only(curve)
            else "one checkpoint")


def _last_only(curve: list[dict]) -> bool:
    """Whether a finding with one verdict comes from a folder scored at several checkpoints."""
    return len(curve) == 1 and curve[0].get("n_checkpoints", 1) > 1


def family_of(f: Finding) -> str:
    """The family a finding's p-value is corrected in: every published finding of the index together; a
    question's comparisons without a published direction (the norm question's) apart, as exploratory."""
    return "published" if f.expect != "differs" else f.spec


def tables(results_root) -> list[tuple[str, str, pd.DataFrame]]:
    """(folder name, spec, rows) of every results folder under results_root: the family the index corrects."""
    return [(p.parent.name, spec_of(rows), rows)
            for p in sorted(Path(results_root).glob("*/rows.csv")) if not (rows := pd.read_csv(p)).empty]


def verdicts(rows: pd.DataFrame, spec: str, folder: str = "", family: list[dict] | None = None,
             found: Published = NONE) -> list[dict]:
    """The findings `found` in `rows`, Holm-adjusted over `family` (assess's answer for the whole index,
    which holds this folder's) or, without one, over these findings alone."""
    if family is None:
        family = assess([(folder, spec, rows)], {folder: found})
    return [v for v in last(family) if v["folder"] == folder]


def sampler_identity(rows: pd.DataFrame) -> list[str]:
    """Checks computed from the sampler's rows (markdown lines): DDIM with η=1 is DDPM with σ² = β̃ (Song et
    al. 2021, Eq. 16), so their cells must match; and DDIM vs DDPM at 10 steps without x0 clipping, the
    protocol of Song et al. (these cells exist when the spec evaluates them)."""
    if "eta" not in rows:
        return []
    lines = []
    for steps in sorted(rows.loc[(rows["sampler"] == "ddim") & (rows["eta"] == 1.0), "steps"].dropna().unique()):
        d = _paired(rows, "fid", {**DDIM, "eta": 1.0, "steps": steps}, {**DDPM, "steps": steps})
        if len(d):
            lines.append(f"- **The rows hold an identity.** DDIM with η=1 and DDPM are one process (Song et al. "
                         f"2021, Eq. 16): at {int(steps)} steps their FIDs differ by at most {d.abs().max():.2g} "
                         f"on any of {len(d)} seeds.")
    noclip = {"steps": 10, "clip_x0": False}
    d = _paired(rows, "fid", {**DDIM, **noclip}, {**DDPM, **noclip})
    if len(d):
        clipped = _paired(rows, "fid", {**DDIM, "steps": 10}, {**DDPM, "steps": 10})
        same = "the same sign" if d.mean() * clipped.mean() > 0 else "the sign changes"
        lines.append(f"- **The clipping convention.** Every other cell clips the predicted x0 to [-1, 1] (Ho et al.); "
                     f"Song et al. do not. Without clipping, DDIM-10 − DDPM-10 FID = {_mean_ci(d)} over {len(d)} "
                     f"seeds (with clipping: {_mean_ci(clipped)}): {same}.")
    return lines


def _cell(sampler, steps, spacing):
    return {"sampler": sampler, "steps": steps, "eta": 0.0, "spacing": spacing, "clip_x0": True}


def heun_note(rows: pd.DataFrame) -> list[str]:
    """Heun at leading spacing, reported as the discretization artifact it is (markdown lines)."""
    fid = rows[(rows["metric"] == "fid") & (rows.get("sampler") == "heun")] if "sampler" in rows else rows.iloc[:0]
    if fid.empty or "spacing" not in fid:
        return []
    steps = sorted(int(s) for s in fid["steps"].dropna().unique())
    leading = [_select(rows, "fid", _cell("heun", s, "leading")) for s in steps]
    trailing = [_select(rows, "fid", _cell("heun", s, "trailing")) for s in steps]
    if not any(len(x) for x in leading):
        return []
    mean = lambda x: f"{x.mean():.3g}" if len(x) else "-"  # noqa: E731
    nfe = " / ".join(str(2 * s - 1) for s in steps)
    return [f"- **Heun at leading spacing is a discretization artifact, not a verdict on Heun.** Its FID is "
            f"{' / '.join(map(mean, leading))} at {nfe} NFE, against {' / '.join(map(mean, trailing))} with trailing "
            "spacing (means over seeds, the FID table). Leading spacing ends at t = 0, so Heun's last correction "
            "evaluates the network at t = 0 on the Euler step's point, which lies off the data manifold; EDM's "
            "Heun runs on its own σ discretization (Karras et al. 2022, Eq. 5, ρ = 7), which no spacing of these "
            "rows reproduces (a `karras` spacing for heun and dpmpp_2m comes with the rerun). No finding is "
            "decided on Heun here."]


def solver_note(rows: pd.DataFrame) -> list[str]:
    """DPM-Solver++(2M) at 20 vs 10 steps: FID, and the solver error (`solver_rms`) when the rows hold it."""
    a, b = _cell("dpmpp_2m", 20, "leading"), _cell("dpmpp_2m", 10, "leading")
    fid = _paired(rows, "fid", a, b)
    if len(fid) < 1:
        return []
    worse = int((fid > 0).sum())
    line = (f"- **DPM-Solver++(2M) at 20 vs 10 steps (leading).** DPM++-20 − DPM++-10 FID = {_mean_ci(fid)}, "
            f"higher on {worse} of {len(fid)} seeds.")
    rms = _paired(rows, "solver_rms", a, b)
    if not len(rms):
        return [line + " FID alone cannot tell whether the metric rewards discretization error or the solver "
                "misbehaves at leading spacing; the solver error (`solver_rms`, the RMS distance of each sample from "
                "a 1,000-step DDIM endpoint of the same x_T) decides it and arrives with the rerun."]
    ten = _select(rows, "solver_rms", b).mean()
    closer = rms.mean() < 0
    why = ("the solver lands closer to the ODE's endpoint at 20 steps, so the higher FID is the metric rewarding "
           "discretization error, not the solver" if closer and fid.mean() > 0 else
           "the solver does not get closer to the ODE's endpoint with more steps at leading spacing: the solver, "
           "not the metric" if not closer else "the solver error and FID fall together")
    return [line + f" Solver error (RMS from the 1,000-step DDIM endpoint): {ten:.3g} at 10 steps, "
            f"20 − 10 = {_mean_ci(rms)} over {len(rms)} seeds: {why}."]


COMPUTED = {"sampler_identity": sampler_identity, "heun": heun_note, "solver": solver_note}  # rows -> lines


def quantity(rows: pd.DataFrame, q: dict) -> str:
    """A number a typed line quotes, from the rows (ablations/grid/findings.py): "ratio", the mean over seeds
    of cell a over cell b's, in q's format; "mean", cell a's mean over seeds, likewise; "range", the lowest and
    highest of cell a's per-seed values
    (every value of the metric when a is empty), floored and ceiled to q's step; "-" where the rows lack
    the cells."""
    a = _select(rows, q["metric"], q["a"]) if q["a"] else rows.loc[rows["metric"] == q["metric"], "value"].dropna()
    if a.empty:
        return "-"
    if q["of"] == "ratio":
        b = _select(rows, q["metric"], q["b"])
        return format(a.mean() / b.mean(), q["format"]) if len(b) else "-"
    if q["of"] == "mean":
        return format(a.mean(), q["format"])
    step = q["step"]
    return f"{math.floor(a.min() / step) * step}-{math.ceil(a.max() / step) * step}"


def lines(rows: pd.DataFrame, tables, curve: bool = False) -> list[str]:
    """A folder's note or checked lines (its findings.json tables) as markdown: a typed line with its
    quoted numbers from the rows; a computed line in full; an ad hoc line only while `curve` is False (the
    rows hold one checkpoint)."""
    out = []
    for t in tables:
        if "computed" in t:
            out += COMPUTED[t["computed"]](rows)
        elif not (curve and t.get("ad_hoc")):
            out.append(t["text"].format(**{k: quantity(rows, q) for k, q in t.get("values", {}).items()}))
    return out


def _mean_ci(d: pd.Series) -> str:
    return pm(float(d.mean()), ci95(float(d.std()), len(d)))


def pm(mean, ci):
    if mean != mean:  # a cell the rows do not hold
        return "-"
    return f"{mean:.4g}" + (f" ± {ci:.2g}" if ci == ci else "")


def p_text(p) -> str:
    """A p-value as the tables print it."""
    return "-" if p is None or p != p else f"{p:.2g}"


def diff_text(v: dict) -> str:
    """a − b with its CI and the CI's level."""
    if v["seeds"] == 0:
        return "-"
    return pm(v["diff"], v["diff_ci"]) + (f" ({v['level']:.0%} CI)" if v["diff_ci"] == v["diff_ci"] else "")


def paper_text(f: Finding) -> str:
    return f.paper + (f"; parity margin ±{f.margin:g} {f.metric.upper() if f.metric == 'fid' else f.metric}: "
                      f"{f.why}" if f.expect == "parity" else "")


def deciding_p(v: dict) -> str:
    """The Holm-adjusted p that decided the verdict: the reverse's for a disagreement, the claim's otherwise."""
    if v["verdict"] == "disagrees":
        return f"reverse p {p_text(v['p_reverse_holm'])}"
    return f"p {p_text(v['p_holm'])}"


def verdict_text(v: dict) -> str:
    """The verdict in bold, with why it awaits the rerun, the reverse's adjusted p that made it a disagreement,
    or which finding it repeats."""
    text = f"**{v['verdict']}**" + (f" ({deciding_p(v)})" if v["verdict"] == "disagrees" else "")
    if v["verdict"] == "awaits the rerun":
        text += f": {v['finding'].awaits}"
    if v["same_as"] is not None:
        text += f" (the same numbers as {v['same_as']['a']} vs {v['same_as']['b']}: counted once)"
    return text


def section(rows: pd.DataFrame, spec: str, found: list[dict] | None = None,
            curves: list[dict] | None = None, published: Published = NONE) -> list[str]:
    """The report's verdict section (markdown lines); `found` is this folder's share of the index's family
    (its last checkpoint), `curves` its share at every checkpoint (assess's entries), `published` the
    folder's findings.json (`read`)."""
    out = ["## Verdict", "", RULE, ""]
    out += [published.no_paper, ""] if published.no_paper else [LACKING, ""] if not published.spec else []
    found = verdicts(rows, spec, found=published) if found is None else found
    rows = final(rows)  # the notes and checks read the last checkpoint, as the verdicts do
    if not found:
        said = published.no_paper or not published.spec
        return out + ([] if said else ["No published finding is compared by this spec's cells.", ""])
    out += [*family_lines(found), "",
              "| metric | a | b | paper | a (mean ± CI) | b (mean ± CI) | a − b | seeds | p | p (Holm) | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in found:
        f = v["finding"]
        out.append(f"| {f.metric} | {v['a']} | {v['b']} | {paper_text(f)} | {pm(v['a_mean'], v['a_ci'])} | "
                   f"{pm(v['b_mean'], v['b_ci'])} | {diff_text(v)} | {v['seeds']} | {p_text(v['p'])} | "
                   f"{p_text(v['p_holm'])} | {verdict_text(v)} |")
    out.append("")
    extra = lines(rows, published.note)
    out += ["### Notes", "", *extra, ""] if extra else []
    off = [v for v in found if checked(v)]
    if off:
        over = [c for c in trajectories(curves or []) if checked(c[-1])]
        out += [f"### {CHECKED_TITLE}", "", *map(per_seed, off), *(over_line(c) for c in over if len(c) > 1),
                *lines(rows, published.checked, curve=any(len(c) > 1 for c in over)), ""]
    return out


def over_training(found: list[dict]) -> list[str]:
    """The report's verdicts at every checkpoint (markdown lines), from one folder's share of `assess`: a
    row per finding, a column per checkpoint with a − b, its CI and the verdict; nothing for one checkpoint."""
    curves = trajectories(found)
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


def settled_cell(curve: list[dict]) -> str:
    """Whether the finding is settled, and what its last verdict would take when inconclusive."""
    return "; ".join(filter(None, (settled_text(curve), to_decide_text(curve[-1]))))


def to_decide_text(v: dict) -> str:
    """What an inconclusive verdict would take, in words ('' for any other verdict)."""
    if v.get("to_decide") is None:
        return ""
    n, toward = v["to_decide"]
    sd = float(v["per_seed"].std())
    alpha = f"α = {ALPHA:g}/{v['family']}" if v["family"] > 1 else f"α = {ALPHA:g}"
    if n is None:
        return (f"no number of seeds up to 100 would decide it at {alpha}: mean a − b {v['diff']:.3g} against "
                f"a per-seed sd of {sd:.3g}")
    return (f"about {n} seeds would decide it ({toward}, 80% power at {alpha}, if the mean a − b {v['diff']:.3g} "
            f"and its per-seed sd {sd:.3g} held)")


def family_lines(found: list[dict]) -> list[str]:
    """Which family each of these verdicts was corrected in, and its size."""
    out = []
    for name in dict.fromkeys(family_of(v["finding"]) for v in found):
        m = next(v["family"] for v in found if family_of(v["finding"]) == name)
        what = ("distinct published finding{s} with two seeds or more in the results index (results/README.md)"
                if name == "published" else f"comparison{{s}} of the {name} question without a published direction")
        out.append(f"Holm's family: the {m} {what.format(s='s' if m != 1 else '')}.")
    return out


def checked(v: dict) -> bool:
    """Whether a verdict gets the "what was checked" section: a published finding that did not reproduce,
    on seeds enough for a test."""
    return v["verdict"] in ("disagrees", "inconclusive") and v["finding"].expect != "differs" and v["seeds"] > 1


def over_line(curve: list[dict]) -> str:
    """A finding's paired difference at each checkpoint, from the rows (markdown line)."""
    v = curve[-1]
    at = "; ".join(f"{pm(x['diff'], x['diff_ci'])} at {step_text(x['train_step'])} ({x['seeds']} seeds)" for x in curve)
    return (f"- **{v['finding'].metric}: {v['a']} − {v['b']} over training** ({v['level']:.0%} CI): {at}. "
            f"Verdict: {trajectory_text(curve)}; {settled_text(curve)}.")


def per_seed(v: dict) -> str:
    """The paired differences behind a verdict, one per training seed."""
    d = ", ".join(f"seed {int(s)}: {x:+.3g}" for s, x in v["per_seed"].items())
    holm = (f" Raw p = {p_text(v['p'])} < {ALPHA}: it passes alone and drops out under Holm's correction "
            f"(adjusted p = {p_text(v['p_holm'])})." if v["p"] < ALPHA <= v["p_holm"] else "")
    return f"- **{v['finding'].metric}: {v['a']} − {v['b']}** ({v['verdict']}), per training seed: {d}.{holm}"
