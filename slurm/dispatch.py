"""Dispatch a spec's grid to SLURM through submitit: one job array, non-blocking, idempotent.

The submitted callable, `RunJob`, runs `ablations.running.runner.run_one` (the same code as `ablate run`).
It implements submitit's checkpoint protocol: on the timeout or preemption signal, `checkpoint()`
asks the training loop to stop at the next step boundary, waits for it to save a checkpoint, and
returns a new submission of itself, which submitit requeues. The requeued job resumes from that
checkpoint, so it ends bitwise identical to an uninterrupted run.
"""
import os
import subprocess
import threading
import time
from pathlib import Path

import submitit

from ablations.store import claim
from ablations.running import ledger, runner
from ablations.store.io import append_jsonl, read_jsonl
from ablations.store.layout import (DONE, FAILED, INTERRUPTED, RUNNING, UNSCORABLE, read_status, run_folder,
                                    slurm_folder, write_status)
from ablations.store.reads import Reads
from ablations.grid.spec import Spec, load_spec

SUBMISSIONS = "submissions.jsonl"


class RunJob:
    """Callable submitted per array task: `RunJob(...)(run_id)`."""

    def __init__(self, spec_path, scale, runs_root, data_root=None, max_requeues=3, device=None, overrides=()):
        self.args = dict(spec_path=str(spec_path), scale=scale, runs_root=str(runs_root), data_root=data_root,
                         max_requeues=max_requeues, device=device, overrides=list(overrides))
        self.__dict__.update(self.args)

    def __getstate__(self):
        return self.args  # no thread or event: those live only in the running job

    def __setstate__(self, state):
        self.__init__(**state)

    def __call__(self, run_id: str) -> str:
        import torch

        from ablations.running.parallel import from_main, is_main
        from slurm.distributed import init_from_slurm
        if os.environ.get("SLURM_CPUS_PER_TASK"):
            torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
        spec = load_spec(self.spec_path, self.scale, overrides=self.overrides)
        run = next((r for r in spec.runs if r.run_id == run_id), None)
        if run is None:
            raise ValueError(f"run {run_id} is no longer in {self.spec_path} (scale {self.scale}): the spec or the "
                             "code changed after it was submitted; submit again")
        folder = run_folder(self.runs_root, run_id)
        init_from_slurm()
        ok, holder = from_main(claim.acquire(folder) if is_main() else None)  # every task skips, or none
        if not ok:
            return f"skipped: run {run_id} is claimed by {holder}"
        if is_main():
            _note_start(folder)
        self._stop, result = threading.Event(), []
        worker = threading.Thread(target=lambda: result.append(runner.run_one(
            spec, run, self.runs_root, data_root=self.data_root, device=self.device, progress=False,
            should_stop=self._stop.is_set)), daemon=True)
        self._worker = worker
        worker.start()
        while worker.is_alive():
            worker.join(timeout=0.5)  # short waits keep the main thread free to handle signals
        state = result[0] if result else FAILED
        if is_main() and state in (DONE, FAILED, UNSCORABLE):
            claim.release(folder)
        return state

    def checkpoint(self, run_id: str):
        """submitit calls this on the timeout/preemption signal, on global rank 0."""
        folder = run_folder(self.runs_root, run_id)
        if getattr(self, "_worker", None) is not None:
            self._stop.set()
            self._worker.join()  # the loop saves a checkpoint at the next step boundary, then returns
        status = read_status(folder)
        if status["state"] in (DONE, FAILED, UNSCORABLE):
            return None  # nothing to resume
        if status["state"] not in (RUNNING, INTERRUPTED):
            # signalled before its run started (importing torch, waiting on the claim): nothing to save and no
            # status to count requeues in, so the job's restarts (ours included) as SLURM counts them
            if int(os.environ.get("SLURM_RESTART_COUNT", "0")) >= self.max_requeues:
                return None
            return submitit.helpers.DelayedSubmission(RunJob(**self.args), run_id)
        requeues = status.get("requeues", 0) + 1
        if requeues > self.max_requeues:
            write_status(folder, FAILED, step=status.get("step"), requeues=requeues - 1,
                         reason=f"stopped by the scheduler more than max_requeues={self.max_requeues} times")
            claim.release(folder)
            return None
        write_status(folder, RUNNING, step=status.get("step"), requeues=requeues)
        return submitit.helpers.DelayedSubmission(RunJob(**self.args), run_id)


def _note_start(folder):
    """Record SLURM_RESTART_COUNT: every requeue of the job, ours (checkpoint) or SLURM's own
    (`scontrol requeue`, node failure)."""
    status = read_status(folder)
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    if restarts > status.get("restarts", 0):
        write_status(folder, RUNNING, step=status.get("step"), restarts=restarts)


def executor_for(spec: Spec, runs_root, *, cluster=None, partition=None, nodes=1, gpus_per_node=0,
                 tasks_per_node=None, cpus_per_task=None, mem_gb=None, time_min=60, array_parallelism=None,
                 account=None, qos=None, constraint=None, max_requeues=3, signal_delay_s=90):
    """(a submitit executor, the parameters given to it); the sbatch option mapping is in slurm/README.md."""
    folder = slurm_folder(runs_root, spec.name) / "%j"
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=max_requeues)
    params = dict(name=f"ablate-{spec.name}", timeout_min=time_min, nodes=nodes,
                  tasks_per_node=tasks_per_node or max(gpus_per_node, 1))
    if cpus_per_task:
        params["cpus_per_task"] = cpus_per_task
    if gpus_per_node:
        params["gpus_per_node"] = gpus_per_node
    if mem_gb:
        params["mem_gb"] = mem_gb
    slurm = dict(slurm_partition=partition, slurm_account=account, slurm_qos=qos, slurm_constraint=constraint,
                 slurm_array_parallelism=array_parallelism, slurm_signal_delay_s=signal_delay_s)
    params.update({k: v for k, v in slurm.items() if v is not None})
    ex.update_parameters(**params)
    return ex, params


def pending_runs(spec: Spec, runs_root, reads: Reads | None = None) -> list:
    """Runs that are neither complete nor held by a live job (each folder's files through `reads`, the
    command's one read of them: ablations/store/reads.py)."""
    todo, reads = [], reads or Reads()
    for run in spec.runs:
        if ledger.state(spec, run, runs_root, reads)["state"] in (DONE, UNSCORABLE):
            continue
        held = reads.of(run_folder(runs_root, run.run_id)).claim
        if held is not None and claim.alive(held):
            continue
        todo.append(run)
    return todo


def submit(spec: Spec, runs_root, *, data_root=None, device=None, max_requeues=3, reads: Reads | None = None,
           **params) -> list:
    """Submit the pending runs as one job array; returns the submitit jobs (empty when nothing is pending)."""
    todo = pending_runs(spec, runs_root, reads)
    if not todo:
        return []
    ledger.ask_all(spec, todo, runs_root)
    ex, _ = executor_for(spec, runs_root, max_requeues=max_requeues, **params)
    job = RunJob(spec.path, spec.scale, runs_root, data_root=data_root, max_requeues=max_requeues, device=device,
                 overrides=spec.overrides)
    jobs = ex.map_array(job, [r.run_id for r in todo])
    record = [{"job_id": j.job_id, "run_id": r.run_id, "submitted": time.time(), "cluster": ex.cluster,
               "stdout": str(j.paths.stdout), "stderr": str(j.paths.stderr)} for j, r in zip(jobs, todo)]
    slurm_folder(runs_root, spec.name).mkdir(parents=True, exist_ok=True)
    append_jsonl(slurm_folder(runs_root, spec.name) / SUBMISSIONS, record)
    return jobs


def submissions(spec: Spec, runs_root) -> dict:
    """run_id -> its latest submission record."""
    records, _ = read_jsonl(slurm_folder(runs_root, spec.name) / SUBMISSIONS, required=("run_id", "job_id"))
    return {r["run_id"]: r for r in records}


def queue_states(job_ids) -> dict:
    """job id -> SLURM state, for jobs squeue still knows (none when it cannot be asked)."""
    return claim.squeue(job_ids) or {}


def status_table(spec: Spec, runs_root, reads: Reads | None = None) -> list[dict]:
    """`ablate list`'s table (ledger.table) with the SLURM columns: requeues, job, queue state, log."""
    subs = submissions(spec, runs_root)
    queue = queue_states([s["job_id"] for s in subs.values()])
    out, reads = [], reads or Reads()
    for run, base in zip(spec.runs, ledger.table(spec, runs_root, reads=reads)):
        st, sub = reads.of(run_folder(runs_root, run.run_id)).status, subs.get(run.run_id, {})
        q = queue.get(sub.get("job_id", ""))
        state = base["state"]
        if state == "pending" and sub and q not in claim.ALIVE:
            state = "lost"  # submitted but neither queued nor started
        elif state in (RUNNING, "interrupted") and q in ("PENDING", "REQUEUED"):
            state = "requeued"
        elif state in (RUNNING, "interrupted") and sub and q not in claim.ALIVE:
            state = "interrupted"  # its job is gone without finishing: resubmit to resume
            base["reason"] = base["reason"] or f"job ended without finishing: {_last_line(sub.get('stderr'))}"
        requeues = max(st.get("requeues", 0), st.get("restarts", 0))  # restarts include our requeues
        out.append({**base, "state": state, "requeues": requeues, "job": sub.get("job_id", ""), "queue": q or "",
                    "log": sub.get("stderr", "")})
    return out


def _last_line(path) -> str:
    """The last non-empty line of a job's log (e.g. slurmstepd's oom-kill or node-failure message)."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except (OSError, TypeError):
        return "no log"
    return lines[-1][-200:] if lines else "empty log"


def cancel(spec: Spec, runs_root) -> list[str]:
    """scancel every job of the spec that SLURM still knows; returns their ids."""
    subs = submissions(spec, runs_root)
    alive = sorted(j for j, q in queue_states([s["job_id"] for s in subs.values()]).items() if q in claim.ALIVE)
    if alive:
        subprocess.run(["scancel", *alive], check=True)
    return alive
