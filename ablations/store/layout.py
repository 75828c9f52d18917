"""The one definition of where things live in a runs root. No torch.

    <runs root>/
      <run_id>/                 one folder per training config, shared by every spec that names it
        config.json             the resolved TrainConfig (written first)
        status.json             state, step, reason, pid, requeues/restarts
        claim.json              who is training or evaluating it now (a SLURM job or a local pid)
        ckpt-<step:08d>.pt      the last two checkpoints
        rows.jsonl              one JSON row per number (ablations/store/schema.py)
        rows.partial.jsonl      lines set aside on resume: rows of a torn append, lines that are not rows
        samples-<setting>.png   a sample grid per sampler setting (-sampleseed<n>: of a second sample set)
        samples-<setting>-seed<sample_seed>.npz   its generated images (uint8), scored by every metric
        solver-ref-ddim<T>[-noclip]-seed<sample_seed>.npz   DDIM (eta 0, all T steps) endpoints for solver_rms
        log.txt
        asked/<step:08d>          a checkpoint step some spec that names the run asked for, holding that spec's
                                name: training keeps these checkpoints whichever spec trains the run (`ask`)
        migrated/               rows (and sample grids) migration set aside, to be computed again
      _slurm/<spec>/            per spec: submissions.jsonl and submitit's job logs (`slurm_folder`)
      _superseded/              run folders migration replaced by another folder of the same run (`superseded`;
                                named _migrated/ before, and still skipped as every `_` folder is)
      .cache/fid/               reference statistics for FID (shared: its orphans go only when an hour old)
      .cache/inductor/          torch.compile's kernels, shared by the runs of a grid
"""
import os
import re
import socket
import time
from pathlib import Path

from ablations.store.io import read_json, write_json

CONFIG, STATUS, CLAIM, ROWS, LOG = "config.json", "status.json", "claim.json", "rows.jsonl", "log.txt"
PARTIAL = "rows.partial.jsonl"
ASKED = "asked"
PENDING, RUNNING, INTERRUPTED, DONE, FAILED = "pending", "running", "interrupted", "done", "failed"
UNKNOWN = "unknown"  # status.json is there but cannot be read
INVALID = "invalid"  # the folder does not hold the run its id names (ablations/running/ledger.py: `check_folder`)
NEEDS_EVAL = "needs-eval"  # trained, but the spec asks for rows not yet written
UNSCORABLE = "unscorable"  # this spec's, not the run's: it asks for a checkpoint the run trained past unkept
RUN_ID = re.compile(r"[0-9a-f]{10}")
CHECKPOINT = re.compile(r"ckpt-(\d{8})\.pt")
COUNTERS = ("requeues", "restarts", "training")  # kept across status updates; `training` names the training


def run_folder(root, run_id: str) -> Path:
    if not RUN_ID.fullmatch(run_id):
        raise ValueError(f"not a run id: {run_id!r}")
    return Path(root) / run_id


def run_ids(root) -> list[str]:
    """Every run folder's id under `root`."""
    return sorted(p.name for p in Path(root).glob("*") if RUN_ID.fullmatch(p.name) and (p / CONFIG).exists())


def superseded(root) -> Path:
    """Where migration keeps a run folder that another folder of the same run replaced."""
    return Path(root) / "_superseded"


def slurm_folder(root, spec_name: str) -> Path:
    """Where a spec's SLURM submissions and job logs go: <root>/_slurm/<spec>/."""
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


ORPHAN = re.compile(r"\..+\.tmp|tmp[a-z0-9_]{8}")  # ablations/store/io.py's temp names; torch-fidelity's own, of old


def orphans(folder, older_than_s: float = 0.0) -> list[Path]:
    """Temporary files left by writes that were killed before their rename, untouched for `older_than_s`
    (in a folder that several processes write, such as the FID cache, a younger one may be in use)."""
    found, now = [], time.time()
    for p in Path(folder).glob("*"):
        try:
            if ORPHAN.fullmatch(p.name) and p.is_file() and now - p.stat().st_mtime >= older_than_s:
                found.append(p)
        except FileNotFoundError:  # renamed or removed by its writer meanwhile
            pass
    return sorted(found)


def ask(folder, steps, who: str):
    """Record in the run's folder that spec `who` scores the checkpoints of `steps`, before any process trains
    it: one file per step, made at once or left as it is, so two specs writing at the same time lose
    nothing. Training keeps every asked checkpoint (`asked`), so what a spec gets from a shared run does
    not depend on which spec trained it."""
    here = Path(folder) / ASKED
    here.mkdir(parents=True, exist_ok=True)
    for step in steps:
        try:
            fd = os.open(here / f"{int(step):08d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(who + "\n")


def asked(folder) -> set[int]:
    """The checkpoint steps the specs that name the run asked for (`ask`)."""
    try:
        return {int(p.name) for p in (Path(folder) / ASKED).iterdir() if p.name.isdigit()}
    except OSError:
        return set()


def last_step(folder) -> int:
    found = checkpoints(folder)
    return checkpoint_step(found[-1]) if found else 0


def trained_step(folder, status: dict | None = None, last: int | None = None) -> int:
    """How far the run was trained: its newest checkpoint (`last`, when the caller has it), or the step a
    finished run's status.json gives (a record keeps no checkpoint: ablations/store/records.py)."""
    status = read_status(folder) if status is None else status
    done = status.get("step") if status.get("state") == DONE else 0
    return max(last_step(folder) if last is None else last, done if isinstance(done, int) else 0)


def sample_grid_name(sampler: str, steps: int, eta: float, clip_x0: bool, spacing: str = "leading", *,
                     train_step: int | None = None, sample_seed: int = 0) -> str:
    """The sample grid PNG of a setting at checkpoint `train_step` (None: the name before checkpoints were scored);
    a second sample set (`sample_seed` > 0) has its own grid beside sample seed 0's, the one the figures show."""
    spaced = "" if spacing in (None, "leading") or spacing != spacing else f"-{spacing}"
    at = "" if train_step is None else f"-step{int(train_step)}"
    seed = f"-sampleseed{int(sample_seed)}" if sample_seed else ""
    return (f"samples-{sampler}-{int(steps)}-eta{float(eta):g}" + ("" if clip_x0 else "-noclip") + spaced + at
            + seed + ".png")


def samples_name(sampler: str, steps: int, eta: float, clip_x0: bool, spacing: str = "leading", *,
                 sample_seed: int, train_step: int | None = None) -> str:
    """The kept images of a sampler setting at a checkpoint: image i is the same for any count, so one
    file serves every n."""
    return (sample_grid_name(sampler, steps, eta, clip_x0, spacing, train_step=train_step)[:-len(".png")]
            + f"-seed{int(sample_seed)}.npz")


def solver_reference_name(T: int, clip_x0: bool, *, sample_seed: int, train_step: int | None = None) -> str:
    at = "" if train_step is None else f"-step{int(train_step)}"
    return f"solver-ref-ddim{int(T)}" + ("" if clip_x0 else "-noclip") + f"-seed{int(sample_seed)}{at}.npz"


def read_status(folder) -> dict:
    """The run's status.json; `pending` when there is none, `unknown` (with the reason) when it is there
    but is not a status."""
    path = Path(folder) / STATUS
    status = read_json(path, None)
    if status is not None and isinstance(status.get("state"), str):
        return status
    if not os.path.lexists(path):
        return {"state": PENDING}
    return {"state": UNKNOWN, "reason": f"{path} is unreadable (not a JSON status); the next run rewrites it"}


def write_status(folder, state, **extra):
    old = read_status(folder)
    extra = {**{k: old[k] for k in COUNTERS if k in old}, **extra}
    write_json(Path(folder) / STATUS, {"state": state, "updated": time.time(), **process(), **extra})


def boot_id() -> str | None:
    """This boot of this host (Linux); None where /proc does not say."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/<pid>/stat, proc(5));
    None when it is gone or /proc does not say. A pid and this number name one process of one boot."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the name (field 2) may hold spaces; fields 3.. follow it
    return int(fields[19]) if len(fields) > 19 else None


def process() -> dict:
    """This process, as status.json and claim.json record it: host and pid, plus its start time and the
    boot id, which tell it from a later process that reuses the pid."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": start_time(os.getpid()), "boot": boot_id()}


def pid_alive(record: dict) -> bool:
    """Whether the process a status or claim records is alive. True when it ran on another host
    (unknowable). A live pid whose start time or boot id differs from the recorded ones is another
    process that reuses the pid: not alive. Records without them (older ones) are judged by pid alone."""
    if record.get("host") != socket.gethostname() or not record.get("pid"):
        return True
    if record.get("boot") and boot_id() and record["boot"] != boot_id():
        return False  # recorded before this host rebooted
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if record.get("start") is not None:
        return start_time(record["pid"]) in (record["start"], None)
    return True
