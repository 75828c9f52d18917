"""Run rows -> one tidy long table per ablation (rows.csv) and its per-cell summary (summary.csv).

This package reads files only: it never imports torch or model code. `ablate collect` hands it each
run as plain values (its folder, the spec, scale, seed and axis values), and the columns come from
ablations/schema.py. rows.csv has one row per run x number, with every run's status and failure
reason; failed runs are never dropped. summary.csv has the mean, std, 95% CI half-width (Student's
t) and n over seeds for each cell, a cell being every column that distinguishes a number.
"""
import math
import shutil
from pathlib import Path

import pandas as pd

from ablations.io import atomic_write
from ablations.layout import ROWS, read_status, sample_grid_name
from ablations.schema import (IDENTITY, PROTOCOL, PROVENANCE, RUN_COLUMNS, SETTING, SPEC_COLUMNS, STATUS_COLUMNS,
                              read_rows)

# Student's t 0.975 quantiles for 1..30 degrees of freedom; 1.96 (the normal's) beyond.
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


def ci95(std: float, n: int) -> float:
    if n < 2 or not math.isfinite(std):
        return float("nan")
    return (T975[n - 2] if n - 1 <= len(T975) else 1.96) * std / math.sqrt(n)


def spec_of(rows: pd.DataFrame) -> str:
    """The spec's name without its scale suffix ("sampler" for "sampler-cpu")."""
    name, scale = str(rows["ablation"].iloc[0]), rows["scale"].iloc[0]
    return name.removesuffix(f"-{scale}") if isinstance(scale, str) else name


def write_csv(df: pd.DataFrame, path):
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def collect(runs: list[dict], out_dir, axes: list[str]) -> dict:
    """Gather the rows of `runs` (dicts with folder, run_id, ablation, scale, seed and the `axes`) into
    out_dir/rows.csv and summary.csv, and copy their sample grids to out_dir/samples/. Returns counts:
    runs, rows, skipped (lines that are not rows, and rows of a torn append: ablations.schema.read_rows),
    duplicates (rows whose IDENTITY an earlier row has, dropped), failed."""
    out_dir = Path(out_dir)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    for stale in (out_dir / "samples").glob("*.png"):  # the folder mirrors the runs collected now
        stale.unlink()
    rows, skipped, failed = [], 0, 0
    for run in runs:
        folder = Path(run["folder"])
        status = read_status(folder)
        got, bad = read_rows(folder / ROWS)
        skipped += bad
        failed += status["state"] == "failed"
        attached = {c: run[c] for c in (*SPEC_COLUMNS, *axes)}
        extra = {"status": status["state"], "reason": status.get("reason", "")}
        if not got:  # never produced a number: still a row, with its status
            got = [{"run_id": run["run_id"], "metric": "status", "value": float("nan")}]
        for r in got:
            rows.append({**{c: r.get(c) for c in RUN_COLUMNS}, **attached, "run_id": run["run_id"], **extra})
            if r.get("metric") == "fid":
                grid = folder / sample_grid_name(*(r[c] for c in SETTING))
                if grid.exists():
                    shutil.copyfile(grid, out_dir / "samples" / f"{run['run_id']}-{grid.name}")
    order = ["run_id", *SPEC_COLUMNS, *axes, "metric", "value", "phase", "train_step", *SETTING, "nfe", *PROTOCOL,
             *STATUS_COLUMNS, *PROVENANCE]
    table = pd.DataFrame(rows, columns=order)
    for col in axes:
        table[col] = table[col].map(lambda v: "-".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
    before = len(table)
    table = table.drop_duplicates(subset=list(IDENTITY), ignore_index=True)  # the first of each number
    write_csv(table, out_dir / "rows.csv")
    # summarised from the file, as `ablate results` does, so both give the same bytes
    write_csv(summarize(pd.read_csv(out_dir / "rows.csv"), axes), out_dir / "summary.csv")
    return {"runs": len(runs), "rows": len(table), "skipped": skipped, "duplicates": before - len(table),
            "failed": failed}


def cell_columns(axes: list[str]) -> list[str]:
    """The columns that distinguish a number: everything but the seed, the run and provenance."""
    return ["ablation", "scale", *axes, "metric", "phase", *SETTING, "nfe", *PROTOCOL]


def summarize(table: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Mean, std, 95% CI and `seeds` (how many values: one per training seed) per cell (cell_columns)."""
    done = table[(table["metric"] != "train_loss") & (table["metric"] != "status") & table["value"].notna()]
    g = done.groupby(cell_columns(axes), dropna=False)["value"]
    out = g.agg(mean="mean", std="std", seeds="count").reset_index()
    out["ci95"] = [ci95(s, n) for s, n in zip(out["std"], out["seeds"])]
    return out
