"""Every comparison of a grid, not only the published ones: for each grid axis, each pair of its values (the
other grid axes held equal), on FID and NLL at the last checkpoint, the paired difference a − b over training
seeds with its 95% CI and a two-sided Student's t p-value, Holm-adjusted over the folder's table (Holm 1979).
A difference no paper predicted is reported the same way as one it did, so a reader sees what the grid found
beside what it was asked; the published findings keep their own test and family (ablations/reporting/verdicts.py).
"""
from itertools import combinations, product

import pandas as pd

from ablations.reporting import stats, verdicts
from ablations.reporting.table import final
from ablations.reporting.wording import p_text, pm

METRICS = ("fid", "nll_bpd")  # the two every training question scores: sample quality and likelihood
TITLE = "Every comparison (last checkpoint, two-sided)"


def pairs(rows: pd.DataFrame, grid: list[str]) -> list[tuple[dict, dict]]:
    """Cells (a, b) that differ in one grid axis, the others equal: b the value the rows give first (the
    baseline's, which every spec lists first), a a later one."""
    values = {g: list(dict.fromkeys(rows[g].dropna())) for g in grid if g in rows}
    out = []
    for g, vals in values.items():
        others = [o for o in values if o != g]
        for rest in product(*(values[o] for o in others)):
            fixed = dict(zip(others, rest))
            out += [({**fixed, g: a}, {**fixed, g: b}) for b, a in combinations(vals, 2)]
    return out


def compare(rows: pd.DataFrame, grid: list[str], found: list[dict] = ()) -> list[dict]:
    """One entry per (metric, a, b) that two seeds or more hold: d = a − b per seed, its mean, 95% CI half-width,
    two-sided p, Holm-adjusted p over all entries, and the published finding on the same cells, if any (the pair
    then in the finding's order, so that a − b reads as its a − b)."""
    rows = final(rows)
    out = []
    for metric, (a, b) in product(METRICS, pairs(rows, grid)):
        published = next((v["finding"] for v in found if _covers(v["finding"], metric, a, b)), None)
        if published is None:
            published = next((v["finding"] for v in found if _covers(v["finding"], metric, b, a)), None)
            a, b = (b, a) if published else (a, b)
        d = list(verdicts.paired(rows, metric, a, b))
        if len(d) < 2:
            continue
        out.append({"metric": metric, "a": a, "b": b, "diff": sum(d) / len(d), "ci": stats.ci(d, 0.95),
                    "seeds": len(d), "p": stats.p_two_sided(d), "finding": published})
    for e, p in zip(out, stats.holm([e["p"] for e in out])):
        e["p_holm"] = p
    return out


def _covers(f, metric: str, a: dict, b: dict) -> bool:
    """Whether published finding `f` compares these cells: its metric, its a and b naming exactly these grid
    values (a finding that names a sampler setting compares other cells: the comparisons read the spec's first)."""
    def same(cell, grid_cell):
        return {k: str(v) for k, v in cell.items()} == {k: str(v) for k, v in grid_cell.items()}
    return f.metric == metric and same(f.a, a) and same(f.b, b)


def lines(rows: pd.DataFrame, grid: list[str], found: list[dict] = ()) -> list[str]:
    """The report's section: a table of `compare`'s entries, or nothing for a folder without a grid axis."""
    entries = compare(rows, grid, found)
    if not entries:
        return []
    cell = lambda c: ", ".join(f"{k}={v}" for k, v in c.items())
    out = [f"## {TITLE}", "",
           "Each pair of a grid axis's values, the other grid axes equal, on FID (the spec's first sampler setting) "
           "and NLL: a − b over training seeds with its 95% CI, two-sided p, and p Holm-adjusted over this table. "
           "A published finding on the same cells is decided in the Verdict section by its own test.", "",
           "| metric | a | b | a − b (95% CI) | seeds | p (two-sided) | p (Holm, this table) | published finding |",
           "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        f = e["finding"]
        out.append(f"| {e['metric']} | {cell(e['a'])} | {cell(e['b'])} | {pm(e['diff'], e['ci'])} | {e['seeds']} | "
                   f"{p_text(e['p'])} | {p_text(e['p_holm'])} | {f'{f.expect} ({f.source})' if f else '-'} |")
    return out + [""]
