"""A claim on a run folder, so two overlapping submissions never train the same run at once.

The claim file records who holds it: a SLURM job (checked against the scheduler with squeue) or a
local process (checked with its pid on this host). A claim whose holder is gone is stale and is
taken over, so a crashed job never blocks its run.
"""
import json
import os
import socket
import subprocess
from pathlib import Path

from ablations.layout import CLAIM, pid_alive


def holder() -> dict:
    """Who this process is: its SLURM job (array jobs by their array id) or its host and pid."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and (
        f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}")
    return {"job": job or os.environ.get("SLURM_JOB_ID"), "host": socket.gethostname(), "pid": os.getpid()}


ALIVE = ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED", "CONFIGURING", "COMPLETING")  # squeue's %T states


def job_alive(job_id: str) -> bool:
    """Whether SLURM still knows the job as pending, running, requeued or suspended."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return True  # cannot tell: be safe and treat it as alive
    return any(s in out for s in ALIVE)


def alive(h: dict) -> bool:
    """Whether the holder is alive: its SLURM job is known to squeue, or its pid lives on this host
    (a process on another host cannot be checked and counts as alive)."""
    return job_alive(h["job"]) if h.get("job") else pid_alive(h)


def read(folder) -> dict | None:
    try:
        return json.loads((Path(folder) / CLAIM).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def same(a: dict, b: dict) -> bool:
    return a["job"] == b["job"] if a.get("job") or b.get("job") else (a["host"], a["pid"]) == (b["host"], b["pid"])


def acquire(folder) -> tuple[bool, dict | None]:
    """(True, None) when this process now holds the claim; (False, holder) when a live holder has it."""
    me, path = holder(), Path(folder) / CLAIM
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            current = read(folder)
            if current is not None and (same(current, me) or not alive(current)):
                if same(current, me):
                    return True, None
                path.unlink(missing_ok=True)  # stale: its holder is gone
                continue
            if current is None:
                continue
            return False, current
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return True, None
    return False, read(folder)


def release(folder):
    current = read(folder)
    if current is not None and same(current, holder()):
        (Path(folder) / CLAIM).unlink(missing_ok=True)
