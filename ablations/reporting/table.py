"""Run rows -> one tidy long table per ablation (rows.csv) and its per-cell summary (summary.csv).

This package reads files only: it never imports torch or model code. `ablate collect` hands it each
run as plain values (its folder, the spec, scale, seed and axis values), and the columns come from
ablations/store/schema.py. rows.csv has one row per run x number, with every run's status and failure
reason; failed runs are never dropped. summary.csv has the mean, std, 95% CI half-width (Student's
t) and n over seeds for each cell, a cell being every column that distinguishes a number, the checkpoint
(`train_step`) included: a run scored at several checkpoints has a cell per checkpoint.

An eval row written before checkpoints were scored has an empty train_step; `checkpointed` reads it as the
run's last checkpoint (its last training step), so such a folder is a table of one checkpoint.
"""
import math
import shutil
from pathlib import Path

import pandas as pd

from ablations.store.io import atomic_write
from ablations.store.layout import sample_grid_name
from ablations.store.reads import Reads, look
from ablations.store.schema import (CURVES, DENOISING, IDENTITY, OPTIONAL, PROTOCOL, PROVENANCE, RUN_COLUMNS, SETTING,
                                    SPEC_COLUMNS, STATUS_COLUMNS, foreign_metrics, rows_of)

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


def collect(runs: list[dict], out_dir, axes: list[str], reads: Reads | None = None) -> dict:
    """Gather the rows of `runs` (dicts with folder, run_id, ablation, scale, seed and the `axes`) into
    out_dir/rows.csv and summary.csv, and copy their sample grids to out_dir/samples/. Returns counts:
    runs, rows, skipped (lines that are not rows, and rows of a torn append: ablations.store.schema.read_rows),
    duplicates (rows whose IDENTITY an earlier row has, dropped), failed, foreign (the metrics of rows a newer
    suite wrote, left out: `schema.foreign_metrics`). Each run's status.json and rows.jsonl through `reads`,
    the command's one read of each run folder (ablations/store/reads.py)."""
    out_dir = Path(out_dir)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    for stale in (out_dir / "samples").glob("*.png"):  # the folder mirrors the runs collected now
        stale.unlink()
    rows, skipped, failed, foreign, copied = [], 0, 0, set(), set()
    for run in runs:
        folder = Path(run["folder"])
        seen = look(reads, folder)
        status, lines = run.get("status") or seen.status, seen.lines  # this spec's (ledger.state, via collect)
        got, bad = rows_of(lines)
        foreign |= foreign_metrics(lines)
        skipped += bad
        failed += status["state"] == "failed"
        attached = {c: run[c] for c in (*SPEC_COLUMNS, *axes)}
        extra = {"status": status["state"], "reason": status.get("reason", "")}
        got = [r for r in got if asked(r, run)]
        if not got:  # never produced a number: still a row, with its status
            got = [{"run_id": run["run_id"], "metric": "status", "value": float("nan")}]
        for r in got:
            rows.append({**{c: r.get(c) for c in RUN_COLUMNS}, **attached, "run_id": run["run_id"], **extra})
            if r.get("metric") == "fid":
                step = r.get("train_step")  # None in rows from before checkpoints were scored
                grid = folder / sample_grid_name(*(r[c] for c in SETTING), train_step=step)
                copy = out_dir / "samples" / f"{run['run_id']}-{grid.name}"
                if copy not in copied and grid.exists():  # once, though each extractor's FID row names it
                    shutil.copyfile(grid, copy)
                    copied.add(copy)
    order = ["run_id", *SPEC_COLUMNS, *axes, "metric", "value", "phase", "train_step", *SETTING, "nfe", *PROTOCOL,
             *STATUS_COLUMNS, *PROVENANCE]
    table = pd.DataFrame(rows, columns=order)
    for col in axes:
        table[col] = table[col].map(lambda v: "-".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
    before = len(table)
    table = table.drop_duplicates(subset=list(IDENTITY), ignore_index=True)  # the first of each number
    table = table.drop(columns=[c for c in OPTIONAL if table[c].isna().all()])  # a later column, where used
    write_csv(table, out_dir / "rows.csv")
    # summarised from the file, as `ablate results` does, so both give the same bytes
    write_csv(summarize(pd.read_csv(out_dir / "rows.csv"), axes), out_dir / "summary.csv")
    return {"runs": len(runs), "rows": len(table), "skipped": skipped, "duplicates": before - len(table),
            "failed": failed, "foreign": sorted(foreign)}


def first_sample_set(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows a table or figure shows: those of the lowest sample seed, and those without one (training rows).
    A second sample set of the same weights (`--set eval.sample_seed=1`) is the sample-set noise check, which
    the index reads from the whole table; verdicts read the lowest seed too (`verdicts.select`)."""
    if "sample_seed" not in rows or rows["sample_seed"].nunique() < 2:
        return rows
    return rows[rows["sample_seed"].isna() | (rows["sample_seed"] == rows["sample_seed"].min())]


def asked(r: dict, run: dict) -> bool:
    """Whether the spec being collected asked for row `r` of `run`. Run ids leave out train_steps, so one run
    serves every spec with its config: one that trained it further, or scored other checkpoints or
    settings, left rows this spec did not ask for. Kept: rows up to the run's `until` (its training steps
    for this spec); of the eval rows, those at a checkpoint of `scored` ({train_step: [setting dicts]}) with
    one of its settings (NLL rows name none), and of the measurements it asks for: an extractor of its own
    (`extractors`), solver_rms only where it asks for it (`solver`), the denoising rows at its own timesteps
    (`denoise_t`). So another spec's scoring of a shared run never changes this spec's table. Rows without a
    train_step (before checkpoints were scored) and runs described without `until` are kept."""
    step = r.get("train_step")
    if "until" not in run or step is None:
        return True
    if step > run["until"]:
        return False
    if r.get("phase") != "eval":
        return True
    settings = run["scored"].get(step)
    if settings is None or not measured(r, run):
        return False
    return r.get("sampler") is None or any(all(r.get(k) == v for k, v in s.items()) for s in settings)


def measured(r: dict, run: dict) -> bool:
    """Whether eval row `r` is a measurement the spec described in `run` asks for (see `asked`)."""
    if r.get("extractor") and r["extractor"] not in run["extractors"]:
        return False
    if r.get("metric") == "solver_rms":
        return run["solver"]
    return r.get("metric") not in DENOISING or r.get("t") in run["denoise_t"]


def cell_columns(axes: list[str]) -> list[str]:
    """The columns that distinguish a number: everything but the seed, the run and provenance."""
    return ["ablation", "scale", *axes, "metric", "phase", "train_step", *SETTING, "nfe", *PROTOCOL]


def summarize(table: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Mean, std, 95% CI and `seeds` (how many values: one per training seed) per cell (cell_columns)."""
    table = checkpointed(table)
    done = table[~table["metric"].isin(CURVES) & (table["metric"] != "status") & table["value"].notna()]
    g = done.groupby([c for c in cell_columns(axes) if c in done or c not in OPTIONAL], dropna=False)["value"]
    out = g.agg(mean="mean", std="std", seeds="count").reset_index()
    out["ci95"] = [ci95(s, n) for s, n in zip(out["std"], out["seeds"])]
    return out


def checkpointed(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows with every eval row's empty train_step read as its run's last training step: such rows
    predate checkpoint scoring and scored the run's final EMA weights. Rows without a train_step column,
    or a run without train rows, keep theirs empty (one checkpoint, the last)."""
    if not {"train_step", "phase", "run_id"} <= set(rows.columns):
        return rows
    last = rows[rows["phase"] == "train"].groupby("run_id")["train_step"].max()
    empty = (rows["phase"] == "eval") & rows["train_step"].isna()
    if not empty.any() or last.empty:
        return rows
    return rows.assign(train_step=rows["train_step"].where(~empty, rows["run_id"].map(last)))


def checkpoints(rows: pd.DataFrame) -> list[float]:
    """The training steps the table's eval rows scored, ascending (`checkpointed` rows); [nan] when they
    name none (one checkpoint, the last), [] when there are no eval rows."""
    if "train_step" not in rows:
        return [math.nan] if len(rows) else []
    steps = rows.loc[rows["phase"] == "eval", "train_step"] if "phase" in rows else rows["train_step"]
    if steps.empty:
        return []
    found = sorted(steps.dropna().unique())
    return found + ([math.nan] if steps.isna().any() and not found else [])


def at_step(rows: pd.DataFrame, step: float) -> pd.DataFrame:
    """The rows measured at checkpoint `step` (nan: the rows that name none)."""
    if "train_step" not in rows:
        return rows
    return rows[rows["train_step"].isna()] if step != step else rows[rows["train_step"] == step]


def final(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows at the table's last checkpoint, with the training loss curve and rows that name no step:
    what every one-checkpoint figure and table shows."""
    rows = checkpointed(rows)
    steps = checkpoints(rows)
    if len(steps) < 2:
        return rows
    return rows[rows["metric"].isin(CURVES) | rows["train_step"].isna() | (rows["train_step"] == steps[-1])]


COST = ("train_images", "train_flops", "train_wall_s")


def cost(rows: pd.DataFrame) -> pd.DataFrame:
    """Training cost to each checkpoint of each run: run_id, train_step, train_images, train_flops and
    train_wall_s, from the train rows at that step. Rows from before train_images existed give images as
    train_step x batch (a train row's n); FLOPs and wall time they lack stay empty (NaN)."""
    rows = checkpointed(rows)
    out = pd.DataFrame(columns=["run_id", "train_step", *COST])
    if not {"train_step", "phase", "run_id", "n"} <= set(rows.columns):
        return out
    scored = rows[(rows["phase"] == "eval") & rows["train_step"].notna()][["run_id", "train_step"]]
    scored = scored.drop_duplicates().sort_values(["run_id", "train_step"], ignore_index=True)
    if scored.empty:
        return out
    train = rows[rows["phase"] == "train"]
    at = train[train["metric"].isin(COST)].pivot_table(index=["run_id", "train_step"], columns="metric",
                                                        values="value", aggfunc="first")
    got = scored.join(at, on=["run_id", "train_step"]).reindex(columns=list(out.columns))
    batch = train.groupby("run_id")["n"].first()
    guess = got["train_step"] * got["run_id"].map(batch)
    return got.assign(train_images=got["train_images"].astype(float).fillna(guess.astype(float)))
