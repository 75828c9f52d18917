"""Every figure of one results folder: the rows' figures (`plots`) and the verdicts' (`verdict_plots`)."""
from functools import partial
from pathlib import Path

import pandas as pd
import seaborn as sns

from ablations.reporting import axes, verdicts
from ablations.reporting.plots import bars, curves, denoising, fid_vs_steps, loss_curves, sample_grids, throughput
from ablations.reporting.table import checkpointed, final
from ablations.reporting.verdict_plots import differences, forest


def plot_all(out_dir) -> list[Path]:
    """Every figure of one results folder, its axis from the folder's axes.json (ablations/reporting/axes.py);
    the forest plot's p-values are Holm-adjusted over the whole index (every folder beside this one). The
    one-checkpoint figures show the last checkpoint; `curves` and `differences` exist where the rows hold two
    checkpoints or more."""
    out_dir = Path(out_dir)
    rows = checkpointed(pd.read_csv(out_dir / "rows.csv"))
    record = axes.checked(out_dir, rows)
    rows, axis = axes.as_written(rows, record), axes.axis(record)
    sns.set_theme(style="whitegrid", context="paper")
    found = [v for v in verdicts.assess(verdicts.tables(out_dir.parent), verdicts.read_all(out_dir.parent))
             if v["folder"] == out_dir.name]
    at_last = final(rows)
    return [*(p for fn in (fid_vs_steps, bars, partial(loss_curves, axes=record["axes"]), throughput, sample_grids,
                           denoising)
              for p in fn(at_last, axis, out_dir)),
            *forest(verdicts.last(found), out_dir), *curves(rows, axis, out_dir), *differences(found, out_dir)]
