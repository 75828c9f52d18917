"""Every figure of one results folder: the rows' figures (`plots`) and the verdicts' (`verdict_plots`)."""
from functools import partial
from pathlib import Path

import seaborn as sns

from ablations.reporting import axes, verdicts
from ablations.reporting.plots import bars, curves, denoising, fid_vs_steps, loss_curves, sample_grids, throughput
from ablations.reporting.table import checkpointed, final, first_sample_set
from ablations.reporting.verdict_plots import differences, forest


def plot_all(out_dir, assessed: verdicts.Assessed | None = None) -> list[Path]:
    """Every figure of one results folder, its axis from the folder's axes.json (ablations/reporting/axes.py);
    the forest plot's p-values are Holm-adjusted over the whole index (every folder beside this one:
    `assessed`, read and decided once by `ablate results` for every folder, or here). The one-checkpoint
    figures show the last checkpoint; `curves` and `differences` exist where the rows hold two checkpoints or
    more."""
    out_dir = Path(out_dir)
    assessed = assessed or verdicts.assessed(out_dir.parent)
    rows = first_sample_set(checkpointed(assessed.read(out_dir)))
    record = assessed.axes(out_dir, rows)
    rows, axis = axes.as_written(rows, record), axes.axis(record)
    sns.set_theme(style="whitegrid", context="paper")
    found = assessed.of(out_dir)
    at_last = final(rows)
    return [*(p for fn in (fid_vs_steps, bars, partial(loss_curves, axes=record["axes"]), throughput, sample_grids,
                           denoising)
              for p in fn(at_last, axis, out_dir)),
            *forest(verdicts.last(found), out_dir), *curves(rows, axis, out_dir), *differences(found, out_dir)]
