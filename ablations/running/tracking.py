"""TensorBoard event files under <run>/tb/, written from the run's rows (rows.jsonl stays the source of
truth), when tensorboard is installed (the `tracking` extra); W&B and aim import these files.

Tags: `train/<metric>` for training rows (train_loss, train_img_per_s, ...) and `train/lr`, the learning
rate of the step a train_loss row ends (ablations/running/training.py: `lr_at`); `eval/<metric>` for the NLL
and `eval/<metric>/<setting>[/<extractor>]` for sampler rows (setting as in the sample grid's name,
e.g. `ddim-10-eta0`). Every value sits at its row's `train_step`. Sample grids are images
`samples/<setting>` at the checkpoint they were drawn at.
"""
import math
import re
from pathlib import Path

from ablations.store.io import atomic_write
from ablations.store.layout import ROWS, sample_grid_name
from ablations.store.schema import read_rows
from ablations.running.training import lr_at

TB = "tb"  # the event files' folder in a run folder
GRIDS = "grids.txt"  # in it: the sample grids written as images
GRID = re.compile(r"samples-(.+?)(?:-step(\d+))?\.png")


def writer_class():
    """torch's SummaryWriter, or None without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


def setting_word(r: dict) -> str:
    """A sampler row's setting, as its grid file names it: `ddim-10-eta0`."""
    return sample_grid_name(r["sampler"], r["steps"], r["eta"], r["clip_x0"], r["spacing"])[len("samples-"):-4]


def scalars(rows, cfg) -> list[tuple[str, float, int]]:
    """(tag, value, step) of each finite row value, plus the learning rate at each train_loss row."""
    out = []
    for r in rows:
        value, step = r["value"], int(r["train_step"] or 0)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        tag = f"{r['phase']}/{r['metric']}"
        if r["phase"] == "eval" and r["sampler"] is not None:
            tag += f"/{setting_word(r)}" + (f"/{r['extractor']}" if r["extractor"] else "")
        out.append((tag, float(value), step))
        if r["metric"] == "train_loss" and cfg is not None:
            out.append(("train/lr", lr_at(cfg, step), step))
    return out


class Events:
    """A run's event writer, opened at the first rows: `add(rows)` after each append to rows.jsonl
    writes their scalars and the sample grids not yet written; `close()` at the end of the run.
    `purge_step`: a resumed run's first step; events at or after it (its retrained steps) are dropped."""

    def __init__(self, folder, cfg, purge_step=None):
        self.folder, self.cfg, self.purge_step = Path(folder), cfg, purge_step
        self.writer, self.grids = None, set()

    def add(self, rows):
        """`rows`: those just appended to rows.jsonl. When the run has no event files yet, all of its rows
        (segments written without tensorboard come first)."""
        if self.writer is None:
            if not (self.folder / TB).exists():
                rows = read_rows(self.folder / ROWS)[0]
            self.writer = writer_class()(str(self.folder / TB), purge_step=self.purge_step)
            self.grids = _logged_grids(self.folder)
        for tag, value, step in scalars(rows, self.cfg):
            self.writer.add_scalar(tag, value, step)
        self._add_grids()
        self.writer.flush()

    def _add_grids(self):
        import numpy as np
        from PIL import Image
        for path in sorted(self.folder.glob("samples-*.png")):
            m = GRID.fullmatch(path.name)
            if m and path.name not in self.grids:
                with Image.open(path) as im:
                    grid = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
                self.writer.add_image(f"samples/{m[1]}", grid, int(m[2] or 0), dataformats="HWC")
                self.grids.add(path.name)
        text = "".join(f"{g}\n" for g in sorted(self.grids))
        atomic_write(self.folder / TB / GRIDS, lambda tmp: Path(tmp).write_text(text))

    def close(self):
        if self.writer is not None:
            self._add_grids()  # the last grid is written after its rows
            self.writer.close()


def _logged_grids(folder) -> set:
    """The grids an earlier segment of the run wrote already (tb/grids.txt)."""
    path = Path(folder) / TB / GRIDS
    return set(path.read_text().split()) if path.exists() else set()


def events(folder, cfg, purge_step=None) -> Events | None:
    """The run's Events, or None when tensorboard is not installed (nothing changes then)."""
    return Events(folder, cfg, purge_step) if writer_class() is not None else None


def export(folder, cfg) -> bool:
    """Write the event files of a run that has rows and none yet; True when written."""
    rows = read_rows(Path(folder) / ROWS)[0]
    if not rows or (Path(folder) / TB).exists():
        return False
    ev = Events(folder, cfg)
    ev.add(rows)  # every row: the run has no event files
    ev.close()
    return True
