"""report.md from rows.csv and summary.csv alone: tables, figures and the protocol behind every number."""
from pathlib import Path

import pandas as pd

from results.plots import axes_of, setting


def markdown(df: pd.DataFrame) -> str:
    cells = [[str(c) for c in df.columns]] + [[_fmt(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join([lines[0], "|" + "---|" * len(df.columns), *lines[1:]])


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _fmt_int(v) -> str:
    """1000.0 -> "1000": pandas reads integer columns with gaps as floats."""
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _cell(mean, ci, n):
    return f"{mean:.3g}" + (f" ± {ci:.2g}" if ci == ci else "") + f" (n={n})"


def pivot(summary: pd.DataFrame, metric: str, axis: str, by_setting: bool) -> pd.DataFrame:
    d = summary[summary["metric"] == metric].copy()
    if d.empty:
        return d
    d["cell"] = [_cell(m, c, n) for m, c, n in zip(d["mean"], d["ci95"], d["n"])]
    if not by_setting:
        return d[[axis, "cell"]].rename(columns={"cell": metric})
    d["setting"] = setting(d) + "-" + d["steps"].astype("Int64").astype(str)
    return d.pivot_table(index=axis, columns="setting", values="cell", aggfunc="first").reset_index()


def protocol(rows: pd.DataFrame) -> list[str]:
    fid, nll = rows[rows["metric"] == "fid"], rows[rows["metric"] == "nll_bpd"]
    vals = lambda d, c: ", ".join(sorted({_fmt_int(v) for v in d[c].dropna()})) or "-"  # noqa: E731
    return [
        f"- FID extractor: {vals(fid, 'extractor')}; generated images per setting (n): {vals(fid, 'n')}",
        f"- FID reference and sample seed: {vals(fid, 'protocol')}",
        f"- NLL: {vals(nll, 'protocol')}; test images: {vals(nll, 'n')}",
        f"- seeds: {vals(rows, 'seed')}; runs: {rows['run_id'].nunique()}",
        f"- device: {vals(rows, 'device')}; torch: {vals(rows, 'torch')}; host: {vals(rows, 'host')}",
        f"- commit: {vals(rows, 'commit')}",
    ]


def write_report(out_dir) -> Path:
    out_dir = Path(out_dir)
    rows, summary = pd.read_csv(out_dir / "rows.csv"), pd.read_csv(out_dir / "summary.csv")
    axis = axes_of(rows)[0]
    name = rows["ablation"].iloc[0]
    runs = rows.drop_duplicates("run_id")
    parts = [f"# {name}", "", f"Axis: `{axis}`. Cells are mean ± 95% CI half-width over seeds (Student's t), "
             "with n the number of seeds. Regenerate with `ablate report`.", "", "## Protocol", "",
             *protocol(rows), "", "## Runs", "",
             markdown(runs[["run_id", axis, "seed", "status", "reason"]].astype(object).fillna("")), ""]
    for title, metric, by in (("FID by sampler setting", "fid", True), ("Bits/dim", "nll_bpd", False),
                              ("Training images/s", "train_img_per_s", False),
                              ("Sampling images/s", "sample_img_per_s", True)):
        table = pivot(summary, metric, axis, by)
        if not table.empty:
            parts += [f"## {title}", "", markdown(table), ""]
    figures = [f for f in ("fid_vs_steps", "bars", "loss", "throughput", "samples") if (out_dir / f"{f}.png").exists()]
    if figures:
        parts += ["## Figures", ""] + [f"![{f}]({f}.png)" for f in figures] + [""]
    path = out_dir / "report.md"
    tmp = path.with_name(".report.md.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(path)
    return path
