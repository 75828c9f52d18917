"""Two results folders side by side (`ablate compare`): each number of one beside the same cell of the other,
from their summary.csv files alone. A cell is the metric, the axes, the sampler setting, the extractor and
the checkpoint; where the two measured it against different references, counts or seeds, both are shown,
so a change of protocol is never read as a change of result."""
from pathlib import Path

import pandas as pd

from ablations.store.schema import SETTING

TIMING = ("_s", "_per_s", "peak_mem_mb")  # how fast the machine was, not what the model is
MEASURED = ("n", "reference", "sample_seed", "strata", "seeds")  # shown beside the means when the two differ


def side_by_side(ours, theirs) -> list[str]:
    """Markdown table lines: metric, cell, our mean, their mean, ours − theirs, and how each was measured
    where the two differ. Cells only one folder has are listed under it."""
    a, b = _summary(ours), _summary(theirs)
    keys = [c for c in ("metric", *_axes(a, b), "train_step", *SETTING, "extractor", "t") if c in a and c in b]
    both = a.merge(b, on=keys, how="outer", suffixes=("_ours", "_theirs"), indicator=True)
    head = f"| metric | cell | {Path(ours).name} (ours) | {Path(theirs).name} (theirs) | ours − theirs | measured |"
    out = [head, "|---|---|---|---|---|---|"]
    for r in both[both["_merge"] == "both"].itertuples(index=False):
        r = r._asdict()
        differ = [f"{m}: {r[m + '_ours']} vs {r[m + '_theirs']}" for m in MEASURED
                  if m + "_ours" in r and not _same(r[m + "_ours"], r[m + "_theirs"])]
        out.append(f"| {r['metric']} | {_cell(r, keys)} | {r['mean_ours']:.4g} | {r['mean_theirs']:.4g} | "
                   f"{r['mean_ours'] - r['mean_theirs']:+.3g} | {'; '.join(differ) or 'the same'} |")
    for side, name in (("left_only", "ours"), ("right_only", "theirs")):
        alone = both[both["_merge"] == side]
        if len(alone):
            out.append(f"\n{len(alone)} cell(s) only {name}: " + ", ".join(
                f"{r['metric']} {_cell(r, keys)}" for r in (x._asdict() for x in alone.itertuples(index=False))))
    return out


def _same(x, y) -> bool:
    """One value, read from two CSV files (1000 and 1000.0 are one count; two empty cells are one)."""
    if pd.isna(x) and pd.isna(y):
        return True
    try:
        return float(x) == float(y)
    except (TypeError, ValueError):
        return str(x) == str(y)


def _summary(folder) -> pd.DataFrame:
    rows = pd.read_csv(Path(folder) / "summary.csv")
    return rows[~rows["metric"].astype(str).str.endswith(TIMING)]


def _axes(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """The columns before `metric` that both folders hold, but the spec's name and scale."""
    cols = list(a.columns[:list(a.columns).index("metric")])
    return [c for c in cols if c in b and c not in ("ablation", "scale")]


def _cell(r: dict, keys: list[str]) -> str:
    return ", ".join(f"{k}={r[k]}" for k in keys if k != "metric" and pd.notna(r[k]))
