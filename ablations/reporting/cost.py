"""What a question's grid cost, from its rows alone: the wall time of the grid, the machine it ran on, the
training cost to each checkpoint, and the runs and hours an inconclusive verdict would add. Each report shows
its question's (ablations/reporting/report.py); the index sums each scale once (ablations/reporting/index.py)."""
import pandas as pd

from ablations.store.schema import SETTING
from ablations.reporting.table import cost

WALL = ("train_wall_s", "sample_wall_s", "fid_wall_s", "nll_wall_s")


def wall(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows that are wall time; training's compile time is inside train_wall_s, evaluation's is not.
    train_wall_s runs to its row's step, so only each run's latest counts (the earlier are inside it)."""
    spent = rows[rows["metric"].isin(WALL) | ((rows["metric"] == "compile_s") & (rows["phase"] == "eval"))]
    train = spent["metric"] == "train_wall_s"
    if "train_step" in spent and "run_id" in spent and train.any():
        latest = spent[train].groupby("run_id")["train_step"].transform("max")
        stale = (spent.loc[train, "train_step"] < latest).reindex(spent.index, fill_value=False)
        spent = spent[~stale]
    return spent


def hours(rows: pd.DataFrame) -> str:
    """The wall time of the rows' grid: training, sampling, FID, NLL and evaluation compile seconds summed."""
    seconds = wall(rows)["value"].sum()
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def machine(rows: pd.DataFrame) -> str:
    """The machines the rows ran on: cpu, device and torch, each distinct one once."""
    cols = [c for c in ("cpu", "device", "torch") if c in rows]
    found = rows[cols].dropna().drop_duplicates()
    return "; ".join(", ".join(str(v) for v in r) for r in found.itertuples(index=False)) or "-"


def would_take(v: dict, rows: pd.DataFrame) -> str:
    """The runs and worker hours the seeds `to_decide` names would add, at the mean wall time of the folder's
    runs (training, sampling, FID and NLL to the last checkpoint): one run a seed when a and b are sampler
    settings of the same runs, two (one a cell) otherwise. '' when nothing is to decide or no time is known."""
    n = (v.get("to_decide") or (None,))[0]
    if n is None or "run_id" not in rows:
        return ""
    spent = wall(rows)
    if spent.empty:
        return ""
    f = v["finding"]
    apart = {k for k in {*f.a, *f.b} if f.a.get(k) != f.b.get(k)}
    runs = (n - v["seeds"]) * (1 if apart <= set(SETTING) else 2)
    per_run = spent["value"].sum() / rows.loc[rows["run_id"].notna(), "run_id"].nunique()
    return (f"{runs} more runs, ~{runs * per_run / 3600:.1f} h on one worker at this grid's mean run "
            f"({per_run / 60:.0f} min)")


def _si(x: float, unit: str) -> str:
    if x != x:
        return "-"
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _span(values: pd.Series, show) -> str:
    """One number when the runs agree (within 0.5%), else their range."""
    v = values.dropna()
    if v.empty:
        return "-"
    lo, hi = v.min(), v.max()
    return show(lo) if hi <= lo * 1.005 else f"{show(lo)} to {show(hi)}"


def checkpoint_lines(rows: pd.DataFrame) -> list[str]:
    """The training cost to each checkpoint from the train rows (results/table.cost), as a markdown table:
    images and FLOPs per run, wall time per run and summed over the grid's runs. "-" where the rows lack it
    (rows from before train_flops existed; train_wall_s only at a run's last step)."""
    lines = []
    for step, d in cost(rows).groupby("train_step"):
        spent = d["train_wall_s"].dropna()
        total = f"{spent.sum() / 3600:.2f} h" if len(spent) == len(d) else "-"
        lines.append(f"| {int(step):,} | {len(d)} | {_span(d['train_images'], lambda x: f'{x:,.0f}')} | "
                     f"{_span(d['train_flops'], lambda x: _si(x, 'FLOP'))} | "
                     f"{_span(spent, lambda x: f'{x / 60:.1f} min')} | {total} |")
    if not lines:
        return []
    return ["Training cost to each checkpoint, from the train rows (images are steps × batch where the rows predate "
            "`train_images`; FLOPs and wall time the rows lack read \"-\"):", "",
            "| checkpoint (step) | runs | training images per run | training FLOPs per run | "
            "training wall time per run | summed over runs |", "|---|---|---|---|---|---|", *lines]


def section(rows: pd.DataFrame) -> list[str]:
    """The report's cost section (markdown lines): the grid's wall time and machine, then the training cost to
    each checkpoint."""
    spent = checkpoint_lines(rows)
    return ["## Cost", "",
            f"Wall time of the grid: {hours(rows)} (training, sampling, FID, NLL and evaluation compile seconds "
            f"summed over its runs), on {machine(rows)}.", "", *([*spent, ""] if spent else [])]


def totals(tables: list[pd.DataFrame]) -> list[str]:
    """One line per scale: its questions' runs and wall time, each run's numbers counted once."""
    if not tables:
        return []
    rows = pd.concat([wall(t) for t in tables if "scale" in t], ignore_index=True)
    key = [c for c in ("run_id", "metric", "phase", *SETTING, "sample_seed", "value") if c in rows]
    rows = rows[rows["scale"].notna()].drop_duplicates(subset=key)
    return [f"Every question at scale `{scale}`: {d['run_id'].nunique()} runs, {hours(d)} in all (a run shared "
            f"by several questions counted once)." for scale, d in rows.groupby("scale")]
