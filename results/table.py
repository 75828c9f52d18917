"""Run rows -> one tidy long table per ablation (rows.csv) and its per-cell summary (summary.csv).

rows.csv has one row per run x metric x sampler setting (and per logged step for train_loss), with
every run's status and failure reason; failed runs are never dropped. summary.csv has the mean, std,
95% CI half-width (Student's t) and n over seeds for each grid cell.
"""
import math
import shutil
from pathlib import Path

import pandas as pd

from ablations.runner import read_status, run_dir
from ablations.spec import AXES, Spec
from core.io import atomic_write, read_jsonl

# Student's t 0.975 quantiles for 1..30 degrees of freedom; 1.96 (the normal's) beyond.
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]
SETTING = ["sampler", "steps", "eta"]


def ci95(std: float, n: int) -> float:
    if n < 2 or not math.isfinite(std):
        return float("nan")
    return (T975[n - 2] if n - 1 <= len(T975) else 1.96) * std / math.sqrt(n)


def axis_columns(spec: Spec) -> list[str]:
    """The ablation axes as table columns: the spec's grid axes first, then the other standard ones."""
    return list(spec.axes) + [a for a in AXES if a not in spec.axes]


def write_csv(df: pd.DataFrame, path):
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def collect(spec: Spec, runs_root, out_dir) -> dict:
    """Gather every run's rows into out_dir/rows.csv and summary.csv; copy sample grids to out_dir/samples/.
    Returns counts: runs, rows, skipped (half-written lines), failed."""
    out_dir = Path(out_dir)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    rows, skipped, failed = [], 0, 0
    for run in spec.runs:
        folder = run_dir(spec, run, runs_root)
        status = read_status(folder)
        got, bad = read_jsonl(folder / "metrics.jsonl")
        skipped += bad
        failed += status["state"] == "failed"
        if not got:  # never produced a number: still a row, with its status
            got = [{"ablation": spec.name, "scale": spec.scale, "run_id": run.run_id, "seed": run.config.seed,
                    **{a: getattr(run.config, a) for a in axis_columns(spec)}, "metric": "status",
                    "value": float("nan")}]
        for r in got:
            rows.append({**r, "status": status["state"], "reason": status.get("reason", "")})
        for png in folder.glob("samples-*.png"):
            shutil.copyfile(png, out_dir / "samples" / f"{run.run_id}-{png.name.removeprefix('samples-')}")
    lead = ["ablation", "scale", "run_id", "seed", *axis_columns(spec), *SETTING, "metric", "value", "n", "extractor",
            "protocol", "step", "status", "reason"]
    table = pd.DataFrame(rows)
    table = table[[c for c in lead if c in table] + [c for c in table if c not in lead]]
    for col in axis_columns(spec):
        table[col] = table[col].map(lambda v: "-".join(map(str, v)) if isinstance(v, list) else v)
    write_csv(table, out_dir / "rows.csv")
    write_csv(summarize(table, axis_columns(spec)), out_dir / "summary.csv")
    return {"runs": len(spec.runs), "rows": len(table), "skipped": skipped, "failed": failed}


def summarize(table: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Mean, std, 95% CI and n over seeds per (axes, sampler setting, metric, extractor) cell."""
    done = table[(table["metric"] != "train_loss") & table["value"].notna()]
    keys = ["ablation", *axes, *SETTING, "metric", "extractor"]
    g = done.groupby(keys, dropna=False)["value"]
    out = g.agg(mean="mean", std="std", n="count").reset_index()
    out["ci95"] = [ci95(s, n) for s, n in zip(out["std"], out["n"])]
    return out
