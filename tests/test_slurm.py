"""Dispatch tests against a real single-node SLURM cluster (slurm/local_cluster.sh).

In CI they must run: a cluster that cannot be started fails them. Elsewhere they skip, with the
reason, when the cluster cannot be started (not root, no apt-get).
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_spec

from ablations.run import data
from ablations.commands.cli import main
from ablations.store.io import read_jsonl
from ablations.store.layout import checkpoint_step, checkpoints, read_status, run_folder
from ablations.grid.spec import load_spec
from ablations.running.training import train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    r = subprocess.run(["bash", str(ROOT / "slurm" / "local_cluster.sh"), "up"], capture_output=True, text=True,
                       timeout=900)
    if r.returncode != 0:
        reason = (r.stderr.strip().splitlines() or ["unknown error"])[-1]
        if os.environ.get("CI"):
            pytest.fail(f"the local SLURM cluster must start in CI: {reason}")
        pytest.skip(f"no local SLURM cluster: {reason}")


def _spec(tmp_path, name, norms='["group", "layer"]', steps=3, every=2, extra=""):
    path = tmp_path / f"{name}.toml"
    path.write_text(tiny_spec(name, norms, steps, every).replace("[grid]", extra + "[grid]"))
    return path


def _ablate(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def _wait(spec, runs, predicate, timeout=600):
    t0 = time.time()
    while time.time() - t0 < timeout:
        states = [read_status(run_folder(runs, r.run_id)) for r in spec.runs]
        if predicate(states):
            return states
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout}s: {states}\n" + _ablate("status", spec.path, "--runs-root", runs).output)


def _status_row(path, runs) -> dict:
    """The first run's row of `ablate status`, by column name (the reason column may be empty)."""
    header, line = _ablate("status", path, "--runs-root", runs).output.splitlines()[:2]
    starts, at = [], 0
    for c in header.split():
        at = header.index(c, at)
        starts.append(at)
    starts.append(None)
    return {c: line[a:b].strip() for c, a, b in zip(header.split(), starts, starts[1:])}


def _finished(states):
    return all(s["state"] in ("done", "failed") for s in states)


def _weights(folder):
    state = torch.load(checkpoints(folder)[-1], weights_only=False)
    return {f"{part}.{k}": v for part in ("model", "ema") for k, v in state[part].items()}


REFERENCE = """
import sys
from pathlib import Path

import torch

from ablations.grid.spec import load_spec
from ablations.run import data
from ablations.running.training import train

torch.set_num_threads(1)
run = load_spec(sys.argv[1]).runs[0]
train(run.config, Path(sys.argv[2]), data.load(run.config.dataset, "train")[0], device="cpu", progress=False)
"""
_REFERENCES = {}


def _start_reference(path, tmp_path):
    """The spec's run trained without interruption, with the job's thread count (1), in a process of its own
    that runs on the other core while the job runs: once per run id and train_steps (the id leaves
    train_steps out). Returns what `_reference` reads."""
    run = load_spec(path).runs[0]
    at = (run.run_id, run.config.train_steps)
    if at not in _REFERENCES:
        out = tmp_path / "reference" / run.run_id
        proc = subprocess.Popen([sys.executable, "-c", REFERENCE, str(path), str(out)], cwd=ROOT,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _REFERENCES[at] = (proc, out)
    return _REFERENCES[at]


def _reference(started) -> dict:
    proc, out = started
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    return _weights(out)


def test_array_submission_failures_status_and_idempotent_resubmit(cluster, tmp_path):
    norms = '["group", "layer", { norm = "group", lr = 1e30, grad_clip = 0.0 }]'
    path = _spec(tmp_path, "array", norms=norms)
    spec, runs = load_spec(path), tmp_path / "runs"
    out = _ablate("submit", path, "--partition", "debug", "--cpus-per-task", "1", "--time", "10",
                  "--runs-root", runs)
    assert out.exit_code == 0 and "submitted 3 jobs as array" in out.output, out.output
    status = _ablate("status", path, "--runs-root", runs).output.splitlines()[1:]
    assert len(status) == 3 and all(r.run_id in line for r, line in zip(spec.runs, status))
    assert all(line.split()[3] in ("pending", "running") for line in status), status  # run_id norm seed STATE
    states = _wait(spec, runs, _finished)
    good, good2, bad = states
    assert good["state"] == good2["state"] == "done"
    assert bad["state"] == "failed" and "non-finite loss" in bad["reason"]
    for run in spec.runs[:2]:
        rows, _ = read_jsonl(run_folder(runs, run.run_id) / "rows.jsonl")
        assert {"fid", "nll_bpd", "train_img_per_s", "sample_img_per_s"} <= {r["metric"] for r in rows}
    table = _ablate("status", path, "--runs-root", runs).output
    assert table.count(" done ") == 2 and table.count(" failed ") == 1 and "non-finite loss" in table
    again = _ablate("submit", path, "--partition", "debug", "--runs-root", runs, "--cpus-per-task", "1")
    # only the failed run is resubmitted (it is not complete); the finished ones never are
    assert "submitted 1 job:" in again.output, again.output
    assert _ablate("status", path, "--runs-root", runs).output.count(" done ") == 2
    cancelled = _ablate("cancel", path, "--runs-root", runs).output
    assert cancelled.startswith("cancelled 1 jobs"), cancelled


def test_complete_grid_submits_zero_jobs(cluster, tmp_path):
    path = _spec(tmp_path, "zero", norms='["group"]')
    spec, runs = load_spec(path), tmp_path / "runs"
    _ablate("run", path, "--runs-root", runs, "--no-progress")
    out = _ablate("submit", path, "--partition", "debug", "--runs-root", runs)
    assert out.exit_code == 0 and "0 jobs submitted: all 1 runs of zero are complete" in out.output
    assert not (runs / spec.name / "submissions.jsonl").exists()


# 400 steps of the tiny net (about 15-30 s on one thread): a requeue or a cancel lands mid-training, at a
# checkpoint between 40 and 250, with the 0.5 s polls of `_wait`
MID_RUN = dict(norms='["group"]', steps=400, every=20)


def _mid_training(folder):
    return lambda s: checkpoints(folder) and 40 <= checkpoint_step(checkpoints(folder)[-1]) < 250


def test_scontrol_requeue_resumes_bitwise_identical(cluster, tmp_path):
    path = _spec(tmp_path, "requeue", **MID_RUN)
    spec, runs = load_spec(path), tmp_path / "runs"
    reference = _start_reference(path, tmp_path)
    out = _ablate("submit", path, "--partition", "debug", "--cpus-per-task", "1", "--runs-root", runs)
    job = out.output.split("submitted 1 job: ")[1].split()[0]
    folder = run_folder(runs, spec.runs[0].run_id)
    _wait(spec, runs, _mid_training(folder))
    interrupted_at = checkpoint_step(checkpoints(folder)[-1])
    subprocess.run(["scontrol", "requeue", job], check=True)
    during = _status_row(path, runs)
    assert during["state"] in ("requeued", "running"), during
    states = _wait(spec, runs, _finished)
    assert states[0]["state"] == "done" and states[0].get("restarts", 0) >= 1, states
    after = _status_row(path, runs)
    assert after["state"] == "done" and int(after["requeues"]) >= 1, after
    log = (folder / "log.txt").read_text()
    assert log.count("training on") >= 2, log
    ref = _reference(reference)
    got = _weights(folder)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    print(f"requeued at checkpoint step {interrupted_at}; restarts={states[0]['restarts']}")


def test_cancelled_job_shows_interrupted_and_a_resubmission_resumes_bitwise_identical(cluster, tmp_path):
    """A job killed from outside (scancel, like a node failure) cannot write its status: `ablate status`
    reports it interrupted with its log's last line; resubmitting takes over the stale claim and resumes."""
    path = _spec(tmp_path, "cancel", **MID_RUN)
    spec, runs = load_spec(path), tmp_path / "runs"
    reference = _start_reference(path, tmp_path)
    _ablate("submit", path, "--partition", "debug", "--cpus-per-task", "1", "--runs-root", runs)
    folder = run_folder(runs, spec.runs[0].run_id)
    _wait(spec, runs, _mid_training(folder))
    assert _ablate("cancel", path, "--runs-root", runs).output.startswith("cancelled 1 jobs")
    t0 = time.time()
    while "interrupted" not in (table := _ablate("status", path, "--runs-root", runs).output):
        assert time.time() - t0 < 120, table
        time.sleep(0.5)
    assert "job ended without finishing" in table and ("Killed" in table or "CANCELLED" in table), table
    assert (folder / "claim.json").exists()  # left behind by the killed job
    again = _ablate("submit", path, "--partition", "debug", "--cpus-per-task", "1", "--runs-root", runs)
    assert "submitted 1 job:" in again.output, again.output
    states = _wait(spec, runs, _finished)
    assert states[0]["state"] == "done", states
    assert (folder / "log.txt").read_text().count("training on") == 2
    ref, got = _reference(reference), _weights(folder)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def _steps_per_second(tmp_path) -> float:
    """This machine's training speed for the tiny spec on one thread (machines differ by 2-3x)."""
    spec = load_spec(_spec(tmp_path, "speed", norms='["layer"]', steps=60, every=1000))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.time()
        train(spec.runs[0].config, tmp_path / "speed", data.load("fashion_mnist", "train")[0], device="cpu",
              progress=False)
        return 60 / (time.time() - t0)
    finally:
        torch.set_num_threads(threads)


def test_timeout_signal_checkpoints_requeues_and_resumes_bitwise_identical(cluster, tmp_path):
    """The job gets SLURM's shortest limit, 1 min, and the checkpoint signal 30 s before it. slurmctld checks
    time limits every 30 s (compiled in) and signals at the first check within the delay plus that period,
    so each job is signalled somewhere in its first 30 s (measured here: 2 s and 9 s). The run is sized to
    outlast that window (30 s of training on this machine), so its first job is always signalled; each
    requeue then waits the cluster's cred_expire (slurm/local_cluster.sh). Faster than this, the signal
    could miss the run and the test would not test the timeout."""
    steps = max(300, int(30 * _steps_per_second(tmp_path)))
    path = _spec(tmp_path, "timeout", norms='["layer"]', steps=steps, every=1000)
    path.write_text(path.read_text().replace("[eval]\n", f"[eval]\neval_at = [{steps // 3}, {2 * steps // 3}]\n"))
    spec, runs = load_spec(path), tmp_path / "runs"
    reference = _start_reference(path, tmp_path)
    out = _ablate("submit", path, "--partition", "debug", "--cpus-per-task", "1", "--time", "1",
                  "--signal-delay", "30", "--max-requeues", "12", "--runs-root", runs)
    assert out.exit_code == 0, out.output
    states = _wait(spec, runs, _finished, timeout=900)
    assert states[0]["state"] == "done" and states[0].get("requeues", 0) >= 1, states
    after = _status_row(path, runs)
    assert after["state"] == "done" and int(after["requeues"]) == states[0]["requeues"], after  # not counted twice
    ref = _reference(reference)
    got = _weights(run_folder(runs, spec.runs[0].run_id))
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    rows, _ = read_jsonl(run_folder(runs, spec.runs[0].run_id) / "rows.jsonl")
    scored = [r["train_step"] for r in rows if r["metric"] in ("fid", "nll_bpd", "train_flops")]
    assert sorted(scored) == sorted([steps // 3, 2 * steps // 3, steps] * 3), scored  # each checkpoint once
    print(f"timeout requeues: {states[0]['requeues']}")


def test_two_task_gloo_run_trains_and_writes_rows(cluster, tmp_path):
    path = _spec(tmp_path, "ddp", norms='["group"]', steps=6, every=2)
    path.write_text(path.read_text().replace("[eval]\n", "[eval]\neval_at = [2, 4]\n"))  # 3 checkpoints scored
    spec, runs = load_spec(path), tmp_path / "runs"
    out = _ablate("submit", path, "--partition", "debug", "--tasks-per-node", "2", "--cpus-per-task", "1",
                  "--runs-root", runs)
    assert out.exit_code == 0, out.output
    states = _wait(spec, runs, _finished)
    assert states[0]["state"] == "done", states
    rows, _ = read_jsonl(run_folder(runs, spec.runs[0].run_id) / "rows.jsonl")
    fids = [r for r in rows if r["metric"] == "fid"]
    assert sorted(r["train_step"] for r in fids) == [2, 4, 6] and all(r["n"] == 32 for r in fids)  # both tasks' samples
    assert "x2 tasks" in (run_folder(runs, spec.runs[0].run_id) / "log.txt").read_text()


def test_two_tasks_skip_together_a_run_another_process_holds(cluster, tmp_path):
    """Only task 0 takes the claim and checks the folder; every task follows its decision, so a held
    run is skipped by both tasks (task 1 alone would train into a collective nobody joins)."""
    from ablations.store import claim
    from slurm.dispatch import RunJob, executor_for
    path = _spec(tmp_path, "held", norms='["group"]', steps=4, every=2)
    spec, runs = load_spec(path), tmp_path / "runs"
    run = spec.runs[0]
    assert claim.acquire(run_folder(runs, run.run_id))[0]  # held by this test's process, alive
    ex, _ = executor_for(spec, runs, partition="debug", tasks_per_node=2, cpus_per_task=1, time_min=5)
    results = ex.submit(RunJob(path, spec.scale, runs), run.run_id).results()
    assert len(results) == 2 and all(r.startswith(f"skipped: run {run.run_id} is claimed") for r in results), results
    assert not (run_folder(runs, run.run_id) / "rows.jsonl").exists()


def test_debug_executor_runs_the_same_code_as_ablate_run(tmp_path):
    """submitit's debug executor (in-process, no cluster) trains the same weights as `ablate run`."""
    from slurm.dispatch import submit
    path = _spec(tmp_path, "debug", norms='["group"]')
    spec = load_spec(path)
    _ablate("run", path, "--runs-root", tmp_path / "local", "--no-progress")
    jobs = submit(spec, tmp_path / "debug", cluster="debug", time_min=5)
    assert [j.result() for j in jobs] == ["done"]
    local, debug = (_weights(run_folder(tmp_path / r, spec.runs[0].run_id)) for r in ("local", "debug"))
    assert local.keys() == debug.keys() and all(torch.equal(local[k], debug[k]) for k in local)


def test_a_job_signalled_before_its_run_starts_is_requeued_not_lost(tmp_path, monkeypatch):
    """The fault (seen in CI at a2757c9): SLURM's timeout signal reached a job still importing torch, before
    its run had a status; `checkpoint` read that as nothing to resume and returned None, so submitit did not
    requeue it and the run was lost. Now it is requeued, up to max_requeues of the job's restarts; a finished
    run still is not."""
    import submitit
    from ablations.store.layout import DONE, write_status
    from slurm.dispatch import RunJob
    job = RunJob(tmp_path / "spec.toml", None, tmp_path / "runs", max_requeues=2)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    again = job.checkpoint("0123456789")  # no run folder yet
    assert isinstance(again, submitit.helpers.DelayedSubmission) and again.args == ("0123456789",)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert job.checkpoint("0123456789") is None  # as many restarts as allowed
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    folder = run_folder(tmp_path / "runs", "abcdef0123")
    folder.mkdir(parents=True)
    write_status(folder, DONE)
    assert job.checkpoint("abcdef0123") is None
