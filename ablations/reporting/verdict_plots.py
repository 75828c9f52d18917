"""The verdicts' figures, from the findings `ablations.reporting.verdicts.assess` decides on rows.csv alone:
each finding's paired difference a − b with its CI, at the last checkpoint (the forest plot, for a folder and
for the index) and against training images seen (`differences`)."""
from pathlib import Path

import matplotlib.pyplot as plt

from ablations.reporting import verdicts
from ablations.reporting.plots import log_images, save_figure


VERDICT_COLOURS = {"agrees": "tab:green", "disagrees": "tab:red", "lower than b": "tab:blue",
                   "higher than b": "tab:blue"}


def forest(found: list[dict], out_dir, name="forest"):
    """Each finding's paired difference a − b with its CI (95%; 90% for parity), one panel per question and
    metric, with the paper's direction shaded (a < b: left of 0; parity: inside the margin) and the verdict
    with its raw and Holm-adjusted p. A one-seed finding is a hollow point without a CI."""
    shown = [v for v in found if v["seeds"] >= 1]
    if not shown:  # nothing to draw: a forest drawn before from other rows goes, so no report shows it
        for ext in ("png", "pdf"):
            (Path(out_dir) / f"{name}.{ext}").unlink(missing_ok=True)
        return []
    groups = {}
    for v in shown:
        groups.setdefault((v["folder"], v["finding"].metric), []).append(v)
    sizes = [len(g) for g in groups.values()]
    fig, axs = plt.subplots(len(groups), 1, figsize=(10, 0.9 * len(groups) + 0.45 * sum(sizes)), squeeze=False,
                            gridspec_kw={"height_ratios": sizes, "hspace": 0.9})
    for ax, ((folder, metric), vs) in zip(axs[:, 0], groups.items()):
        ys = list(range(len(vs)))[::-1]
        for y, v in zip(ys, vs):
            half = v["diff_ci"] if v["diff_ci"] == v["diff_ci"] else 0.0
            colour = VERDICT_COLOURS.get(v["verdict"], "tab:gray")
            ax.errorbar(v["diff"], y, xerr=half, fmt="o", color=colour, capsize=3,
                        mfc=colour if v["seeds"] > 1 else "white")
            p = f"p = {v['p']:.2g}, Holm {v['p_holm']:.2g}" if v["p"] == v["p"] else ""
            said = v["verdict"] + (" (repeats a row: counted once)" if v["same_as"] is not None else "")
            ax.text(1.01, y, said + (f"\n{p}" if p else ""), transform=ax.get_yaxis_transform(),
                    va="center", fontsize=7, color=colour)
        lo, hi = ax.get_xlim()
        ends = [x for v in vs for x in (v["diff"] - (v["diff_ci"] if v["diff_ci"] == v["diff_ci"] else 0),
                                        v["diff"] + (v["diff_ci"] if v["diff_ci"] == v["diff_ci"] else 0))]
        margins = [v["finding"].margin for v in vs if v["finding"].expect == "parity"]
        lo, hi = min(lo, *ends, 0, *(-m for m in margins)), max(hi, *ends, 0, *margins)
        pad = 0.08 * (hi - lo)
        lo, hi = lo - pad, hi + pad
        for y, v in zip(ys, vs):
            f = v["finding"]
            span = {"lower": (lo, 0), "higher": (0, hi), "parity": (-f.margin, f.margin)}.get(f.expect)
            if span:
                ax.fill_betweenx([y - 0.4, y + 0.4], *span, color="tab:green", alpha=0.12, lw=0)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(-0.6, len(vs) - 0.4)
        names = [short(v["a"], v["b"]) for v in vs]
        ax.set_yticks(ys, [n for n, _ in names], fontsize=8)
        shared = sorted({s for _, s in names if s})
        ax.set_title(f"{folder}: {metric}, a − b" + (f" ({'; '.join(shared)})" if shared else ""), fontsize=9,
                     loc="left")
        ax.tick_params(axis="x", labelsize=7)
    first = axs[0, 0]
    first.set_title("shaded: the paper's direction (a < b) or its parity margin; hollow: one seed, no CI\n\n"
                    + first.get_title(loc="left"), fontsize=9, loc="left")
    return save_figure(fig, out_dir, name)


def short(a: str, b: str) -> tuple[str, str]:
    """"a − b" without the parts both cells share, and those parts (for the panel's title)."""
    pa, pb = a.split(", "), b.split(", ")
    common = [x for x in pa if x in pb]
    if common == pa or common == pb:
        return f"{a} − {b}", ""
    return f"{', '.join(x for x in pa if x not in common)} − {', '.join(x for x in pb if x not in common)}", \
        ", ".join(common)


def differences(found: list[dict], out_dir, name="differences"):
    """Each finding's paired difference a − b against training images seen (log x), one panel per finding,
    with its CI band (95%; 90% for parity) and zero marked; the parity margin shaded. For findings scored at
    two checkpoints or more with training images known."""
    shown = [c for c in verdicts.trajectories(found)
             if len([v for v in c if v["seeds"] >= 1 and v["train_images"] == v["train_images"]]) >= 2]
    if not shown:
        return []
    cols = min(3, len(shown))
    rows_n = -(-len(shown) // cols)
    fig, axs = plt.subplots(rows_n, cols, figsize=(4.4 * cols, 3.2 * rows_n), squeeze=False)
    for ax in axs.flat[len(shown):]:
        ax.set_visible(False)
    for ax, c in zip(axs.flat, shown):
        c = [v for v in c if v["seeds"] >= 1 and v["train_images"] == v["train_images"]]
        x = [v["train_images"] for v in c]
        y = [v["diff"] for v in c]
        half = [v["diff_ci"] if v["diff_ci"] == v["diff_ci"] else 0.0 for v in c]
        f = c[-1]["finding"]
        ax.plot(x, y, "o-", color="tab:blue")
        ax.fill_between(x, [a - h for a, h in zip(y, half)], [a + h for a, h in zip(y, half)], color="tab:blue",
                        alpha=0.2, lw=0, label=f"{c[-1]['level']:.0%} CI over seeds")
        if f.expect == "parity":
            ax.axhspan(-f.margin, f.margin, color="tab:green", alpha=0.12, lw=0, label="parity margin")
        ax.axhline(0, color="black", lw=0.8)
        for v in c:
            ax.annotate(v["verdict"], (v["train_images"], v["diff"]), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=6, color=VERDICT_COLOURS.get(v["verdict"], "tab:gray"))
        log_images(ax, x)
        ab, shared = short(c[-1]["a"], c[-1]["b"])
        ax.set_title(f"{f.metric}: {ab}" + (f"\n({shared})" if shared else ""), fontsize=8, loc="left")
        ax.set(xlabel="training images seen", ylabel=f"a − b ({f.metric})")
        ax.tick_params(labelsize=7)
        ax.tick_params(axis="x", rotation=20)
        ax.legend(fontsize=6, loc="best")
    fig.subplots_adjust(hspace=0.7, wspace=0.35)
    return save_figure(fig, out_dir, name)
