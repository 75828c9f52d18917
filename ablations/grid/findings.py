"""A spec's published findings and its notes, as data: parsed and checked here, written by `ablate collect`
into the results folder (findings.json), read there by the verdicts (ablations/reporting/verdicts.py).

Top-level keys of a spec:

- `[[finding]]`: one published finding. `metric` (a row metric), `a` and `b` (the cells compared: tables of
  column = value over the spec's axis and sampler-setting columns), `expect` ("lower": a < b, "higher": a > b,
  "parity": |a - b| < `margin` with its reason `why`, "differs": no published direction, tested two-sided),
  `source` (the paper) and `table` (its table or figure), `paper` (what the report shows the paper found),
  optional `awaits` (why the committed rows may lack the cells).
- `no_paper`: what a reader must know when no published table compares the spec's cells.
- `[[note]]`: what a reader must know beside the verdicts; `[[checked]]`: what was checked where a finding
  does not reproduce. Each is a markdown line, `text`, whose `{name}` fields are computed from the rows by
  its `values` tables (`of = "ratio"`: the mean of cell a over cell b's, in `format`; `of = "range"`: cell
  a's lowest and highest per-seed value, or the metric's where a is empty, floored and ceiled to `step`), with `ad_hoc = true` where it quotes a
  trajectory measured outside the suite (shown only while the rows hold one checkpoint); or `computed`, a
  line computed from the rows in full (COMPUTED, ablations/reporting/notes.py).

Pure: no torch, no files. Errors come from the spec's error factory (file, key, value, valid choices).
"""
from string import Formatter

from ablations.grid.checks import known
from ablations.store.schema import AXES, METRICS, SETTING

KEYS = ("finding", "no_paper", "note", "checked")  # the spec's top-level keys read here
FINDING_KEYS = {"metric", "a", "b", "expect", "margin", "why", "source", "table", "paper", "awaits"}
NEEDS = ("metric", "a", "b", "expect", "source", "paper")
EXPECTS = ("lower", "higher", "parity", "differs")
LINE_KEYS = {"text", "values", "ad_hoc", "computed"}
QUANTITIES = {"ratio": {"of", "metric", "a", "b", "format"}, "range": {"of", "metric", "a", "step"},
              "mean": {"of", "metric", "a", "format"}}
COMPUTED = ("sampler_identity", "heun", "solver")  # lines ablations/reporting/notes.py computes in full
FILE = "findings.json"  # in the results folder


def parse(raw: dict, err, axes=()) -> dict:
    """The findings and notes of a spec's table `raw` (its grid `axes` name cell columns) as the JSON object
    collect writes: {"spec": its name, "findings": [...], "no_paper": str, "note": [...], "checked": [...]}."""
    columns = (*dict.fromkeys((*axes, *AXES)), *SETTING, "t")  # t: an x0_rms cell's timestep
    found = [_finding(f, f"finding[{i}]", columns, err) for i, f in enumerate(_list(raw, "finding", err))]
    _names_every_axis(found, raw.get("grid", {}), err)
    no_paper = raw.get("no_paper", "")
    _text(no_paper, "no_paper", err, empty=True)
    return {"spec": raw.get("name"), "findings": found, "no_paper": no_paper,
            "note": [_line(x, f"note[{i}]", columns, err) for i, x in enumerate(_list(raw, "note", err))],
            "checked": [_line(x, f"checked[{i}]", columns, err) for i, x in enumerate(_list(raw, "checked", err))]}


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


def _choice(value, choices, key, err):
    if value not in choices:
        raise err(key, f"{value!r} is not one of the valid choices: {', '.join(map(repr, choices))}")
    return value


def _cell(cell, key, columns, err, empty=False) -> dict:
    if not isinstance(cell, dict) or not (cell or empty):
        raise err(key, f"expected a table of column = value, got {cell!r}")
    for col, value in cell.items():
        _choice(col, columns, f"{key}.{col}", err)
        if isinstance(value, (dict, list)):
            raise err(f"{key}.{col}", f"expected one value, got {value!r}")
    return dict(cell)


def _finding(f, key, columns, err) -> dict:
    """One [[finding]] table, checked: {metric, a, b, expect, margin, why, source, table, paper, awaits}."""
    known(f, FINDING_KEYS, f"{key}.", err)
    for k in NEEDS:
        if k not in f:
            raise err(f"{key}.{k}", f"missing; a finding needs {', '.join(NEEDS)}")
    expect = _choice(f["expect"], EXPECTS, f"{key}.expect", err)
    margin = f.get("margin", 0.0)
    if expect == "parity":
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin <= 0:
            raise err(f"{key}.margin", f"a parity finding needs a margin > 0 in the metric's units, got {margin!r}")
        _text(f.get("why"), f"{key}.why", err)
    elif "margin" in f or "why" in f:
        raise err(f"{key}.margin" if "margin" in f else f"{key}.why",
                  f"only a parity finding has a margin; expect is {expect!r}")
    return {"metric": _choice(f["metric"], tuple(METRICS), f"{key}.metric", err),
            "a": _cell(f["a"], f"{key}.a", columns, err), "b": _cell(f["b"], f"{key}.b", columns, err),
            "expect": expect, "margin": float(margin), "why": f.get("why", ""),
            "source": _text(f["source"], f"{key}.source", err),
            "table": _text(f.get("table", ""), f"{key}.table", err, empty=True),
            "paper": _text(f["paper"], f"{key}.paper", err),
            "awaits": _text(f.get("awaits", ""), f"{key}.awaits", err, empty=True)}


def _line(x, key, columns, err) -> dict:
    """One [[note]] or [[checked]] table: {"text", "values", "ad_hoc"} or {"computed"}."""
    known(x, LINE_KEYS, f"{key}.", err)
    if ("text" in x) == ("computed" in x):
        raise err(key, "give exactly one of `text` (a markdown line) or `computed` (one of "
                       f"{', '.join(map(repr, COMPUTED))})")
    if "computed" in x:
        if len(x) > 1:
            raise err(key, f"a computed line has no other key, got {sorted(x)}")
        return {"computed": _choice(x["computed"], COMPUTED, f"{key}.computed", err)}
    text, values = _text(x["text"], f"{key}.text", err), x.get("values", {})
    if not isinstance(values, dict):
        raise err(f"{key}.values", f"expected a table of name = {{of = ...}}, got {values!r}")
    fields = {name for _, name, _, _ in Formatter().parse(text) if name is not None}
    if fields != set(values):
        raise err(f"{key}.text", f"its fields {sorted(fields)} must be the names of its values {sorted(values)}")
    if not isinstance(x.get("ad_hoc", False), bool):
        raise err(f"{key}.ad_hoc", f"expected true or false, got {x['ad_hoc']!r}")
    return {"text": text, "ad_hoc": x.get("ad_hoc", False),
            "values": {n: _quantity(q, f"{key}.values.{n}", columns, err) for n, q in values.items()}}


def _quantity(q, key, columns, err) -> dict:
    """A number a line quotes, computed from the rows: a ratio of two cells' means, a cell's mean, or its range."""
    if not isinstance(q, dict):
        raise err(key, f"expected a table with `of`, got {q!r}")
    of = _choice(q.get("of"), tuple(QUANTITIES), f"{key}.of", err)
    known(q, QUANTITIES[of], f"{key}.", err)
    out = {"of": of, "metric": _choice(q.get("metric"), tuple(METRICS), f"{key}.metric", err),
           "a": _cell(q.get("a", {}), f"{key}.a", columns, err, empty=of == "range")}
    if of in ("ratio", "mean"):
        out.update(format=_text(q.get("format", ".3g"), f"{key}.format", err))
        if of == "ratio":
            out["b"] = _cell(q.get("b"), f"{key}.b", columns, err)
        try:
            format(1.0, out["format"])
        except ValueError:
            raise err(f"{key}.format", f"{out['format']!r} is not a number format; valid: e.g. '.2f', '.3g'") from None
    else:
        step = q.get("step", 1)
        if type(step) is not int or step < 1:
            raise err(f"{key}.step", f"expected an integer >= 1, got {step!r}")
        out["step"] = step
    return out
