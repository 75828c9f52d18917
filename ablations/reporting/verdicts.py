"""Verdicts decided by code: each question's published findings, held against our paired differences.

A finding compares two cells of one spec's rows.csv on one metric. The cells are paired by training
seed (the same seed's runs, or the same run for sampler settings), so the difference d = a - b is taken
per seed and tested with Student's t over seeds (ablations/reporting/stats.py):

- "lower" (the paper found a < b): the one-sided paired t test of mean d < 0, shown with d's 95% CI;
- "parity" (the paper found a = b): TOST (Schuirmann 1987) against an absolute margin fixed in the
  finding with its reason: p < 0.05 exactly when d's 90% CI lies inside +-margin;
- "differs" (no published direction, e.g. the norm question): the two-sided paired t test.

Every distinct published finding of the results index (every folder beside this one) is one p-value
of one family, corrected by Holm's step-down procedure (Holm 1979) at alpha = 0.05: a finding agrees
when its adjusted p is below alpha. A question's comparisons without a published direction (the norm
question's) are exploratory: a family of their own, so that they cost the published findings no power. It disagrees when its reverse (a > b; |d| > margin) passes the same
correction over the family of reverses; otherwise it is inconclusive. A finding whose cells hold another
finding's numbers (DDIM eta=1 is DDPM bit for bit) counts once; one seed has no test: "n/a (1 seed)".

Runs scored at several checkpoints (eval rows' train_step) get a verdict at each, corrected within the
checkpoint's family (the findings scored at that train_step; every question's last checkpoint together is
the verdicts' family). A finding is settled from the first checkpoint after which its verdict no longer
changes, unsettled when its last two checkpoints differ (`settled`).
"""
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ablations.store.schema import label
from ablations.reporting import stats
from ablations.reporting.table import at_step, checkpointed, checkpoints, ci95, cost, final, spec_of

ALPHA = 0.05
RULE = ("Verdicts test paired per-seed differences d = a − b (Student's t over seeds). A finding 'a lower "
        "than b' is the one-sided test of mean d < 0 (95% CI shown); a finding of parity is TOST against the "
        "absolute margin the finding states (90% CI shown: p < 0.05 exactly when it lies inside the margin); a "
        "comparison without a published direction is the two-sided test. The p-values of every distinct published "
        "finding of the results index form one family, Holm-adjusted (Holm 1979); a question's comparisons "
        "without a published direction (the norm question's) form a family of their own. A finding **agrees** "
        "when its adjusted "
        "p < 0.05, **disagrees** when its reverse (a > b; |d| > margin) passes the same correction over the "
        "reverses, and is **inconclusive** otherwise. A finding on the same numbers as another (DDIM η=1 is DDPM "
        "bit for bit) counts once; with one seed there is no test: **n/a (1 seed)**. Where runs are scored at several "
        "checkpoints, each checkpoint is decided the same way, with a Holm family per checkpoint: the same "
        "findings at that train_step. Every question's last checkpoint belongs to one family, the verdicts' (the "
        "family above, whatever each question's training length), so the verdict the index reports is corrected "
        "as if each run were scored once, and the earlier checkpoints, which ask how far training must go rather "
        "than which choice wins, cost it no power. A finding is **settled** from the first checkpoint after which "
        "its verdict no longer changes, and **unsettled** when its last two checkpoints differ.")


@dataclass(frozen=True)
class Finding:
    spec: str  # the spec's name (without scale)
    metric: str
    a: dict  # column -> value selecting cell a
    b: dict
    expect: str  # "lower" (a < b), "parity" (|a - b| < margin) or "differs" (no published direction)
    paper: str  # what the paper found, with source and table
    margin: float = 0.0  # parity: the largest |a - b| that still counts as equal, in the metric's units
    why: str = ""  # parity: why that margin
    awaits: str = ""  # why the committed rows may lack the cells: shown instead of a verdict until they hold them


SONG_TABLE1 = {10: (13.36, 41.07), 20: (6.84, 18.36), 50: (4.67, 8.01)}  # CIFAR-10 FID, eta = 0 and eta = 1
FID_MARGIN = 5.0
FID_MARGIN_WHY = ("about the sample-set noise of one model at n = 1,000: the demo model's FIDs move by 0.2 (DDIM-10) "
                  "and 6.9 (DDPM-10) between sample seeds 0 and 1 (README)")
NORM_PAPER = "no published table; group norm is DDPM's choice (Ho et al. 2020, App. B)"
DDPM = {"sampler": "ddpm", "spacing": "leading", "clip_x0": True}  # the sampler cells the findings compare
DDIM = {"sampler": "ddim", "eta": 0.0, "spacing": "leading", "clip_x0": True}
FINDINGS = [
    *[Finding("sampler", "fid", {**DDIM, "steps": s}, {**DDPM, "steps": s}, "lower",
              f"DDIM (η=0) beats DDPM (σ_t² = β̃_t, DDIM's η=1) at {s} steps (Song et al. 2021, Table 1: FID "
              f"{SONG_TABLE1[s][0]} vs {SONG_TABLE1[s][1]} on CIFAR-10)") for s in (10, 20, 50)],
    Finding("demo", "fid", {**DDIM, "steps": 10}, {**DDPM, "steps": 10}, "lower",
            "DDIM (η=0) beats DDPM with σ_t² = β_t at 10 steps (Song et al. 2021, Table 1: FID 13.36 vs 367.43 "
            "for σ̂ on CIFAR-10)"),
    Finding("sampler", "fid", {**DDIM, "steps": 10}, {**DDIM, "eta": 1.0, "steps": 10}, "lower",
            "η=0 beats η=1 at 10 steps (Song et al. 2021, Table 1: 13.36 vs 41.07 on CIFAR-10)"),
    Finding("sampler", "kid", {**DDIM, "steps": 10}, {**DDPM, "steps": 10}, "lower",
            "... the same at 10 steps in KID (unbiased at our n), from the same samples"),
    Finding("loss", "nll_bpd", {"loss": "hybrid"}, {"loss": "simple"}, "lower",
            "L_hybrid with learned-range variance gives lower NLL than L_simple with fixed variance "
            "(Nichol & Dhariwal 2021, Tables 1-2)"),
    Finding("loss", "fid", {"loss": "hybrid", **DDPM, "steps": 100}, {"loss": "simple", **DDPM, "steps": 100},
            "parity", "... at similar FID, sampled ancestrally with each model's own variance (Nichol & Dhariwal "
            "2021, Tables 1-2; 50-100 respaced steps)", margin=FID_MARGIN, why=FID_MARGIN_WHY,
            awaits="the finding reads ancestral DDPM at 100 respaced steps, which uses each model's own variance "
                   "(learned_range for hybrid, fixed_small for simple); the committed rows hold DDIM η=0 only, which "
                   "never reads the learned variance, so they cannot test it"),
    Finding("prediction", "fid", {"prediction": "eps"}, {"prediction": "x0"}, "lower",
            "predicting x0 gives worse samples than predicting eps (Ho et al. 2020, Sec. 3.2, a remark in the text: "
            "worse sample quality early in their experiments; their Table 2 compares eps with μ̃, not x0)"),
    Finding("prediction", "fid", {"prediction": "v"}, {"prediction": "eps"}, "parity",
            "v prediction matches eps (Salimans & Ho 2022)", margin=FID_MARGIN, why=FID_MARGIN_WHY),
    Finding("schedule", "nll_bpd", {"schedule": "cosine"}, {"schedule": "linear"}, "lower",
            "the cosine schedule improves NLL over linear, more so at small resolution "
            "(Nichol & Dhariwal 2021, Sec. 3.2 and Table 2)"),
    *[Finding("norm", metric, {"norm": norm}, {"norm": "group"}, "differs", NORM_PAPER)
      for metric in ("fid", "nll_bpd") for norm in ("batch", "layer", "instance")],
    Finding("weighting", "fid", {"weighting": "min_snr"}, {"weighting": "uniform"}, "lower",
            "min-SNR-5 weighting converges faster than uniform (L_simple): lower FID at the same training step, "
            "so at the early checkpoints (Hang et al. 2023, Fig. 1: FID over training iterations; 3.4x faster "
            "convergence, abstract)"),
]
# Where a finding does not reproduce (disagrees, or is inconclusive): what was checked to tell this
# scale's answer from a bug (spec -> markdown lines), after the lines computed from the rows themselves
# (`per_seed`, `consistency`).
CHECKED = {
    "sampler": (
        "- **The samplers are the papers' and diffusers'.** Our DDPM equals diffusers' `DDPMScheduler` to 1e-4 "
        "on the same noise, with and without x0 clipping; our DDIM (η=0) equals `DDIMScheduler` (leading "
        "spacing) and first-order DPM-Solver++; DDIM with η=1 equals DDPM step by step; with the exact denoiser "
        "of a single data point every sampler lands on it (tests/test_frontier.py, tests/test_samplers.py).",
        "- **At 50 steps the gap is smaller than three seeds resolve, here and on a GPU.** Song et al.'s own gap "
        "shrinks with the step count: η=1 over η=0 is 41.07 / 13.36 at 10 steps, 18.36 / 6.84 at 20 and 8.01 / 4.67 "
        "at 50 (Table 1, CIFAR-10). Here DDPM over DDIM is 1.24 at 10 steps, 1.09 at 20 and 0.92 at 50, with the "
        "50-step difference inside the seeds' spread. The same recipe with 8× the images a step (`batch = 512`, "
        "same 2,200 steps and protocol), trained and evaluated by the suite's runner on one H100 with 5 seeds, "
        "also leaves 50 steps inconclusive (−2.3 ± 2.4) while deciding 10 steps (−19.4 ± 3.8, KID −10.5 ± 3.0) "
        "and 20 steps (−9.9 ± 2.4).",
        "- **The answer is the model's training, not the samplers.** The first cpu recipe (2,200 steps of 64 "
        "images, its grid 3.8 h on an AMD EPYC) left 10 steps inconclusive (DDPM-10 70.4 / 88.2 / 76.8 vs "
        "DDIM-10 74.7 / 75.3 / 76.3) and had DDPM ahead at 20 and 50 steps on every seed. Measured beside that "
        "grid with the suite's `generate` and `fid` on the same x_T: seed 1's checkpoints at 1,000 / 1,500 / "
        "2,000 / 2,200 steps give DDIM-10 − DDPM-10 FID = +7.1 / −4.5 / −8.7 / −12.9, and seed 0 continued to "
        "4,400 steps goes from +4.3 to −2.7. Both samplers improve with training and DDIM faster, so the cpu "
        "scale now trains 3× the images (192 a step, 474 TFLOP): that grid, this report, took 3.19 h on a "
        "2-core Xeon (48-50 min of training at 143-146 img/s and 13-14 min of sampling a seed).",
    ),
    "prediction": (
        "- **The parameterizations are the papers' and diffusers'.** eps, x0 and v each give zero KL at their "
        "true target (tests/test_losses.py); DDIM with the exact denoiser of one data point lands on it whatever "
        "the network predicts (tests/test_samplers.py); DDPM, DDIM, DPM-Solver++(2M) and Heun equal diffusers' "
        "schedulers for `epsilon`, `sample` and `v_prediction` (tests/test_frontier.py).",
        "- **FID and KID disagree at this scale.** At 700 steps of 32 images every FID is 230-260. x0 has the "
        "lower FID on every seed, but in the earlier grid of the same runs (on an AMD EPYC) eps − x0 KID was "
        "−8.0 / +2.0 / −6.1.",
        "- **Training length turns it the paper's way.** Measured beside the grid with the suite's runner: "
        "training seed 0 continued to 2,800 steps (its first 700 bitwise the earlier AMD grid's, resumed from that "
        "grid's checkpoint). eps goes from FID 243.7 to 82.9 (KID 169.0 to 67.1), x0 from 233.0 to 107.6 (KID 177.0 "
        "to 73.9): eps − x0 FID goes from +10.7 to −24.7. One seed; v was not continued.",
        "- **Where each is better.** On 200 test images, the x0 model's estimate of x0 at 700 steps is better "
        "than the eps model's at high noise (RMS error 0.55 vs 0.64 at t = 700, 0.60 vs 0.97 at t = 900), "
        "where an image's global shape is set, and worse at low noise (0.096 vs 0.008 at t = 0, 0.095 vs "
        "0.029 at t = 10).",
        "- **x0's NLL (100-116 bits/dim in these rows, the Bits/dim table) is that low-noise error, not a bug.** "
        "With `fixed_small` variance the steps t < 10 have σ_t of 0.007 to 0.015. Measured by t on the earlier "
        "grid's x0 model (commit eb95f51, 16 equal strata): an x0 error of 0.096 costs 29 bits/dim in the decoder "
        "term and 63 in t = 1-9 (eps model: 1.7 and 1.3); t ≥ 10 add 3.9 (eps: 1.0).",
    ),
}
# The checked lines that quote a trajectory measured outside the suite: shown while a folder's rows hold one
# checkpoint; where they hold the curve, `over_line` gives it from the rows instead.
AD_HOC = tuple(line for lines in CHECKED.values() for line in lines
               if line.startswith(("- **The answer is the model's training", "- **Training length turns it")))
CHECKED_TITLE = "Where it does not reproduce: what was checked"
CHECKED_ANCHOR = "where-it-does-not-reproduce-what-was-checked"  # GitHub's anchor of that heading
NO_PAPER = {"norm": "No published table compares group, batch, layer and instance norm in a DDPM U-Net; "
                    "this suite's is the first. Each norm is tested against group norm, two-sided."}
NOTES = {  # spec -> what a reader must know before reading its verdicts (markdown lines)
    "norm": (
        "- **Instance norm cannot see the timestep in these rows.** The ResBlock adds the time embedding as a "
        "per-channel constant right before its second norm, and instance norm subtracts each channel's spatial "
        "mean, so IN(h + emb) = IN(h). Measured on `core.unet.UNet` (width 16, eval mode; issue 24): the output "
        "for t = 10 and t = 900 differs by 1.4e-6 with instance norm, against 0.25 with group or layer norm. The "
        "instance row is a model that does not know the noise level.",
        "- **Batch norm's EMA model runs with the live model's statistics.** The EMA copies the live model's "
        "BatchNorm buffers (`ablations/running/training.py`): weights averaged over about the last 200 steps (decay "
        "0.995) with running statistics of roughly the last 10 (momentum 0.1). The batch row's FID and NLL "
        "carry that mismatch.",
    ),
}


def _select(rows: pd.DataFrame, metric: str, cell: dict) -> pd.Series:
    """Per-seed values of one cell (seed -> value). The FID-like settings are taken at the spec's first
    sampler setting when the cell does not name one, at the first extractor when the rows hold two, and at
    the lowest sample seed when they hold two."""
    d = rows[(rows["metric"] == metric) & rows["value"].notna()]
    for col, value in cell.items():
        if col in d:
            d = d[d[col].astype(str) == str(value)] if isinstance(value, (str, bool)) else d[d[col] == value]
        elif col not in ("eta", "spacing", "clip_x0"):  # a column the rows lack (old rows: these 3): no such cell
            d = d.iloc[:0]
    if "extractor" in d and d["extractor"].nunique() > 1:
        d = d[d["extractor"] == d["extractor"].iloc[0]]
    if "sample_seed" in d and d["sample_seed"].nunique() > 1:  # a second sample set is the noise check's
        d = d[d["sample_seed"] == d["sample_seed"].min()]
    if metric in ("fid", "kid") and "sampler" not in cell and not d.empty:
        first = d.iloc[0]
        d = d[(d["sampler"] == first["sampler"]) & (d["steps"] == first["steps"]) & (d["eta"] == first["eta"])]
    return d.groupby("seed")["value"].mean()


def describe_cell(rows: pd.DataFrame, metric: str, cell: dict) -> str:
    d = rows[(rows["metric"] == metric)]
    parts = [f"{k}={v}" for k, v in cell.items() if k not in ("sampler", "steps", "eta", "spacing", "clip_x0")]
    if "sampler" in cell:
        parts.insert(0, label(cell["sampler"], cell.get("steps"), cell.get("eta"), cell.get("clip_x0", True),
                              cell.get("spacing")))
    elif metric in ("fid", "kid") and not d.empty:
        first = d.iloc[0]
        parts.append(label(first["sampler"], first["steps"], first["eta"], first.get("clip_x0", True),
                           first.get("spacing", "leading")))
    return ", ".join(parts)


def _pair(rows, metric, a: dict, b: dict) -> tuple[pd.Series, pd.Series]:
    """Per-seed values of cells a and b, on the seeds both have."""
    a, b = _select(rows, metric, a), _select(rows, metric, b)
    seeds = sorted(set(a.index) & set(b.index))
    return a[seeds], b[seeds]


def _paired(rows, metric, a: dict, b: dict) -> pd.Series:
    """Per-seed a - b on the seeds both cells have."""
    a, b = _pair(rows, metric, a, b)
    return a - b


TESTS = {  # expect -> (p of the claim, p of its reverse or None, the CI level shown)
    "lower": (lambda d, margin: stats.p_lower(d), lambda d, margin: stats.p_higher(d), 0.95),
    "parity": (stats.p_tost, stats.p_outside, 0.90),
    "differs": (lambda d, margin: stats.p_two_sided(d), None, 0.95),
}
NAN = float("nan")


def measure(rows: pd.DataFrame, f: Finding, folder: str = "") -> dict | None:
    """A finding's numbers in one table, before the family's correction; None when the rows lack its cells
    and nothing awaits them."""
    a, b = _pair(rows, f.metric, f.a, f.b)
    if a.empty and not f.awaits:
        return None
    d = a - b
    claim, reverse, level = TESTS[f.expect]
    v = {"finding": f, "folder": folder, "a": describe_cell(rows, f.metric, f.a),
         "b": describe_cell(rows, f.metric, f.b), "per_seed": d, "seeds": len(d), "level": level,
         "a_mean": float(a.mean()) if len(a) else NAN, "a_ci": ci95(float(a.std()), len(a)),
         "b_mean": float(b.mean()) if len(b) else NAN, "b_ci": ci95(float(b.std()), len(b)),
         "diff": float(d.mean()) if len(d) else NAN, "diff_ci": NAN,
         "p": NAN, "p_holm": NAN, "p_reverse": None, "p_reverse_holm": None, "same_as": None, "family": 0,
         "key": (folder, f.metric, tuple(a.round(9).items()), tuple(b.round(9).items()))}
    if len(d) >= 2:
        values = [float(x) for x in d]
        v.update(diff_ci=stats.ci(values, level), p=claim(values, f.margin),
                 p_reverse=reverse(values, f.margin) if reverse else None)
    return v


def decide(v: dict) -> str:
    """The verdict from a measured finding's Holm-adjusted p-values."""
    if v["seeds"] == 0:
        return "awaits the rerun"
    if v["seeds"] < 2:
        return f"n/a ({v['seeds']} seed)"
    if v["finding"].expect == "differs":
        return ("lower than b" if v["diff"] < 0 else "higher than b") if v["p_holm"] < ALPHA else "inconclusive"
    if v["p_holm"] < ALPHA:
        return "agrees"
    return "disagrees" if v["p_reverse_holm"] is not None and v["p_reverse_holm"] < ALPHA else "inconclusive"


def assess(tables: list[tuple[str, str, pd.DataFrame]]) -> list[dict]:
    """Every finding of every table (folder, spec, rows) at each checkpoint the rows scored, with raw and
    Holm-adjusted p-values over its family (`family` is its size, `checkpoint` its name) and its verdict.
    Each entry has `train_step`, `last` (the folder's last checkpoint: the verdict) and `train_images`
    (mean over the runs, NaN where unknown). Holm's family is one checkpoint: the distinct findings with
    two seeds or more that the index scores at the same train_step; every question's last checkpoint
    together is one (the verdicts' family, whatever each question's training length)."""
    found = []
    for folder, spec, rows in tables:
        rows = checkpointed(rows)
        steps = checkpoints(rows)
        images = cost(rows).groupby("train_step")["train_images"].mean()
        for i, step in enumerate(steps):
            at, last = at_step(rows, step), i == len(steps) - 1
            for f in FINDINGS:
                v = measure(at, f, folder) if f.spec == spec else None
                if v is not None and (last or v["seeds"]):  # a cell scored only at the end: no earlier verdict
                    v.update(train_step=step, last=last, train_images=images.get(step, NAN),
                             checkpoint="last" if last else step, key=("last" if last else step, *v["key"]))
                    found.append(v)
    first = {}
    for v in found:
        if v["seeds"] >= 2:
            original = first.setdefault(v["key"], v)
            v["same_as"] = None if original is v else original
    tested = [v for v in found if v["seeds"] >= 2 and v["same_as"] is None]
    size = {}
    for name in dict.fromkeys(_family(v) for v in tested):
        members = [v for v in tested if _family(v) == name]
        size[name] = len(members)
        for v, p in zip(members, stats.holm([v["p"] for v in members])):
            v["p_holm"] = p
        reversible = [v for v in members if v["p_reverse"] is not None]
        for v, p in zip(reversible, stats.holm([v["p_reverse"] for v in reversible])):
            v["p_reverse_holm"] = p
    for v in found:
        if v["same_as"] is not None:
            v.update(p_holm=v["same_as"]["p_holm"], p_reverse_holm=v["same_as"]["p_reverse_holm"])
        v.update(family=size.get(_family(v), 0), verdict=decide(v))
    return found


def _family(v: dict) -> tuple:
    return family_of(v["finding"]), v["checkpoint"]


def last(found: list[dict]) -> list[dict]:
    """The verdicts: each finding at its folder's last checkpoint."""
    return [v for v in found if v["last"]]


def trajectories(found: list[dict]) -> list[list[dict]]:
    """Each finding's entries over its checkpoints (ascending), one list per finding, in `last` order."""
    by = {}
    for v in found:
        by.setdefault((v["folder"], id(v["finding"])), []).append(v)
    return [sorted(by[(v["folder"], id(v["finding"]))], key=lambda x: x["train_step"]) for v in last(found)]


def settled(curve: list[dict]) -> tuple[str, float]:
    """("one checkpoint", its step); ("unsettled", nan) when the last two checkpoints' verdicts differ; else
    ("settled", the first checkpoint after which the verdict no longer changes)."""
    said = [v["verdict"] for v in curve]
    if len(said) == 1:
        return "one checkpoint", curve[0]["train_step"]
    if said[-1] != said[-2]:
        return "unsettled", NAN
    k = len(said) - 1
    while k > 0 and said[k - 1] == said[-1]:
        k -= 1
    return "settled", curve[k]["train_step"]


def step_text(step) -> str:
    return "-" if step != step else f"{int(step):,}"


def trajectory_text(curve: list[dict]) -> str:
    """The verdicts over training in words, e.g. "inconclusive at 350-700, agrees from 1,400"; the final
    run of one verdict reads "from" when the finding is settled."""
    state, _ = settled(curve)
    if state == "one checkpoint":
        step = curve[0]["train_step"]
        return "one checkpoint" + (f" ({step_text(step)} steps)" if step == step else "")
    runs = []
    for v in curve:
        if runs and runs[-1][0] == v["verdict"]:
            runs[-1][2] = v["train_step"]
        else:
            runs.append([v["verdict"], v["train_step"], v["train_step"]])
    words = []
    for i, (said, lo, hi) in enumerate(runs):
        if i == len(runs) - 1 and state == "settled":
            words.append(f"{said} from {step_text(lo)}")
        else:
            words.append(f"{said} at {step_text(lo)}" + (f"-{step_text(hi)}" if hi != lo else ""))
    return ", ".join(words)


def settled_text(curve: list[dict]) -> str:
    state, step = settled(curve)
    return (f"settled from {step_text(step)} steps" if state == "settled" else
            "unsettled: the last two checkpoints differ" if state == "unsettled" else "one checkpoint")


def family_of(f: Finding) -> str:
    """The family a finding's p-value is corrected in: every published finding of the index together; a
    question's comparisons without a published direction (the norm question's) apart, as exploratory."""
    return "published" if f.expect != "differs" else f.spec


def tables(results_root) -> list[tuple[str, str, pd.DataFrame]]:
    """(folder name, spec, rows) of every results folder under results_root: the family the index corrects."""
    return [(p.parent.name, spec_of(rows), rows)
            for p in sorted(Path(results_root).glob("*/rows.csv")) if not (rows := pd.read_csv(p)).empty]


def verdicts(rows: pd.DataFrame, spec: str, folder: str = "", family: list[dict] | None = None) -> list[dict]:
    """The findings of `spec` in `rows`, Holm-adjusted over `family` (assess's answer for the whole index,
    which holds this folder's) or, without one, over these findings alone."""
    if family is None:
        family = assess([(folder, spec, rows)])
    return [v for v in last(family) if v["folder"] == folder]


def consistency(rows: pd.DataFrame, spec: str) -> list[str]:
    """Checks computed from a spec's rows (markdown lines). For the sampler: DDIM with η=1 is DDPM with
    σ² = β̃ (Song et al. 2021, Eq. 16), so their cells must match; and DDIM vs DDPM at 10 steps without
    x0 clipping, the protocol of Song et al. (these cells exist when the spec evaluates them)."""
    if spec != "sampler" or "eta" not in rows:
        return []
    lines = []
    for steps in sorted(rows.loc[(rows["sampler"] == "ddim") & (rows["eta"] == 1.0), "steps"].dropna().unique()):
        d = _paired(rows, "fid", {**DDIM, "eta": 1.0, "steps": steps}, {**DDPM, "steps": steps})
        if len(d):
            lines.append(f"- **The rows hold an identity.** DDIM with η=1 and DDPM are one process (Song et al. "
                         f"2021, Eq. 16): at {int(steps)} steps their FIDs differ by at most {d.abs().max():.2g} "
                         f"on any of {len(d)} seeds.")
    noclip = {"steps": 10, "clip_x0": False}
    d = _paired(rows, "fid", {**DDIM, **noclip}, {**DDPM, **noclip})
    if len(d):
        clipped = _paired(rows, "fid", {**DDIM, "steps": 10}, {**DDPM, "steps": 10})
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
    leading = [_select(rows, "fid", _cell("heun", s, "leading")) for s in steps]
    trailing = [_select(rows, "fid", _cell("heun", s, "trailing")) for s in steps]
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
    fid = _paired(rows, "fid", a, b)
    if len(fid) < 1:
        return []
    worse = int((fid > 0).sum())
    line = (f"- **DPM-Solver++(2M) at 20 vs 10 steps (leading).** DPM++-20 − DPM++-10 FID = {_mean_ci(fid)}, "
            f"higher on {worse} of {len(fid)} seeds.")
    rms = _paired(rows, "solver_rms", a, b)
    if not len(rms):
        return [line + " FID alone cannot tell whether the metric rewards discretization error or the solver "
                "misbehaves at leading spacing; the solver error (`solver_rms`, the RMS distance of each sample from "
                "a 1,000-step DDIM endpoint of the same x_T) decides it and arrives with the rerun."]
    ten = _select(rows, "solver_rms", b).mean()
    closer = rms.mean() < 0
    why = ("the solver lands closer to the ODE's endpoint at 20 steps, so the higher FID is the metric rewarding "
           "discretization error, not the solver" if closer and fid.mean() > 0 else
           "the solver does not get closer to the ODE's endpoint with more steps at leading spacing: the solver, "
           "not the metric" if not closer else "the solver error and FID fall together")
    return [line + f" Solver error (RMS from the 1,000-step DDIM endpoint): {ten:.3g} at 10 steps, "
            f"20 − 10 = {_mean_ci(rms)} over {len(rms)} seeds: {why}."]


def notes(rows: pd.DataFrame, spec: str) -> list[str]:
    """What a reader must know beside the verdicts (markdown lines)."""
    return [*NOTES.get(spec, ()), *(heun_note(rows) + solver_note(rows) if spec == "sampler" else [])]


def _mean_ci(d: pd.Series) -> str:
    return pm(float(d.mean()), ci95(float(d.std()), len(d)))


def pm(mean, ci):
    if mean != mean:  # a cell the rows do not hold
        return "-"
    return f"{mean:.4g}" + (f" ± {ci:.2g}" if ci == ci else "")


def p_text(p) -> str:
    """A p-value as the tables print it."""
    return "-" if p is None or p != p else f"{p:.2g}"


def diff_text(v: dict) -> str:
    """a − b with its CI and the CI's level."""
    if v["seeds"] == 0:
        return "-"
    return pm(v["diff"], v["diff_ci"]) + (f" ({v['level']:.0%} CI)" if v["diff_ci"] == v["diff_ci"] else "")


def paper_text(f: Finding) -> str:
    return f.paper + (f"; parity margin ±{f.margin:g} {f.metric.upper() if f.metric == 'fid' else f.metric}: "
                      f"{f.why}" if f.expect == "parity" else "")


def verdict_text(v: dict) -> str:
    """The verdict in bold, with why it awaits the rerun or which finding it repeats."""
    text = f"**{v['verdict']}**"
    if v["verdict"] == "awaits the rerun":
        text += f": {v['finding'].awaits}"
    if v["same_as"] is not None:
        text += f" (the same numbers as {v['same_as']['a']} vs {v['same_as']['b']}: counted once)"
    return text


def section(rows: pd.DataFrame, spec: str, found: list[dict] | None = None,
            curves: list[dict] | None = None) -> list[str]:
    """The report's verdict section (markdown lines); `found` is this folder's share of the index's family
    (its last checkpoint), `curves` its share at every checkpoint (assess's entries)."""
    lines = ["## Verdict", "", RULE, ""]
    lines += [NO_PAPER[spec], ""] if spec in NO_PAPER else []
    found = verdicts(rows, spec) if found is None else found
    rows = final(rows)  # the notes and checks read the last checkpoint, as the verdicts do
    if not found:
        return lines + ([] if spec in NO_PAPER else ["No published finding is compared by this spec's cells.", ""])
    lines += [*family_lines(found), "",
              "| metric | a | b | paper | a (mean ± CI) | b (mean ± CI) | a − b | seeds | p | p (Holm) | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in found:
        f = v["finding"]
        lines.append(f"| {f.metric} | {v['a']} | {v['b']} | {paper_text(f)} | {pm(v['a_mean'], v['a_ci'])} | "
                     f"{pm(v['b_mean'], v['b_ci'])} | {diff_text(v)} | {v['seeds']} | {p_text(v['p'])} | "
                     f"{p_text(v['p_holm'])} | {verdict_text(v)} |")
    lines.append("")
    extra = notes(rows, spec)
    lines += ["### Notes", "", *extra, ""] if extra else []
    off = [v for v in found if checked(v)]
    if off:
        over = [c for c in trajectories(curves or []) if checked(c[-1])]
        typed = [line for line in CHECKED.get(spec, ()) if not any(len(c) > 1 for c in over) or line not in AD_HOC]
        lines += [f"### {CHECKED_TITLE}", "", *map(per_seed, off), *(over_line(c) for c in over if len(c) > 1),
                  *consistency(rows, spec), *typed, ""]
    return lines


def over_training(found: list[dict]) -> list[str]:
    """The report's verdicts at every checkpoint (markdown lines), from one folder's share of `assess`: a
    row per finding, a column per checkpoint with a − b, its CI and the verdict; nothing for one checkpoint."""
    curves = trajectories(found)
    steps = sorted({v["train_step"] for c in curves for v in c if v["train_step"] == v["train_step"]})
    if len(steps) < 2:
        return []
    lines = ["### Verdicts over training", "",
             "Each finding at every checkpoint scored (columns: training step): a − b with its CI, the verdict and "
             "the Holm-adjusted p within the checkpoint's family.", "",
             "| metric | a | b | " + " | ".join(step_text(s) for s in steps) + " | over training | settled |",
             "|---|---|---|" + "---|" * len(steps) + "---|---|"]
    for c in curves:
        at = {v["train_step"]: v for v in c}
        cells = [f"{diff_text(at[s])}: {at[s]['verdict']} (p {p_text(at[s]['p_holm'])})" if s in at else "-"
                 for s in steps]
        lines.append(f"| {c[-1]['finding'].metric} | {c[-1]['a']} | {c[-1]['b']} | " + " | ".join(cells) +
                     f" | {trajectory_text(c)} | {settled_text(c)} |")
    return lines + [""]


def family_lines(found: list[dict]) -> list[str]:
    """Which family each of these verdicts was corrected in, and its size."""
    out = []
    for name in dict.fromkeys(family_of(v["finding"]) for v in found):
        m = next(v["family"] for v in found if family_of(v["finding"]) == name)
        what = ("distinct published finding{s} with two seeds or more in the results index (results/README.md)"
                if name == "published" else f"comparison{{s}} of the {name} question without a published direction")
        out.append(f"Holm's family: the {m} {what.format(s='s' if m != 1 else '')}.")
    return out


def checked(v: dict) -> bool:
    """Whether a verdict gets the "what was checked" section: a published finding that did not reproduce,
    on seeds enough for a test."""
    return v["verdict"] in ("disagrees", "inconclusive") and v["finding"].expect != "differs" and v["seeds"] > 1


def over_line(curve: list[dict]) -> str:
    """A finding's paired difference at each checkpoint, from the rows (markdown line)."""
    v = curve[-1]
    at = "; ".join(f"{pm(x['diff'], x['diff_ci'])} at {step_text(x['train_step'])} ({x['seeds']} seeds)" for x in curve)
    return (f"- **{v['finding'].metric}: {v['a']} − {v['b']} over training** ({v['level']:.0%} CI): {at}. "
            f"Verdict: {trajectory_text(curve)}; {settled_text(curve)}.")


def per_seed(v: dict) -> str:
    """The paired differences behind a verdict, one per training seed."""
    d = ", ".join(f"seed {int(s)}: {x:+.3g}" for s, x in v["per_seed"].items())
    holm = (f" Raw p = {p_text(v['p'])} < {ALPHA}: it passes alone and drops out under Holm's correction "
            f"(adjusted p = {p_text(v['p_holm'])})." if v["p"] < ALPHA <= v["p_holm"] else "")
    return f"- **{v['finding'].metric}: {v['a']} − {v['b']}** ({v['verdict']}), per training seed: {d}.{holm}"
