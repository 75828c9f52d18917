"""A spec's published findings, as data: parsed and checked here, written by `ablate collect` into the results
folder (findings.json), read there by the verdicts (ablations/reporting/verdicts.py).

Top-level keys of a spec:

- `[[finding]]`: one published finding. `metric` (a row metric), `a` and `b` (the cells compared: tables of
  column = value over the spec's axis and sampler-setting columns), `expect` ("lower": a < b, "higher": a > b,
  "parity": |a - b| < `margin` with its reason `why`, "differs": no published direction, tested two-sided),
  `source` (the paper) and `table` (its table or figure), `paper` (what the report shows the paper found),
  optional `awaits` (why the committed rows may lack the cells) and `untested` (the part of the paper's claim
  the cells do not test, e.g. "more so at small resolution" on a grid of one resolution: printed beside the
  verdict, so that an agreement is read as one with the tested part only).
- `no_paper`: what a reader must know when no published table compares the spec's cells.

A spec states its question and what the papers found; what a reader must know beside the verdicts and what
was checked where a finding does not reproduce are the question's notes, results/notes/<question>.toml
(ablations/reporting/notes.py), which a spec refuses as unknown keys.

Pure: no torch, no files. Errors come from the spec's error factory (file, key, value, valid choices).
"""
from ablations.run.tables import cell, choice, known
from ablations.store.schema import METRICS, SETTING

KEYS = ("finding", "no_paper")  # the spec's top-level keys read here
FINDING_KEYS = {"metric", "a", "b", "expect", "margin", "why", "source", "table", "paper", "awaits", "untested"}
NEEDS = ("metric", "a", "b", "expect", "source", "paper")
EXPECTS = ("lower", "higher", "parity", "differs")
FILE = "findings.json"  # in the results folder


def parse(raw: dict, err, axes=()) -> dict:
    """The findings of a spec's table `raw` (`axes`, its grid's then the standard axes, name cell columns) as the
    JSON object collect writes: {"spec": its name, "findings": [...], "no_paper": str}."""
    columns = (*dict.fromkeys(axes), *SETTING, "t")  # t: an x0_rms cell's timestep
    found = [_finding(f, f"finding[{i}]", columns, err) for i, f in enumerate(_list(raw, "finding", err))]
    _names_every_axis(found, raw.get("grid", {}), err)
    no_paper = raw.get("no_paper", "")
    _text(no_paper, "no_paper", err, empty=True)
    return {"spec": raw.get("name"), "findings": found, "no_paper": no_paper}


def _list(raw, key, err) -> list:
    tables = raw.get(key, [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise err(key, f"expected [[{key}]] tables, got {tables!r}")
    return tables


def _text(value, key, err, empty=False) -> str:
    if not isinstance(value, str) or not (empty or value.strip()):
        raise err(key, f"expected {'a' if empty else 'a non-empty'} string, got {value!r}")
    return value


def _names_every_axis(found, grid, err):
    """Each finding's cells name every axis the grid varies: a cell that leaves one out would pool its values
    (a t-blind model's rows with a t-aware one's), so the spec is refused instead."""
    varied = [a for a, values in grid.items() if isinstance(values, list) and len(values) > 1]
    for i, f in enumerate(found):
        for side in ("a", "b"):
            for axis in varied:
                if axis not in f[side]:
                    raise err(f"finding[{i}].{side}", f"does not name grid axis {axis!r} (values {grid[axis]!r}): "
                                                      "its verdict would pool them; name one")


def _finding(f, key, columns, err) -> dict:
    """One [[finding]] table, checked: {metric, a, b, expect, margin, why, source, table, paper, awaits,
    untested}."""
    known(f, FINDING_KEYS, f"{key}.", err)
    for k in NEEDS:
        if k not in f:
            raise err(f"{key}.{k}", f"missing; a finding needs {', '.join(NEEDS)}")
    expect = choice(f["expect"], EXPECTS, f"{key}.expect", err)
    margin = f.get("margin", 0.0)
    if expect == "parity":
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin <= 0:
            raise err(f"{key}.margin", f"a parity finding needs a margin > 0 in the metric's units, got {margin!r}")
        _text(f.get("why"), f"{key}.why", err)
    elif "margin" in f or "why" in f:
        raise err(f"{key}.margin" if "margin" in f else f"{key}.why",
                  f"only a parity finding has a margin; expect is {expect!r}")
    return {"metric": choice(f["metric"], tuple(METRICS), f"{key}.metric", err),
            "a": cell(f["a"], f"{key}.a", columns, err), "b": cell(f["b"], f"{key}.b", columns, err),
            "expect": expect, "margin": float(margin), "why": f.get("why", ""),
            "source": _text(f["source"], f"{key}.source", err),
            "table": _text(f.get("table", ""), f"{key}.table", err, empty=True),
            "paper": _text(f["paper"], f"{key}.paper", err),
            "awaits": _text(f.get("awaits", ""), f"{key}.awaits", err, empty=True),
            "untested": _text(f.get("untested", ""), f"{key}.untested", err, empty=True)}
