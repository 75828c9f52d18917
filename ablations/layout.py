"""The one definition of where things live in a runs root. No torch.

    <runs root>/
      <run_id>/                 one folder per training config, shared by every spec that names it
        config.json             the resolved TrainConfig (written first)
        status.json             state, step, reason, pid, requeues/restarts
        claim.json              who is training or evaluating it now (a SLURM job or a local pid)
        ckpt-<step:08d>.pt      the last two checkpoints
        rows.jsonl              one JSON row per number (ablations/schema.py)
        samples-<setting>.png   a sample grid per sampler setting
        samples-<setting>-seed<sample_seed>.npz   its generated images (uint8), scored by every metric
        solver-ref-ddim<T>[-noclip]-seed<sample_seed>.npz   DDIM (eta 0, all T steps) endpoints for solver_rms
        log.txt
      _slurm/<spec>/            per spec: submissions.jsonl and submitit's job logs
      .cache/fid/               reference statistics for FID
      .cache/inductor/          torch.compile's kernels, shared by the runs of a grid
"""
import os
import re
import socket
import time
from pathlib import Path

from ablations.io import read_json, write_json

CONFIG, STATUS, CLAIM, ROWS, LOG = "config.json", "status.json", "claim.json", "rows.jsonl", "log.txt"
PENDING, RUNNING, INTERRUPTED, DONE, FAILED = "pending", "running", "interrupted", "done", "failed"
NEEDS_EVAL = "needs-eval"  # trained, but the spec asks for rows not yet written
RUN_ID = re.compile(r"[0-9a-f]{10}")
CHECKPOINT = re.compile(r"ckpt-(\d{8})\.pt")
COUNTERS = ("requeues", "restarts")  # kept across status updates


def run_folder(root, run_id: str) -> Path:
    if not RUN_ID.fullmatch(run_id):
        raise ValueError(f"not a run id: {run_id!r}")
    return Path(root) / run_id


def run_ids(root) -> list[str]:
    """Every run folder's id under `root`."""
    return sorted(p.name for p in Path(root).glob("*") if RUN_ID.fullmatch(p.name) and (p / CONFIG).exists())


def spec_folder(root, spec_name: str) -> Path:
    """Where a spec's SLURM submissions and job logs go."""
    return Path(root) / "_slurm" / spec_name


def fid_cache(root) -> Path:
    return Path(root) / ".cache" / "fid"


def compile_cache(root) -> Path:
    return Path(root) / ".cache" / "inductor"


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.pt"


def checkpoint_step(path) -> int | None:
    """The training step a checkpoint file holds, or None if the name is not a checkpoint's."""
    m = CHECKPOINT.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def checkpoints(folder) -> list[Path]:
    """Checkpoint files of a run, oldest first."""
    found = [p for p in Path(folder).glob("ckpt-*.pt") if checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def orphans(folder) -> list[Path]:
    """Temporary files left by writes that were killed before their rename (ablations/io.py names them)."""
    return sorted(Path(folder).glob(".*.tmp"))


def last_step(folder) -> int:
    found = checkpoints(folder)
    return checkpoint_step(found[-1]) if found else 0


def sample_grid_name(sampler: str, steps: int, eta: float, clip_x0: bool, spacing: str = "leading") -> str:
    spaced = "" if spacing in (None, "leading") or spacing != spacing else f"-{spacing}"
    return f"samples-{sampler}-{int(steps)}-eta{float(eta):g}" + ("" if clip_x0 else "-noclip") + spaced + ".png"


def samples_name(sampler: str, steps: int, eta: float, clip_x0: bool, spacing: str = "leading", *,
                 sample_seed: int) -> str:
    """The kept images of a sampler setting: image i is the same for any count, so one file serves every n."""
    return sample_grid_name(sampler, steps, eta, clip_x0, spacing)[:-len(".png")] + f"-seed{int(sample_seed)}.npz"


def solver_reference_name(T: int, clip_x0: bool, *, sample_seed: int) -> str:
    return f"solver-ref-ddim{int(T)}" + ("" if clip_x0 else "-noclip") + f"-seed{int(sample_seed)}.npz"


def read_status(folder) -> dict:
    status = read_json(Path(folder) / STATUS, {})
    return status if "state" in status else {"state": PENDING}


def write_status(folder, state, **extra):
    old = read_status(folder)
    extra = {**{k: old[k] for k in COUNTERS if k in old}, **extra}
    write_json(Path(folder) / STATUS, {"state": state, "updated": time.time(), "host": socket.gethostname(),
                                       "pid": os.getpid(), **extra})


def pid_alive(status: dict) -> bool:
    """Whether the process recorded in a status is alive; True when it ran on another host (unknowable)."""
    if status.get("host") != socket.gethostname() or not status.get("pid"):
        return True
    try:
        os.kill(int(status["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
