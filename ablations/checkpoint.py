"""Checkpoint files: written atomically, read back newest first. Names come from ablations/layout.py."""
import torch

from ablations.io import atomic_write
from ablations.layout import checkpoint_name, checkpoints

KEEP = 2  # checkpoints kept per run


def save_torch(path, obj):
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(folder, step: int, state: dict):
    """Write ckpt-<step>.pt, then delete all but the newest KEEP."""
    save_torch(folder / checkpoint_name(step), state)
    for old in checkpoints(folder)[:-KEEP]:
        old.unlink()


def load_latest(folder, device):
    """The newest checkpoint's state dict, or None when the run has none."""
    found = checkpoints(folder)
    return torch.load(found[-1], map_location=device, weights_only=False) if found else None
