"""Checkpoint files: written atomically and durably, read back newest first, a torn one set aside.
Names come from ablations/store/layout.py."""
import io
from pathlib import Path

import torch

from ablations.store.io import atomic_write
from ablations.store.layout import checkpoint_name, checkpoint_step, checkpoints

KEEP = 2  # checkpoints kept per run
KEYS = ("step", "model", "ema", "opt", "lr_sched", "gen")


def save_torch(path, obj):
    """torch.save through `atomic_write`, serialized in memory first: torch's own file writer turns a full
    disk into `RuntimeError: [enforce fail at inline_container.cc] unexpected pos`, a plain write into the
    OSError that becomes the one DiskFull line (ablations/store/io.py)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()))


def save_checkpoint(folder, step: int, state: dict, keep=()):
    """Write ckpt-<step>.pt, then delete all but the newest KEEP and those of the steps in `keep`
    (the checkpoints a spec scores: `eval_at`)."""
    save_torch(folder / checkpoint_name(step), state)
    for old in checkpoints(folder)[:-KEEP]:
        if checkpoint_step(old) not in keep:
            old.unlink()


def load_step(folder, step: int, device) -> dict | None:
    """The state of the checkpoint at `step`, or None when the run did not keep it."""
    path = folder / checkpoint_name(step)
    return torch.load(path, map_location=device, weights_only=False) if path.exists() else None


def load_latest(folder, device, log=None):
    """The newest readable checkpoint's state, or None when the run has none. An unreadable one (a file
    torn by a crash, a disk error) is renamed to <name>.torn, kept for inspection, and the one before
    it is used; both are named in the log."""
    found = checkpoints(folder)
    for newest in reversed(found):
        try:
            state = torch.load(newest, map_location=device, weights_only=False)
            if not isinstance(state, dict) or not all(k in state for k in KEYS):
                raise ValueError("not a checkpoint of this pipeline")
            return state
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is handled the same way
            torn = newest.with_name(newest.name + ".torn")
            newest.rename(torn)
            older = [p for p in found if p != newest and p.exists()]
            (log or print)(f"checkpoint {newest.name} is unreadable ({type(e).__name__}: {e}); set aside as "
                           f"{torn.name}; " + (f"resuming from {older[-1].name}" if older else "starting over"))
    return None
