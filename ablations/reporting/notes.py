"""A folder's notes and checks (findings.json's line tables) as markdown: typed lines with the numbers they
quote taken from the rows (`quantity`), and the lines computed from the rows in full (COMPUTED)."""
import math

import pandas as pd

from ablations.reporting.table import ci95
from ablations.reporting.verdicts import paired, select
from ablations.reporting.wording import pm

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
    """A number a typed line quotes, from the rows (ablations/grid/findings.py): "ratio", the mean over seeds
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
    """A folder's note or checked lines (its findings.json tables) as markdown: a typed line with its
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
