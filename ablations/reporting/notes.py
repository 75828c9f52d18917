"""A question's notes as markdown: what a reader must know beside the verdicts (`[[note]]`) and what was
checked where a finding does not reproduce (`[[checked]]`). They live in one file per question,
results/notes/<question>.toml, beside the folders they describe, not in the spec (which states the question
and its published findings): `read` checks it, `lines` renders it. Each line is a typed markdown `text`
whose `{name}` fields are numbers taken from the rows by its `values` tables (`quantity`: `of = "ratio"`, the
mean of cell a over cell b's, in `format`; `"mean"`, cell a's mean; `"range"`, cell a's lowest and highest
per-seed value, or the metric's where a is empty, floored and ceiled to `step`), with `ad_hoc = true` where it
quotes a trajectory measured outside the suite (shown only while the rows hold one checkpoint); or
`computed`, a line computed from the rows in full (COMPUTED)."""
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from string import Formatter

import pandas as pd

from ablations.reporting.table import ci95
from ablations.reporting.verdicts import paired, select
from ablations.reporting.wording import pm
from ablations.run.tables import cell, choice, known
from ablations.store.schema import METRICS, SETTING

FOLDER = "notes"  # under the results root: notes/<question>.toml
KEYS = ("note", "checked")  # a notes file's top-level keys
LINE_KEYS = {"text", "values", "ad_hoc", "computed"}
QUANTITIES = {"ratio": {"of", "metric", "a", "b", "format"}, "range": {"of", "metric", "a", "step"},
              "mean": {"of", "metric", "a", "format"}}


class NotesError(ValueError):
    """A malformed notes file: names the file, the key, the bad value and the valid choices."""


@dataclass(frozen=True)
class Notes:
    """A question's notes file, checked: its [[note]] and [[checked]] line tables."""
    note: tuple = ()
    checked: tuple = ()


NONE = Notes()  # a question without a notes file


def read(results_root, question: str, axes=()) -> Notes:
    """results_root/notes/<question>.toml, every line checked; its cells name columns of the question's `axes`
    (axes.json's: the grid's and the standard axes), the sampler-setting columns or t (an x0_rms cell's
    timestep). No question or no file: no notes."""
    path = Path(results_root) / FOLDER / f"{question}.toml"
    if not question or not path.is_file():
        return NONE

    def err(key, msg):
        return NotesError(f"{path}: key '{key}': {msg}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise NotesError(f"{path}: not a valid TOML text file: {e}") from None
    known(raw, KEYS, "", err)
    columns = (*dict.fromkeys(axes), *SETTING, "t")
    return Notes(*(tuple(_line(x, f"{key}[{i}]", columns, err) for i, x in enumerate(_list(raw, key, err)))
                   for key in KEYS))


def _list(raw, key, err) -> list:
    tables = raw.get(key, [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise err(key, f"expected [[{key}]] tables, got {tables!r}")
    return tables


def _text(value, key, err) -> str:
    if not isinstance(value, str) or not value.strip():
        raise err(key, f"expected a non-empty string, got {value!r}")
    return value


def _line(x, key, columns, err) -> dict:
    """One [[note]] or [[checked]] table: {"text", "values", "ad_hoc"} or {"computed"}."""
    known(x, LINE_KEYS, f"{key}.", err)
    if ("text" in x) == ("computed" in x):
        raise err(key, "give exactly one of `text` (a markdown line) or `computed` (one of "
                       f"{', '.join(map(repr, COMPUTED))})")
    if "computed" in x:
        if len(x) > 1:
            raise err(key, f"a computed line has no other key, got {sorted(x)}")
        return {"computed": choice(x["computed"], tuple(COMPUTED), f"{key}.computed", err)}
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
    of = choice(q.get("of"), tuple(QUANTITIES), f"{key}.of", err)
    known(q, QUANTITIES[of], f"{key}.", err)
    out = {"of": of, "metric": choice(q.get("metric"), tuple(METRICS), f"{key}.metric", err),
           "a": cell(q.get("a", {}), f"{key}.a", columns, err, empty=of == "range")}
    if of in ("ratio", "mean"):
        out.update(format=_text(q.get("format", ".3g"), f"{key}.format", err))
        if of == "ratio":
            out["b"] = cell(q.get("b"), f"{key}.b", columns, err)
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


DDPM = {"sampler": "ddpm", "spacing": "leading", "clip_x0": True}  # the sampler cells `sampler_identity` reads
DDIM = {"sampler": "ddim", "eta": 0.0, "spacing": "leading", "clip_x0": True}


def _mean_ci(d: pd.Series) -> str:
    return pm(float(d.mean()), ci95(float(d.std()), len(d)))


def sampler_identity(rows: pd.DataFrame) -> list[str]:
    """Checks computed from the sampler's rows (markdown lines): DDIM with η=1 is DDPM with σ² = β̃ (Song et
    al. 2021, Eq. 16), so their cells must match; and DDIM vs DDPM at 10 steps without x0 clipping, the
    protocol of Song et al. (these cells exist when the spec evaluates them)."""
    if "eta" not in rows:
        return []
    lines = []
    for steps in sorted(rows.loc[(rows["sampler"] == "ddim") & (rows["eta"] == 1.0), "steps"].dropna().unique()):
        d = paired(rows, "fid", {**DDIM, "eta": 1.0, "steps": steps}, {**DDPM, "steps": steps})
        if len(d):
            lines.append(f"- **The rows hold an identity.** DDIM with η=1 and DDPM are one process (Song et al. "
                         f"2021, Eq. 16): at {int(steps)} steps their FIDs differ by at most {d.abs().max():.2g} "
                         f"on any of {len(d)} seeds.")
    noclip = {"steps": 10, "clip_x0": False}
    d = paired(rows, "fid", {**DDIM, **noclip}, {**DDPM, **noclip})
    if len(d):
        clipped = paired(rows, "fid", {**DDIM, "steps": 10}, {**DDPM, "steps": 10})
        same = "the same sign" if d.mean() * clipped.mean() > 0 else "the sign changes"
        lines.append(f"- **The clipping convention.** Every other cell clips the predicted x0 to [-1, 1] (Ho et al.); "
                     f"Song et al. do not. Without clipping, DDIM-10 − DDPM-10 FID = {_mean_ci(d)} over {len(d)} "
                     f"seeds (with clipping: {_mean_ci(clipped)}): {same}.")
    return lines


def _cell(sampler, steps, spacing):
    return {"sampler": sampler, "steps": steps, "eta": 0.0, "spacing": spacing, "clip_x0": True}


def heun_note(rows: pd.DataFrame) -> list[str]:
    """Heun at leading spacing, reported as the discretization artifact it is (markdown lines)."""
    fid = rows[(rows["metric"] == "fid") & (rows.get("sampler") == "heun")] if "sampler" in rows else rows.iloc[:0]
    if fid.empty or "spacing" not in fid:
        return []
    steps = sorted(int(s) for s in fid["steps"].dropna().unique())
    leading = [select(rows, "fid", _cell("heun", s, "leading")) for s in steps]
    trailing = [select(rows, "fid", _cell("heun", s, "trailing")) for s in steps]
    if not any(len(x) for x in leading):
        return []
    mean = lambda x: f"{x.mean():.3g}" if len(x) else "-"  # noqa: E731
    nfe = " / ".join(str(2 * s - 1) for s in steps)
    return [f"- **Heun at leading spacing is a discretization artifact, not a verdict on Heun.** Its FID is "
            f"{' / '.join(map(mean, leading))} at {nfe} NFE, against {' / '.join(map(mean, trailing))} with trailing "
            "spacing (means over seeds, the FID table). Leading spacing ends at t = 0, so Heun's last correction "
            "evaluates the network at t = 0 on the Euler step's point, which lies off the data manifold; EDM's "
            "Heun runs on its own σ discretization (Karras et al. 2022, Eq. 5, ρ = 7), which no spacing of these "
            "rows reproduces (a `karras` spacing for heun and dpmpp_2m comes with the rerun). No finding is "
            "decided on Heun here."]


def solver_note(rows: pd.DataFrame) -> list[str]:
    """DPM-Solver++(2M) at 20 vs 10 steps: FID, and the solver error (`solver_rms`) when the rows hold it."""
    a, b = _cell("dpmpp_2m", 20, "leading"), _cell("dpmpp_2m", 10, "leading")
    fid = paired(rows, "fid", a, b)
    if len(fid) < 1:
        return []
    worse = int((fid > 0).sum())
    line = (f"- **DPM-Solver++(2M) at 20 vs 10 steps (leading).** DPM++-20 − DPM++-10 FID = {_mean_ci(fid)}, "
            f"higher on {worse} of {len(fid)} seeds.")
    rms = paired(rows, "solver_rms", a, b)
    if not len(rms):
        return [line + " FID alone cannot tell whether the metric rewards discretization error or the solver "
                "misbehaves at leading spacing; the solver error (`solver_rms`, the RMS distance of each sample from "
                "a 1,000-step DDIM endpoint of the same x_T) decides it and arrives with the rerun."]
    ten = select(rows, "solver_rms", b).mean()
    closer = rms.mean() < 0
    why = ("the solver lands closer to the ODE's endpoint at 20 steps, so the higher FID is the metric rewarding "
           "discretization error, not the solver" if closer and fid.mean() > 0 else
           "the solver does not get closer to the ODE's endpoint with more steps at leading spacing: the solver, "
           "not the metric" if not closer else "the solver error and FID fall together")
    return [line + f" Solver error (RMS from the 1,000-step DDIM endpoint): {ten:.3g} at 10 steps, "
            f"20 − 10 = {_mean_ci(rms)} over {len(rms)} seeds: {why}."]


COMPUTED = {"sampler_identity": sampler_identity, "heun": heun_note, "solver": solver_note}  # rows -> lines


def quantity(rows: pd.DataFrame, q: dict) -> str:
    """A number a typed line quotes, from the rows (`_quantity` checked it): "ratio", the mean over seeds
    of cell a over cell b's, in q's format; "mean", cell a's mean over seeds, likewise; "range", the lowest and
    highest of cell a's per-seed values
    (every value of the metric when a is empty), floored and ceiled to q's step; "-" where the rows lack
    the cells."""
    a = select(rows, q["metric"], q["a"]) if q["a"] else rows.loc[rows["metric"] == q["metric"], "value"].dropna()
    if a.empty:
        return "-"
    if q["of"] == "ratio":
        b = select(rows, q["metric"], q["b"])
        return format(a.mean() / b.mean(), q["format"]) if len(b) else "-"
    if q["of"] == "mean":
        return format(a.mean(), q["format"])
    step = q["step"]
    return f"{math.floor(a.min() / step) * step}-{math.ceil(a.max() / step) * step}"


def lines(rows: pd.DataFrame, tables, curve: bool = False) -> list[str]:
    """A question's note or checked lines (`Notes.note` or `Notes.checked`) as markdown: a typed line with its
    quoted numbers from the rows; a computed line in full; an ad hoc line, marked as one (`AD_HOC`), only
    while `curve` is False (the rows hold one checkpoint)."""
    out = []
    for t in tables:
        if "computed" in t:
            out += COMPUTED[t["computed"]](rows)
        elif not (curve and t.get("ad_hoc")):
            text = t["text"].format(**{k: quantity(rows, q) for k, q in t.get("values", {}).items()})
            bullet = "- " if text.startswith("- ") else ""
            out.append(f"{bullet}{AD_HOC} {text.removeprefix(bullet)}" if t.get("ad_hoc") else text)
    return out


AD_HOC = "*(ad hoc: a probe's numbers, not in these rows)*"
