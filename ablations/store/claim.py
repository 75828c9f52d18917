"""A claim on a run folder, so two overlapping submissions never train the same run at once.

The claim file records who holds it: a SLURM job (checked against the scheduler with squeue) or a
local process (its host, pid, start time and boot id, so a later process that reuses the pid is not
taken for it). A claim whose holder is gone is stale and is taken over, so a crashed job never blocks
its run. A claim file is created whole (written under a temporary name, then hard-linked to
claim.json, which fails if one exists): an empty or unreadable claim.json is therefore never a claim
being written, and counts as no claim.
"""
import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from ablations.store.layout import CLAIM, pid_alive, process


class ClaimError(OSError):
    """A claim.json that is neither a claim nor removable (a folder, a file we may not delete)."""


def holder() -> dict:
    """Who this process is: its SLURM job (array jobs by their array id), host, pid, start time and boot
    id, and when it took the claim."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and (
        f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}")
    return {"job": job or os.environ.get("SLURM_JOB_ID"), **process(), "since": time.time()}


ALIVE = ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED", "CONFIGURING", "COMPLETING")  # squeue's %T states


def squeue(job_ids) -> dict | None:
    """job id -> state (`squeue -h -r -o "%i %T"`: array tasks one per line) of those of `job_ids` SLURM still
    knows; None when squeue cannot be asked (not installed, or no answer in 30 s). The one squeue call."""
    if not job_ids:
        return {}  # an empty -j would list every job
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(sorted(set(job_ids)))],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return dict(line.split() for line in out.splitlines() if len(line.split()) == 2)


def job_alive(job_id: str) -> bool:
    """Whether SLURM still knows the job (or any task of the array) as pending, running, requeued or suspended."""
    states = squeue([job_id])
    if states is None:
        return True  # cannot tell: be safe and treat it as alive
    return any(s in ALIVE for s in states.values())


def alive(h: dict) -> bool:
    """Whether the holder is alive: its SLURM job is known to squeue, or its process lives on this host
    (`layout.pid_alive`: same pid, start time and boot; a process on another host cannot be checked and
    counts as alive)."""
    return job_alive(h["job"]) if h.get("job") else pid_alive(h)


def checkable(h: dict) -> bool:
    """Whether `alive(h)` is known rather than assumed: a SLURM job, or a process on this host."""
    return bool(h.get("job")) or h.get("host") == socket.gethostname()


_warned = set()


def _warn(path, why):
    if str(path) not in _warned:
        _warned.add(str(path))
        print(f"warning: {path}: {why}; it counts as no claim", file=sys.stderr, flush=True)


def _load(path) -> tuple[dict | None, tuple | None]:
    """(claim, (device, inode) of the file) or (None, None) when there is none; an empty or unreadable
    file is (None, its inode), with a warning naming it."""
    try:
        with open(path, "rb") as f:
            ident = (os.fstat(f.fileno()).st_dev, os.fstat(f.fileno()).st_ino)
            blob = f.read()
    except FileNotFoundError:
        return None, None
    except OSError as e:
        if not os.path.lexists(path):
            return None, None
        _warn(path, f"unreadable ({e.strerror or e})")
        return None, (None, None)
    try:
        h = json.loads(blob.decode("utf-8"))
    except ValueError:
        h = None
    if not isinstance(h, dict) or not (h.get("job") or h.get("pid")):
        _warn(path, "empty" if not blob else "not a claim (neither a SLURM job nor a pid)")
        return None, ident
    return h, ident


def read(folder) -> dict | None:
    """The claim on `folder`, or None when there is none or it is empty or unreadable (warned once)."""
    return _load(Path(folder) / CLAIM)[0]


def same(a: dict, b: dict) -> bool:
    """Whether two claims name one holder: the same SLURM job, or the same process (host, pid, and the
    start time and boot id where both record them)."""
    if a.get("job") or b.get("job"):
        return a.get("job") == b.get("job")
    return all(a.get(k) == b.get(k) for k in ("host", "pid", "start", "boot")
               if k in ("host", "pid") or (a.get(k) is not None and b.get(k) is not None))


def _remove(path, ident):
    """Remove the claim file whose (device, inode) is `ident`, and nothing else: it is moved aside
    first, so a fresh claim that another process created meanwhile is put back, not deleted."""
    if os.path.isdir(path) and not os.path.islink(path):
        raise ClaimError(f"{path}: a folder, not a claim; remove it by hand")
    aside = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.stale.tmp")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ClaimError(f"{path}: not a claim and cannot be removed ({e.strerror or e}); remove it by hand") from None
    st = os.lstat(aside)
    if ident[1] is not None and (st.st_dev, st.st_ino) != ident:
        try:
            os.link(aside, path)  # someone else's fresh claim: put it back
        except FileExistsError:
            pass
    os.unlink(aside)


def _create(path, me) -> bool:
    """Create claim.json holding `me`, whole, unless one exists. Mode 0666 minus the umask."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileNotFoundError:
            return False  # our temporary file was removed as an orphan meanwhile: look again
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            return _create_in_place(path, me)  # a file system without hard links
        return True
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


def _create_in_place(path, me) -> bool:
    """The fallback: create claim.json exclusively and write it (a reader may briefly see it empty)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
        f.flush()
        os.fsync(f.fileno())
    return True


def acquire(folder) -> tuple[bool, dict | None]:
    """(True, None) when this process now holds the claim; (False, holder) when a live holder has it.
    A stale claim (its holder gone) and an empty or unreadable one are removed and taken over."""
    me, path = holder(), Path(folder) / CLAIM
    path.parent.mkdir(parents=True, exist_ok=True)
    current = None
    for _ in range(5):
        if _create(path, me):
            return True, None
        current, ident = _load(path)
        if ident is None:
            continue  # gone meanwhile: try again
        if current is not None and same(current, me):
            return True, None
        if current is not None and alive(current):
            return False, current
        _remove(path, ident)  # stale (its holder is gone), empty or unreadable
    return False, current


def release(folder):
    """Remove this process's claim on `folder` (never another's)."""
    path = Path(folder) / CLAIM
    current, ident = _load(path)
    if current is not None and same(current, holder()):
        _remove(path, ident)


def remove(folder) -> dict | None:
    """Remove the claim on `folder` whoever holds it (`ablate release`); returns what it held."""
    path = Path(folder) / CLAIM
    current, ident = _load(path)
    if ident is not None:
        _remove(path, ident)
    return current


def describe(h: dict, now: float | None = None, path=None) -> str:
    """Who holds a claim and for how long, e.g. 'job 1234_5, 3 min' or 'node7 pid 4242, 2 h'."""
    who = f"job {h['job']}" if h.get("job") else f"{h.get('host', '?')} pid {h.get('pid', '?')}"
    since = h.get("since")
    if since is None and path is not None:
        try:
            since = os.stat(path).st_mtime
        except OSError:
            since = None
    return who if since is None else f"{who}, {_age((now or time.time()) - since)}"


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(max(seconds, 0))} s"
