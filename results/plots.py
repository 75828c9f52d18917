"""Figures from rows.csv alone (this module never imports torch or model code): PNG and PDF.

Every legend names a sampler setting with `ablations.schema.label`, e.g. "DDIM η=0 · 10 steps".
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FixedLocator, LogLocator, NullFormatter, ScalarFormatter  # noqa: E402

from ablations.layout import sample_grid_name  # noqa: E402
from ablations.schema import RUN_COLUMNS, SPEC_COLUMNS, STATUS_COLUMNS, label  # noqa: E402
from results.table import ci95  # noqa: E402

NOT_AXES = {*RUN_COLUMNS, *SPEC_COLUMNS, *STATUS_COLUMNS}


def axes_of(rows: pd.DataFrame) -> list[str]:
    """The ablation axes that vary in this table, in column order; empty when the table compares
    sampler settings on one config."""
    return [c for c in rows.columns if c not in NOT_AXES and rows[c].nunique(dropna=True) > 1]


def with_labels(rows: pd.DataFrame) -> pd.DataFrame:
    """Adds `setting` (the sampler setting without steps) and `setting_steps` (with steps)."""
    d = rows.assign(**{c: rows[c] if c in rows else default for c, default in (("clip_x0", True),
                                                                                ("spacing", "leading"))})
    cols = list(zip(d["sampler"], d["steps"], d["eta"], d["clip_x0"], d["spacing"]))
    return d.assign(setting=[label(s, None, e, c, sp) for s, _, e, c, sp in cols],
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
        tmp = p.with_name(f".{p.name}.tmp")
        stamp = {"CreationDate": None} if p.suffix == ".pdf" else None  # the same bytes each time
        fig.savefig(tmp, format=p.suffix[1:], bbox_inches="tight", dpi=120, metadata=stamp)
        tmp.replace(p)
    plt.close(fig)
    return paths


def fid_vs_steps(rows, axis, out_dir):
    """FID against sampling steps, or against model evaluations (NFE) when the settings differ in NFE
    per step (heun costs 2 S - 1), so that samplers are compared at equal cost."""
    d = with_labels(rows[rows["metric"] == "fid"])
    if d.empty:
        return []
    x = "nfe" if "nfe" in d and (d["nfe"].notna().all() and (d["nfe"] != d["steps"]).any()) else "steps"
    g = sns.relplot(data=d, kind="line", x=x, y="value", hue="setting", col=axis, marker="o",
                    errorbar=t_band, height=3.2, aspect=1.2, facet_kws={"sharey": True})
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


def bars(rows, axis, out_dir):
    fid = with_labels(rows[rows["metric"] == "fid"])
    nll = rows[rows["metric"] == "nll_bpd"]
    panels = [(d, m) for d, m in ((fid, "FID"), (nll, "bits/dim")) if not d.empty]
    if not panels:
        return []
    fig, axs = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.4), squeeze=False)
    for ax, (d, name) in zip(axs[0], panels):
        by_setting = name == "FID"
        x = axis or ("setting_steps" if by_setting else "ablation")
        hue = "setting_steps" if by_setting and axis else None
        sns.barplot(data=d, x=x, y="value", hue=hue, errorbar=t_band, ax=ax)
        ax.set(ylabel=name, xlabel=axis or "")
        ax.tick_params(axis="x", rotation=20)
    return save_figure(fig, out_dir, "bars")


def loss_curves(rows, axis, out_dir):
    d = rows[rows["metric"] == "train_loss"]
    if d.empty:
        return []
    fig, ax = plt.subplots(figsize=(6, 3.4))
    sns.lineplot(data=d, x="train_step", y="value", hue=axis, errorbar=t_band, ax=ax)
    ax.set(yscale="log", ylabel="training loss", xlabel="training step")
    return save_figure(fig, out_dir, "loss")


def throughput(rows, axis, out_dir):
    train = rows[rows["metric"] == "train_img_per_s"]
    samp = with_labels(rows[rows["metric"] == "sample_img_per_s"])
    if train.empty and samp.empty:
        return []
    fig, axs = plt.subplots(1, 2, figsize=(11, 3.4))
    if not train.empty:
        sns.barplot(data=train, x=axis or "ablation", y="value", errorbar=t_band, ax=axs[0])
    axs[0].set(ylabel="train images/s", xlabel=axis or "")
    if not samp.empty:
        sns.barplot(data=samp, x="setting_steps", y="value", hue=axis, errorbar=t_band, ax=axs[1])
    axs[1].set(ylabel="sampled images/s", xlabel="sampler setting", yscale="log")
    axs[1].tick_params(axis="x", rotation=45)
    return save_figure(fig, out_dir, "throughput")


def sample_grids(rows, axis, out_dir):
    """The copied sample grids (samples/<run_id>-samples-<setting>.png), one panel per FID row."""
    d = with_labels(rows[rows["metric"] == "fid"]).drop_duplicates(["run_id", "setting_steps"])
    panels = []
    for r in d.itertuples(index=False):
        name = sample_grid_name(r.sampler, r.steps, r.eta, r.clip_x0, r.spacing)
        f = Path(out_dir) / "samples" / f"{r.run_id}-{name}"
        if f.exists():
            who = f"{axis}={getattr(r, axis)} · seed {r.seed}" if axis else f"seed {r.seed}"
            panels.append((f, f"{who}\n{r.setting_steps}"))
    if not panels:
        return []
    cols = min(4, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axs = plt.subplots(rows_n, cols, figsize=(3 * cols, 3.3 * rows_n), squeeze=False)
    for ax in axs.flat:
        ax.axis("off")
    for ax, (f, title) in zip(axs.flat, panels):
        ax.imshow(plt.imread(f), cmap="gray")
        ax.set_title(title, fontsize=8)
    return save_figure(fig, out_dir, "samples")


def plot_all(out_dir) -> list[Path]:
    rows = pd.read_csv(Path(out_dir) / "rows.csv")
    axes = axes_of(rows)
    axis = axes[0] if axes else None
    sns.set_theme(style="whitegrid", context="paper")
    return [p for fn in (fid_vs_steps, bars, loss_curves, throughput, sample_grids) for p in fn(rows, axis, out_dir)]
