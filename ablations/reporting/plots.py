"""Figures from rows.csv alone (this module never imports torch or model code): PNG and PDF.

Every legend names a sampler setting with `ablations.reporting.legend.label`, e.g. "DDIM η=0 · 10 steps".
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, ScalarFormatter  # noqa: E402

from ablations.store.io import atomic_write  # noqa: E402
from ablations.store.layout import sample_grid_name  # noqa: E402
from ablations.reporting.legend import OWN_SCALE, label  # noqa: E402
from ablations.store.schema import DENOISING  # noqa: E402
from ablations.reporting.table import checkpointed, checkpoints, ci95, cost  # noqa: E402

def with_labels(rows: pd.DataFrame) -> pd.DataFrame:
    """Adds `setting` (the sampler setting without steps) and `setting_steps` (with steps), each sampler by its
    `word` (axes.json's, `axes.with_words`) where the rows carry one."""
    d = rows.assign(**{c: rows[c] if c in rows else default for c, default in (("clip_x0", True),
                                                                                ("spacing", "leading"), ("word", None))})
    cols = list(zip(d["sampler"], d["steps"], d["eta"], d["clip_x0"], d["spacing"], d["word"]))
    return d.assign(setting=[label(s, None, e, c, sp, w) for s, _, e, c, sp, w in cols],
                    setting_steps=[label(*c) for c in cols])


def t_band(values) -> tuple[float, float]:
    """Every figure's error band: mean ± the 95% Student's t half-width over seeds, as in the tables
    (seaborn's ("ci", 95) bootstraps, and draws a different band on each redraw)."""
    v = pd.Series(values, dtype=float)
    half = ci95(float(v.std()), len(v))
    half = half if half == half else 0.0
    return v.mean() - half, v.mean() + half


def save_figure(fig, out_dir, name) -> list[Path]:
    """Write `name`.png and `name`.pdf atomically; close the figure."""
    paths = [Path(out_dir) / f"{name}.{ext}" for ext in ("png", "pdf")]
    for p in paths:
        stamp = {"CreationDate": None} if p.suffix == ".pdf" else None  # the same bytes each time
        atomic_write(p, lambda tmp: fig.savefig(tmp, format=p.suffix[1:], bbox_inches="tight", dpi=120, metadata=stamp))
    plt.close(fig)
    return paths


def fid_vs_steps(rows, axis, out_dir):
    """FID against sampling steps, or against model evaluations (NFE) when the settings differ in NFE
    per step (heun costs 2 S - 1), so that samplers are compared at equal cost."""
    d = with_labels(first_extractor(rows[rows["metric"] == "fid"]))
    if d.empty:
        return []
    x = "nfe" if "nfe" in d and (d["nfe"].notna().all() and (d["nfe"] != d["steps"]).any()) else "steps"
    g = sns.relplot(data=d, kind="line", x=x, y="value", hue="setting", col=axis, marker="o",
                    errorbar=t_band, height=3.2 if axis else 4.5, aspect=1.2 if axis else 1.5,
                    facet_kws={"sharey": True})
    g.set(xscale="log", ylabel=f"FID ({d['extractor'].iloc[0]}, n={int(d['n'].iloc[0])})",
          xlabel="model evaluations per image (NFE)" if x == "nfe" else "sampling steps")
    if d["value"].max() > 5 * d["value"].min():  # one diverging setting would flatten the others
        g.set(yscale="log")
    ticks = []  # the step counts themselves, not log-scale labels; of two within 25%, the larger
    for v in sorted(d[x].unique(), reverse=True):
        if not ticks or ticks[-1] / v > 1.25:
            ticks.append(v)
    for ax in g.axes.flat:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        if ax.get_yscale() == "log":
            ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
    return save_figure(g.figure, out_dir, "fid_vs_steps")


def first_extractor(d: pd.DataFrame) -> pd.DataFrame:
    """The rows of the first FID extractor, where the rows hold two (the other is the extractor check's)."""
    return d[d["extractor"] == d["extractor"].iloc[0]] if "extractor" in d and d["extractor"].nunique() > 1 else d


def by_setting(ax, d, name, hue=None):
    """Horizontal bars, one per sampler setting: their labels never overlap, however many settings."""
    sns.barplot(data=d, y="setting_steps", x="value", hue=hue, errorbar=t_band, ax=ax, orient="h")
    ax.set(xlabel=name, ylabel="")
    if d["value"].max() > 5 * d["value"].min() > 0:  # a diverging setting would flatten the others
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())


def zoomed(ax, d, x, hue=None):
    """Means with their 95% t band on a range that shows the differences (the axis does not start at 0)."""
    sns.pointplot(data=d, x=x, y="value", hue=hue, errorbar=t_band, ax=ax, linestyle="none", capsize=0.15,
                  dodge=0.3 if hue else False, marker="o")
    bands = [t_band(g["value"]) for _, g in d.groupby([x] + ([hue] if hue else []))]
    lo, hi = min(b[0] for b in bands), max(b[1] for b in bands)
    pad = 0.15 * (hi - lo) or 0.05 * abs(hi) or 1.0
    ax.set_ylim(lo - pad, hi + pad)


def bars(rows, axis, out_dir):
    """FID by setting (bars) and bits/dim (means and CIs on a zoomed range), side by side; with many settings
    and no axis (the sampler question), FID as horizontal bars."""
    fid = with_labels(first_extractor(rows[rows["metric"] == "fid"]))
    nll = rows[rows["metric"] == "nll_bpd"]
    if fid.empty and nll.empty:
        return []
    tall = axis is None and fid["setting_steps"].nunique() > 4
    height = max(3.4, 0.28 * fid["setting_steps"].nunique()) if tall else 3.4
    widths = [w for w, d in ((1.6 if tall else 1.0, fid), (1.0, nll)) if not d.empty]
    fig, axs = plt.subplots(1, len(widths), figsize=(10, height), squeeze=False, gridspec_kw={"width_ratios": widths})
    axs = list(axs[0])
    if not fid.empty:
        ax = axs.pop(0)
        if tall:
            by_setting(ax, fid, "FID")
        else:
            several = axis and fid["setting_steps"].nunique() > 1
            sns.barplot(data=fid, x=axis or "setting_steps", y="value", hue="setting_steps" if several else None,
                        errorbar=t_band, ax=ax)
            one = f" ({fid['setting_steps'].iloc[0]})" if axis and not several else ""
            ax.set(ylabel=f"FID{one}", xlabel=axis or "")
            ax.tick_params(axis="x", rotation=20)
    if not nll.empty:
        ax = axs.pop(0)
        zoomed(ax, nll, axis or "ablation")
        ax.set(ylabel="bits/dim (axis not from 0)", xlabel=axis or "")
    return save_figure(fig, out_dir, "bars")


LOSS_NAMES = {"train_loss": "loss trained on", "train_mse": "unweighted MSE"}


def loss_curves(rows, axis, out_dir, axes=()):
    """Training loss, one panel per training target: per value of the first of the folder's `axes` (axes.json)
    that `legend.OWN_SCALE` names and the rows vary (`prediction`: eps, x0 and v MSE are not on one scale).
    Where the rows hold `train_mse`, it is drawn dashed beside the loss: a weighting whose weights are below 1
    lowers the loss, not the MSE."""
    d = rows[rows["metric"] == "train_loss"]
    if d.empty:
        return []
    mse = rows[rows["metric"] == "train_mse"]
    style = None
    if not mse.empty:
        d, style = pd.concat([d, mse]).assign(curve=lambda x: x["metric"].map(LOSS_NAMES)), "curve"
    col = next((a for a in axes if a in OWN_SCALE and a in d and d[a].nunique() > 1), None)
    g = sns.relplot(data=d, kind="line", x="train_step", y="value", hue=axis, col=col, errorbar=t_band,
                    style=style, style_order=list(LOSS_NAMES.values()) if style else None,
                    height=3.2, aspect=1.2, facet_kws={"sharey": False})
    g.set(yscale="log", ylabel="training loss", xlabel="training step")
    if col:
        g.set_titles("target: {col_name} (its own MSE scale)")
        g.figure.subplots_adjust(wspace=0.3)
    for ax in g.axes.flat:
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    return save_figure(g.figure, out_dir, "loss")


def throughput(rows, axis, out_dir):
    """Training and sampling images/s; with many settings and no axis, the sampling panel comes first, as
    horizontal bars whose labels sit at the figure's left edge."""
    train = rows[rows["metric"] == "train_img_per_s"]
    samp = with_labels(rows[rows["metric"] == "sample_img_per_s"])
    if train.empty and samp.empty:
        return []
    tall = axis is None and samp["setting_steps"].nunique() > 4
    height = max(3.4, 0.28 * samp["setting_steps"].nunique()) if tall else 3.4
    fig, axs = plt.subplots(1, 2, figsize=(10, height), gridspec_kw={"width_ratios": [1.6, 1] if tall else [1, 1]})
    train_ax, samp_ax = (axs[1], axs[0]) if tall else (axs[0], axs[1])
    if not train.empty:
        sns.barplot(data=train, x=axis or "ablation", y="value", errorbar=t_band, ax=train_ax)
    train_ax.set(ylabel="train images/s", xlabel=axis or "")
    if not samp.empty and tall:
        by_setting(samp_ax, samp, "sampled images/s")
    elif not samp.empty:
        sns.barplot(data=samp, x="setting_steps", y="value", hue=axis, errorbar=t_band, ax=samp_ax)
        samp_ax.set(ylabel="sampled images/s", xlabel="sampler setting")
        if samp["value"].max() > 5 * samp["value"].min() > 0:  # settings of very different cost
            samp_ax.set_yscale("log")
            samp_ax.yaxis.set_major_formatter(ScalarFormatter())
            samp_ax.yaxis.set_minor_formatter(NullFormatter())
        samp_ax.tick_params(axis="x", rotation=20)
    fig.subplots_adjust(wspace=0.3)
    return save_figure(fig, out_dir, "throughput")


PANEL_IN = 2.1  # inches per sample grid: 252 px at 120 dpi, the 242-px grids at about their own size
LABEL_IN = 2.4  # inches for the row names left of the sample grids


def grid_cells(rows, axis, out_dir) -> tuple[list[str], list[int], dict]:
    """The copied sample grids (samples/<run_id>-samples-<setting>.png) laid out: the row names (a setting,
    or an axis value and a setting), the seeds (columns) and (row name, seed) -> file."""
    d = with_labels(first_extractor(rows[rows["metric"] == "fid"])).drop_duplicates(["run_id", "setting_steps"])
    found = {}
    for r in d.itertuples(index=False):
        step = None if pd.isna(r.train_step) else int(r.train_step)
        names = [sample_grid_name(r.sampler, r.steps, r.eta, r.clip_x0, r.spacing, train_step=at) for at in (step, None)]
        f = next((f for f in (Path(out_dir) / "samples" / f"{r.run_id}-{n}" for n in names) if f.exists()), None)
        if f is not None:  # the checkpoint's grid, or (rows from before checkpoints were scored) the run's one
            who = f"{axis}={getattr(r, axis)}\n" if axis else ""
            found[(who + r.setting_steps, int(r.seed))] = f
    return list(dict.fromkeys(name for name, _ in found)), sorted({seed for _, seed in found}), found


def sample_grids(rows, axis, out_dir):
    """Every sample grid of the folder: a row per setting (per axis value and setting when the spec has an
    axis), a column per training seed, each grid at about its own pixel size."""
    names, seeds, found = grid_cells(rows, axis, out_dir)
    if not found:
        return []
    title_in = 0.3
    width, height = LABEL_IN + PANEL_IN * len(seeds), title_in + PANEL_IN * len(names)
    fig, axs = plt.subplots(len(names), len(seeds), figsize=(width, height), squeeze=False,
                            gridspec_kw={"wspace": 0.03, "hspace": 0.03})
    fig.subplots_adjust(left=LABEL_IN / width, right=1, bottom=0, top=1 - title_in / height)
    for i, name in enumerate(names):
        for j, seed in enumerate(seeds):
            ax = axs[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if (name, seed) in found:
                ax.imshow(plt.imread(found[(name, seed)]), cmap="gray", interpolation="nearest")
            if i == 0:
                ax.set_title(f"seed {seed}", fontsize=10)
            if j == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=10)
    return save_figure(fig, out_dir, "samples")


CURVE_METRICS = {"fid": "FID", "kid": "KID", "precision": "precision", "recall": "recall", "nll_bpd": "bits/dim"}


def log_images(ax, images):
    """A log x axis ticked at the checkpoints' image counts themselves (a curve spans about one decade)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(images))))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def curves(rows, axis, out_dir):
    """Each metric of CURVE_METRICS against training images seen (log x), a panel per metric, a line per axis
    value (per sampler setting without an axis; a line style per setting where an axis has several), each
    with its seed band (t_band); for the settings scored at two checkpoints or more. Nothing for one."""
    rows = checkpointed(rows)
    if len(checkpoints(rows)) < 2:
        return []
    images = cost(rows)[["run_id", "train_step", "train_images"]]
    d = rows[rows["metric"].isin(list(CURVE_METRICS)) & rows["value"].notna() & rows["train_step"].notna()]
    d = d.merge(images, on=["run_id", "train_step"], how="left")
    d = d[d["train_images"].notna()]
    if d.empty:
        return []
    d = with_labels(d.assign(**{c: d[c] if c in d else None for c in ("sampler", "steps", "eta")}))
    d.loc[d["metric"] == "nll_bpd", "setting_steps"] = "NLL bound"
    panels = []
    for metric in CURVE_METRICS:
        m = first_extractor(d[d["metric"] == metric])
        along = m.groupby("setting_steps")["train_step"].nunique()
        m = m[m["setting_steps"].isin(along[along >= 2].index)]
        if not m.empty:
            panels.append((metric, m))
    if not panels:
        return []
    fig, axs = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (metric, m) in zip(axs[0], panels):
        hue = axis or "setting_steps"
        style = "setting_steps" if axis and m["setting_steps"].nunique() > 1 else None
        sns.lineplot(data=m, x="train_images", y="value", hue=hue, style=style, marker="o", errorbar=t_band, ax=ax,
                     legend=bool(style) or ax is axs[0, -1])  # a panel's own line styles need its own legend
        if style and ax is not axs[0, -1]:
            ax.legend(fontsize=6, loc="best")
        log_images(ax, m["train_images"])
        one = f" ({m['setting_steps'].iloc[0]})" if m["setting_steps"].nunique() == 1 and metric != "nll_bpd" else ""
        ax.set(xlabel="training images seen", ylabel=CURVE_METRICS[metric] + one)
        ax.tick_params(axis="x", labelsize=7, rotation=20)
    if axs[0, -1].get_legend():
        sns.move_legend(axs[0, -1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=7)
    fig.subplots_adjust(wspace=0.35)
    return save_figure(fig, out_dir, "curves")


DENOISING_LABELS = {"x0_rms": "RMS error of the x0 estimate", "nll_term_bpd": "bound's term at t (bits/dim)"}


def denoising(rows, axis, out_dir):
    """Each metric of DENOISING against the timestep t (log y; x linear to 10, log above), a panel per metric,
    a line per axis value with its seed band, at the last checkpoint (`rows` are that checkpoint's); nothing
    where the rows hold none."""
    d = rows[rows["metric"].isin(DENOISING) & rows["value"].notna()] if "t" in rows else rows.iloc[:0]
    if d.empty:
        return []
    panels = [m for m in DENOISING if (d["metric"] == m).any()]
    fig, axs = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.4), squeeze=False)
    step = d["train_step"].dropna()
    at = f" (checkpoint of step {int(step.max()):,})" if len(step) else ""
    for ax, metric in zip(axs[0], panels):
        m = d[(d["metric"] == metric) & (d["value"] > 0)]  # a term of exactly 0 has no place on a log axis
        sns.lineplot(data=m, x="t", y="value", hue=axis, marker="o", errorbar=t_band, ax=ax,
                     legend=ax is axs[0, -1])
        ax.set_yscale("log")
        ax.set_xscale("symlog", linthresh=10)  # linear to t = 10, where the low-noise terms change fastest
        ts = sorted(int(t) for t in m["t"].unique())
        ax.set_xlim(0, max(ts) * 1.3 + 1)
        ax.xaxis.set_major_locator(FixedLocator(ts))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelsize=7, rotation=60)
        ax.set(xlabel="timestep t of x_t", ylabel=DENOISING_LABELS[metric])
    fig.suptitle(f"by noise level{at}", fontsize=8)
    return save_figure(fig, out_dir, "denoising")

