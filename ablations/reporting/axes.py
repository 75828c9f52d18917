"""axes.json: a results folder's identity, written by `ablate collect` beside rows.csv.

It names the spec and scale the rows answer, the folder's axes in order (the grid's axes first, then the
standard axes, ablations/run/axes.py STANDARD) and each run's seed and axis values, taken from the run's own
config.json, and the legend word of each sampler its rows name (`words`, from the sampler's registry entry:
core/samplers.py `Sampler.word`). Figures, reports and the index read the axes here: they never load the spec,
and never guess an axis from the columns. The axis a figure or a report compares is the grid's first; with no
grid axis the folder compares sampler settings on one training config.
"""
import json
import math
from pathlib import Path

import pandas as pd

from ablations.store.io import write_json
from ablations.store.schema import RUN_COLUMNS, SPEC_COLUMNS, STATUS_COLUMNS

FILE = "axes.json"
NOT_AXES = {*RUN_COLUMNS, *SPEC_COLUMNS, *STATUS_COLUMNS}
KEYS = {"spec": str, "ablation": str, "scale": (str, type(None)), "grid": list, "axes": list, "runs": dict}
LATER = {"words": dict}  # keys a folder collected before them lacks: read as empty


class AxesError(ValueError):
    """A results folder without a readable axes.json: names the file, the key, the value and the fix."""


def write(out_dir, spec: str, ablation: str, scale, grid, axes, runs: list[dict], words: dict | None = None) -> Path:
    """out_dir/axes.json from `runs` (dicts with run_id, seed and a value per axis) and `words` (sampler ->
    legend word, for the samplers the folder's rows name)."""
    path = Path(out_dir) / FILE
    write_json(path, {"spec": spec, "ablation": ablation, "scale": scale, "grid": list(grid), "axes": list(axes),
                      "runs": {r["run_id"]: {"seed": r["seed"], **{a: r[a] for a in axes}} for r in runs},
                      "words": dict(words or {})})
    return path


def read(folder) -> dict:
    """The folder's axes.json, checked: every key present with its type, the grid axes leading the axes,
    and each run holding a value per axis."""
    path = Path(folder) / FILE
    if not path.is_file():
        raise AxesError(f"{path}: no such file; a results folder's axes come from its runs: make it with "
                        "`ablate collect SPEC` (give the spec file and scale that made the folder)")
    try:
        record = json.loads(path.read_text())
    except ValueError as e:
        raise AxesError(f"{path}: not JSON ({e}); make it again with `ablate collect SPEC`") from None
    if not isinstance(record, dict):
        raise AxesError(f"{path}: expected a JSON object with keys {', '.join(KEYS)}, got {type(record).__name__}")
    record = {**{key: kind() for key, kind in LATER.items()}, **record}
    for key, kind in {**KEYS, **LATER}.items():
        if key not in record:
            raise AxesError(f"{path}: key '{key}' missing; valid keys: {', '.join(KEYS)}")
        if not isinstance(record[key], kind):
            raise AxesError(f"{path}: key '{key}': expected {_kind(kind)}, got {record[key]!r}")
    if not all(isinstance(w, str) for w in record["words"].values()):
        raise AxesError(f"{path}: key 'words': expected an object of sampler -> legend word (a string), got "
                        f"{record['words']!r}")
    grid, axes = record["grid"], record["axes"]
    for key in ("grid", "axes"):
        if not all(isinstance(a, str) for a in record[key]):
            raise AxesError(f"{path}: key '{key}': expected a list of axis names, got {record[key]!r}")
    if axes[:len(grid)] != grid:
        raise AxesError(f"{path}: key 'grid': {grid!r} must lead key 'axes' {axes!r} (the grid's axes come first)")
    for run_id, values in record["runs"].items():
        lacking = [a for a in ("seed", *axes) if a not in values] if isinstance(values, dict) else ["seed", *axes]
        if lacking:
            raise AxesError(f"{path}: key 'runs.{run_id}': no value for {', '.join(lacking)}; valid: an object "
                            f"with seed and {', '.join(axes) or 'no axis'}")
    return record


def _kind(kind) -> str:
    names = {str: "a string", list: "a list", dict: "an object", type(None): "null"}
    return " or ".join(names[k] for k in (kind if isinstance(kind, tuple) else (kind,)))


def checked(folder, rows: pd.DataFrame, record: dict | None = None) -> dict:
    """`read` (or the `record` it gave), and each of its axes a column of the folder's rows.csv."""
    record = record or read(folder)
    missing = [a for a in record["axes"] if a not in rows.columns]
    if missing:
        raise AxesError(f"{Path(folder) / FILE}: key 'axes': {', '.join(missing)} not a column of rows.csv; "
                        f"valid: {', '.join(rows.columns)}")
    return record


def as_written(rows: pd.DataFrame, record: dict) -> pd.DataFrame:
    """`rows` with the folder's axis columns as axes.json writes their values: a number as its config's text
    (`0.0`, where pandas reads it as a float the report prints `0` and a figure colours on a scale), so each value
    reads the same in axes.json, the report's tables and the legends."""
    return with_words(rows.assign(**{a: rows[a].map(lambda v: v if isinstance(v, str) or v != v else str(v))
                                     for a in record["axes"] if a in rows}), record)


def with_words(rows: pd.DataFrame, record: dict) -> pd.DataFrame:
    """`rows` with a `word` column, each row's sampler's legend word (the record's `words`), which
    `legend.label` shows; the rows as they are where the record has no words or the rows no sampler."""
    words = record.get("words") or {}
    return rows.assign(word=rows["sampler"].map(words)) if words and "sampler" in rows else rows


def axis(record: dict) -> str | None:
    """The axis the folder's figures and report compare: the grid's first, or None without a grid."""
    return record["grid"][0] if record["grid"] else None


def from_rows(rows: pd.DataFrame, spec: str, grid) -> dict:
    """write's arguments for a folder collected before axes.json existed, from its rows.csv alone: the axis
    columns (those that are not schema columns: ablations/store/schema.py), `grid` first, and each run's
    values. `grid` names the spec's grid axes: the rows cannot tell a grid axis from a standard one."""
    found = [c for c in rows.columns if c not in NOT_AXES]
    if not set(grid) <= set(found):
        raise AxesError(f"{spec}: grid {list(grid)!r}: not all columns of rows.csv; valid: {', '.join(found)}")
    axes = [*grid, *(c for c in found if c not in grid)]
    first = rows.drop_duplicates("run_id")
    runs = [{c: _plain(r[c]) for c in ("run_id", "seed", *axes)} for _, r in first.iterrows()]
    return {"spec": spec, "ablation": str(first["ablation"].iloc[0]), "scale": _plain(first["scale"].iloc[0]),
            "grid": list(grid), "axes": axes, "runs": runs, "words": {}}


def _plain(v):
    """A pandas cell as a JSON value: NaN -> None, numpy scalars -> Python's."""
    if isinstance(v, float) and math.isnan(v):
        return None
    return v.item() if hasattr(v, "item") else v
