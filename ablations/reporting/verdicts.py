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

The verdicts in words are ablations/reporting/wording.py; the question's notes beside them (results/notes/),
ablations/reporting/notes.py; the report's verdict section, ablations/reporting/report.py.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ablations.reporting.legend import label
from ablations.reporting import axes as identity, stats
from ablations.reporting.table import at_step, checkpointed, checkpoints, ci95, cost, spec_of

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
    untested: str = ""  # the part of the paper's claim the cells do not test: shown beside the verdict
    source: str = ""  # the paper
    table: str = ""  # its table or figure


@dataclass(frozen=True)
class Published:
    """A results folder's findings.json (ablations/grid/findings.py, written by `ablate collect`): the spec's
    findings, and what to say when no paper compares its cells."""
    spec: str = ""
    findings: tuple = ()
    no_paper: str = ""


FILE = "findings.json"  # in each results folder
NONE = Published()  # a folder without findings.json


def published(data: dict) -> Published:
    """A Published from findings.json's object."""
    spec = data.get("spec") or ""
    return Published(spec, tuple(Finding(spec, **f) for f in data.get("findings", ())), data.get("no_paper", ""))


def read(folder) -> Published:
    """The findings.json of a results folder; a folder without one has no findings."""
    path = Path(folder) / FILE
    return published(json.loads(path.read_text())) if path.exists() else NONE


def read_all(results_root) -> dict[str, Published]:
    """folder name -> its Published, for every results folder under results_root."""
    return {p.parent.name: read(p.parent) for p in sorted(Path(results_root).glob("*/rows.csv"))}


def select(rows: pd.DataFrame, metric: str, cell: dict) -> pd.Series:
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
    words = d.drop_duplicates("sampler").set_index("sampler")["word"] if "word" in d else {}
    if "sampler" in cell:
        parts.insert(0, label(cell["sampler"], cell.get("steps"), cell.get("eta"), cell.get("clip_x0", True),
                              cell.get("spacing"), words.get(cell["sampler"])))
    elif metric in ("fid", "kid") and not d.empty:
        first = d.iloc[0]
        parts.append(label(first["sampler"], first["steps"], first["eta"], first.get("clip_x0", True),
                           first.get("spacing", "leading"), first.get("word")))
    return ", ".join(parts)


def _pair(rows, metric, a: dict, b: dict) -> tuple[pd.Series, pd.Series]:
    """Per-seed values of cells a and b, on the seeds both have."""
    a, b = select(rows, metric, a), select(rows, metric, b)
    seeds = sorted(set(a.index) & set(b.index))
    return a[seeds], b[seeds]


def paired(rows, metric, a: dict, b: dict) -> pd.Series:
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


def legacy(rows: pd.DataFrame) -> str | None:
    """Why a folder's rows predate the current protocol, or None when they follow it (or cannot tell): their
    FID is against the training split and they hold no precision/recall rows, as before the protocol fixes
    (the test-split reference, EMA warm-up, the EMA's own BatchNorm statistics, PRC). The index puts one
    protocol in a Holm family: a legacy folder's findings leave it until the question is rerun."""
    if "reference" not in rows or "metric" not in rows:
        return None
    fid = rows.loc[rows["metric"] == "fid", "reference"].dropna().astype(str)
    if fid.empty or not fid.str.split(":").str[1].eq("train").all() or rows["metric"].eq("precision").any():
        return None
    return ("legacy protocol: FID against the training split, no precision/recall, no EMA warm-up, the live "
            "model's BatchNorm statistics")


def decide(v: dict) -> str:
    """The verdict from a measured finding's Holm-adjusted p-values."""
    if v["seeds"] == 0:
        return "awaits the rerun"
    if v.get("legacy"):
        return "legacy protocol"
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
    found = []  # a legacy folder's findings (`legacy`) are measured, never Holm-adjusted with the current ones
    for folder, spec, rows in tables:
        rows, old = checkpointed(rows), legacy(rows)
        steps = checkpoints(rows)
        images = cost(rows).groupby("train_step")["train_images"].mean()
        for i, step in enumerate(steps):
            at, last = at_step(rows, step), i == len(steps) - 1
            for f in (found_in or {}).get(folder, NONE).findings:
                v = measure(at, f, folder)
                if v is not None and (last or v["seeds"]):  # a cell scored only at the end: no earlier verdict
                    v.update(train_step=step, last=last, train_images=images.get(step, NAN),
                             n_checkpoints=len(steps), checkpoint="last" if last else step,
                             key=("last" if last else step, *v["key"]), legacy=old)
                    found.append(v)
    first = {}
    for v in found:
        if v["seeds"] >= 2:
            original = first.setdefault(v["key"], v)
            v["same_as"] = None if original is v else original
    tested = [v for v in found if v["seeds"] >= 2 and v["same_as"] is None and not v["legacy"]]
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


def family_of(f: Finding) -> str:
    """The family a finding's p-value is corrected in: every published finding of the index together; a
    question's comparisons without a published direction (the norm question's) apart, as exploratory."""
    return "published" if f.expect != "differs" else f.spec


def tables(results_root, read=pd.read_csv, identify=None) -> list[tuple[str, str, pd.DataFrame]]:
    """(folder name, spec, rows) of every results folder under results_root: the family the index corrects,
    each sampler's legend word beside its rows (`axes.with_words`). `read` reads a rows.csv and `identify` a
    folder's axes.json (`Assessed` passes those it read once); a folder without a readable one has no words."""
    return [(p.parent.name, spec_of(rows), identity.with_words(rows, (identify or _identity)(p.parent)))
            for p in sorted(Path(results_root).glob("*/rows.csv")) if not (rows := read(p)).empty]


def _identity(folder) -> dict:
    """The folder's axes.json, or {} where it has none readable (the figures then say why)."""
    try:
        return identity.read(folder)
    except identity.AxesError:
        return {}


@dataclass(frozen=True)
class Assessed:
    """A results root read and decided once, for every figure, report and the index one command writes from it:
    each folder's rows.csv as read (`rows`: its path -> the table), the non-empty ones as `tables` gives them,
    each folder's findings.json (`published`: `read_all`), every finding at every checkpoint (`found`:
    `assess`, Holm-adjusted over the whole index) and each folder's axes.json as read (`identities`), checked
    against its rows when asked for (`axes`)."""
    rows: dict
    tables: list
    published: dict
    found: list
    identities: dict = field(default_factory=dict)  # a folder's path -> its axes.json ({}: none readable)

    def axes(self, folder, rows: pd.DataFrame) -> dict:
        """The folder's axes.json checked against its rows (`reporting.axes.checked`), read once: a folder
        without a readable one is read again here, to say why."""
        return identity.checked(folder, rows, self.identities.get(Path(folder).resolve()) or None)

    def of(self, folder) -> list[dict]:
        """The folder's share of `found` (assess's entries: every checkpoint)."""
        return [v for v in self.found if v["folder"] == Path(folder).name]

    def read(self, folder) -> pd.DataFrame:
        """The folder's rows.csv: as read for the index when the folder is one of its folders, else read now."""
        path = (Path(folder) / "rows.csv").resolve()
        return self.rows[path] if path in self.rows else pd.read_csv(path)


def assessed(results_root) -> Assessed:
    """Every rows.csv and findings.json under results_root read once, and their verdicts decided once."""
    rows = {}

    def read(path):
        rows[Path(path).resolve()] = pd.read_csv(path)
        return rows[Path(path).resolve()]
    identities = {}

    def identify(folder):
        identities[Path(folder).resolve()] = _identity(folder)
        return identities[Path(folder).resolve()]
    found_tables, published = tables(results_root, read, identify), read_all(results_root)
    return Assessed(rows, found_tables, published, assess(found_tables, published), identities)


def verdicts(rows: pd.DataFrame, spec: str, folder: str = "", family: list[dict] | None = None,
             found: Published = NONE) -> list[dict]:
    """The findings `found` in `rows`, Holm-adjusted over `family` (assess's answer for the whole index,
    which holds this folder's) or, without one, over these findings alone."""
    if family is None:
        family = assess([(folder, spec, rows)], {folder: found})
    return [v for v in last(family) if v["folder"] == folder]
