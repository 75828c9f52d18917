"""Figures from rows.csv alone (this module never imports model code): PNG and PDF in the results folder."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

NOT_AXES = {"ablation", "scale", "run_id", "seed", "sampler", "steps", "eta", "metric", "value", "n", "extractor",
            "protocol", "step", "device", "torch", "commit", "host", "timestamp", "status", "reason"}


def axes_of(rows: pd.DataFrame) -> list[str]:
    """The ablation axes that vary in this table, in column order (at least one, for labelling)."""
    axes = [c for c in rows.columns if c not in NOT_AXES]
    varying = [a for a in axes if rows[a].nunique(dropna=True) > 1]
    return varying or axes[:1]


def setting(rows: pd.DataFrame) -> pd.Series:
    """One legend word per sampler setting: "ddpm", "ddim eta=0", ..."""
    return rows["sampler"].where(rows["sampler"] != "ddim", "ddim eta=" + rows["eta"].map("{:g}".format))


def _save(fig, out_dir, name) -> list[Path]:
    paths = [Path(out_dir) / f"{name}.{ext}" for ext in ("png", "pdf")]
    for p in paths:
        tmp = p.with_name(f".{p.name}.tmp")
        fig.savefig(tmp, format=p.suffix[1:], bbox_inches="tight", dpi=120)
        tmp.replace(p)
    plt.close(fig)
    return paths


def fid_vs_steps(rows, axis, out_dir):
    d = rows[rows["metric"] == "fid"].assign(setting=lambda x: setting(x))
    if d.empty:
        return []
    g = sns.relplot(data=d, kind="line", x="steps", y="value", hue="setting", col=axis, marker="o",
                    errorbar=("ci", 95), height=3.2, aspect=1.2, facet_kws={"sharey": True})
    g.set(xscale="log", ylabel=f"FID ({d['extractor'].iloc[0]}, n={int(d['n'].iloc[0])})", xlabel="sampling steps")
    return _save(g.figure, out_dir, "fid_vs_steps")


def bars(rows, axis, out_dir):
    fid = rows[rows["metric"] == "fid"].assign(setting=lambda x: setting(x) + "-" + x["steps"].astype("Int64").astype(str))
    nll = rows[rows["metric"] == "nll_bpd"]
    panels = [(d, m) for d, m in ((fid, "FID"), (nll, "bits/dim")) if not d.empty]
    if not panels:
        return []
    fig, axs = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.4), squeeze=False)
    for ax, (d, label) in zip(axs[0], panels):
        sns.barplot(data=d, x=axis, y="value", hue="setting" if label == "FID" else None, errorbar=("ci", 95),
                    ax=ax)
        ax.set(ylabel=label, xlabel=axis)
    return _save(fig, out_dir, "bars")


def loss_curves(rows, axis, out_dir):
    d = rows[rows["metric"] == "train_loss"]
    if d.empty:
        return []
    fig, ax = plt.subplots(figsize=(6, 3.4))
    sns.lineplot(data=d, x="step", y="value", hue=axis, errorbar=("ci", 95), ax=ax)
    ax.set(yscale="log", ylabel="training loss", xlabel="step")
    return _save(fig, out_dir, "loss")


def throughput(rows, axis, out_dir):
    train = rows[rows["metric"] == "train_img_per_s"]
    samp = rows[rows["metric"] == "sample_img_per_s"].assign(setting=lambda x: setting(x) + "-" + x["steps"].astype("Int64").astype(str))
    if train.empty and samp.empty:
        return []
    fig, axs = plt.subplots(1, 2, figsize=(11, 3.4))
    if not train.empty:
        sns.barplot(data=train, x=axis, y="value", errorbar=("ci", 95), ax=axs[0])
    axs[0].set(ylabel="train images/s", xlabel=axis)
    if not samp.empty:
        sns.barplot(data=samp, x="setting", y="value", hue=axis, errorbar=("ci", 95), ax=axs[1])
    axs[1].set(ylabel="sampled images/s", xlabel="sampler-steps", yscale="log")
    axs[1].tick_params(axis="x", rotation=45)
    return _save(fig, out_dir, "throughput")


def sample_grids(rows, axis, out_dir):
    """The copied sample grids (samples/<run_id>-<sampler>-<steps>-<eta>.png), one panel each."""
    files = sorted((Path(out_dir) / "samples").glob("*.png"))
    if not files:
        return []
    label = rows.drop_duplicates("run_id").set_index("run_id")
    cols = min(4, len(files))
    fig, axs = plt.subplots(-(-len(files) // cols), cols, figsize=(3 * cols, 3.3 * -(-len(files) // cols)),
                            squeeze=False)
    for ax in axs.flat:
        ax.axis("off")
    for ax, f in zip(axs.flat, files):
        run_id, sampler, steps, eta = f.stem.split("-", 3)
        who = f"{axis}={label.loc[run_id, axis]} s{label.loc[run_id, 'seed']}" if run_id in label.index else run_id
        ax.imshow(plt.imread(f), cmap="gray")
        ax.set_title(f"{who}\n{sampler}-{steps}" + (f" eta={eta}" if sampler == "ddim" else ""), fontsize=8)
    return _save(fig, out_dir, "samples")


def plot_all(out_dir) -> list[Path]:
    rows = pd.read_csv(Path(out_dir) / "rows.csv")
    axis = axes_of(rows)[0]
    sns.set_theme(style="whitegrid", context="paper")
    return [p for fn in (fid_vs_steps, bars, loss_curves, throughput, sample_grids) for p in fn(rows, axis, out_dir)]
