"""A run shared by several specs has one truth: its status.json says what the run is, and what one spec can
or cannot get from it is that spec's own outcome, whichever spec claimed it first. The commands that read
(list, collect) move nothing, a migration never moves a folder a live process holds, and an OS error a user
can cause (a read-only runs root) is one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny_spec

from ablations.commands.cli import main
from ablations.commands.common import migrate_store
from ablations.grid.spec import load_spec
from ablations.running.ledger import missing, state
from ablations.running.runner import run_one
from ablations.store import claim
from ablations.store.layout import asked, read_status, run_folder
from ablations.store.schema import identity, read_rows

ROOT = Path(__file__).resolve().parent.parent


def _spec(tmp_path, name, steps, norms='["group", "layer"]'):
    path = tmp_path / f"{name}.toml"
    path.write_text(tiny_spec(name, norms=norms, steps=steps, every=2))
    return path


def _ablate(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _start(path, runs):
    return subprocess.Popen([sys.executable, "-m", "ablations.commands.cli", "run", str(path), "--runs-root",
                             str(runs), "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("first", ["long", "short"])
def test_two_specs_sharing_runs_at_3_and_6_steps_started_at_once_in_either_order(tmp_path, first):
    """The fault: the 3-step spec claimed a run the 6-step spec had finished and wrote `failed` into its one
    status.json. Now every run ends done for the 6-step spec, and the 3-step spec gets its rows (its step was
    asked for before training passed it) or a per-spec reason, never a failed run."""
    paths = {"long": _spec(tmp_path, "long", 6), "short": _spec(tmp_path, "short", 3)}
    runs = tmp_path / "runs"
    order = [first, "short" if first == "long" else "long"]
    procs = {name: _start(paths[name], runs) for name in order}
    outs = {name: p.communicate(timeout=300)[0] for name, p in procs.items()}
    long, short = load_spec(paths["long"]), load_spec(paths["short"])
    assert [r.run_id for r in long.runs] == [r.run_id for r in short.runs]  # one run each, shared
    assert procs["long"].returncode == 0, outs["long"]
    assert "Traceback" not in outs["short"], outs["short"]
    for run in long.runs:
        folder = run_folder(runs, run.run_id)
        assert read_status(folder)["state"] == "done" and read_status(folder)["step"] == 6
        assert state(long, run, runs)["state"] == "done" and missing(long, run, folder) == []
        got = state(short, run, runs)
        assert got["state"] in ("done", "unscorable"), got
        if got["state"] == "done":
            assert missing(short, run, folder) == []
        else:
            assert "step(s) 3" in got["reason"] and "eval_at" in got["reason"]
            assert procs["short"].returncode == 1 and "unscorable for this spec" in outs["short"]
        assert asked(folder) == {3, 6}  # every spec that touched it said which steps it scores
        rows, bad = read_rows(folder / "rows.jsonl")
        assert bad == 0 and len({identity(r) for r in rows}) == len(rows)  # every row once
    listed = _ablate("list", paths["long"], "--runs-root", runs)
    assert listed.exit_code == 0 and "failed" not in listed.output, listed.output


def test_a_spec_that_asks_in_time_gets_its_checkpoint_kept_by_the_spec_that_trains(tmp_path):
    """The rule that makes the outcome independent of claim order: `ablate run` records the steps a spec
    scores in every run's folder before it claims any, and training keeps them, whichever spec trains."""
    long, short = load_spec(_spec(tmp_path, "long", 6)), load_spec(_spec(tmp_path, "short", 3))
    runs = tmp_path / "runs"
    from ablations.running.ledger import ask_all
    ask_all(short, short.runs, runs)
    run = long.runs[0]
    assert run_one(long, run, runs, progress=False) == "done"
    folder = run_folder(runs, run.run_id)
    assert (folder / "ckpt-00000003.pt").exists()
    assert run_one(short, short.runs[0], runs, progress=False) == "done"
    assert missing(short, short.runs[0], folder) == [] and read_status(folder)["step"] == 6


def _legacy_beside(tmp_path):
    """A finished run in its folder, and a copy of it under its legacy id (train_steps hashed)."""
    path = _spec(tmp_path, "legacy", 4, norms='["group"]')
    spec, runs = load_spec(path), tmp_path / "runs"
    run = spec.runs[0]
    assert run_one(spec, run, runs, progress=False) == "done"
    new = run_folder(runs, run.run_id)
    old = run_folder(runs, run.config.legacy_run_id())
    old.mkdir()
    config = json.loads((new / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**config, "run_id": old.name}))
    (old / "rows.jsonl").write_text((new / "rows.jsonl").read_text().replace(new.name, old.name))
    return path, spec, runs, new, old


def test_a_migration_never_moves_a_folder_a_live_process_holds(tmp_path):
    """The fault: `ablate list` migrated a legacy folder and moved the live run's folder, claim and all, to
    _superseded/, so a second `ablate run` trained the run again beside the first. Now list and collect
    only say what `ablate run` would migrate, and a migration leaves both folders while either is held."""
    path, spec, runs, new, old = _legacy_beside(tmp_path)
    rows_before = (new / "rows.jsonl").read_bytes()
    ok, _ = claim.acquire(new)  # this test's process: a live holder, as a run training
    assert ok
    try:
        for cmd in (["list"], ["collect", "--results-root", tmp_path / "res"]):
            out = _ablate(cmd[0], path, "--runs-root", runs, *cmd[1:])
            assert out.exit_code == 0 and "legacy id" in out.output and "the next `ablate run`" in out.output
            assert old.exists() and (new / "claim.json").exists()
        migrate_store(runs)  # what `ablate run` calls, while the claim lives
        assert old.exists() and (new / "claim.json").exists()
    finally:
        claim.release(new)
    out = _ablate("run", path, "--runs-root", runs, "--no-progress")  # the claim is free: the legacy copy goes
    assert out.exit_code == 0 and "0 to run" in out.output, out.output
    assert not old.exists() and (runs / "_superseded" / "steps" / old.name).exists()
    assert (new / "rows.jsonl").read_bytes() == rows_before  # rows once, one training history
    assert state(spec, spec.runs[0], runs)["state"] == "done"


def _read_only(tmp_path, folder):
    """`folder` mounted read-only over itself (root and a kernel that allows bind mounts), or a skip saying
    why: root writes through file modes, so only a read-only mount makes one."""
    if os.geteuid() != 0:
        pytest.skip("a read-only mount needs root")
    ro = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if ro.returncode:
        pytest.skip(f"mount --bind failed: {ro.stderr.strip()}")
    again = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True, text=True)
    if again.returncode:
        subprocess.run(["umount", str(folder)])
        pytest.skip(f"a read-only remount failed: {again.stderr.strip()}")


def _one_line(out, *words):
    assert out.exit_code != 0, out.output
    assert out.exception is None or isinstance(out.exception, SystemExit), repr(out.exception)
    assert "Traceback" not in out.output
    assert [line for line in out.output.splitlines() if all(w in line for w in words)], out.output


def test_a_read_only_root_is_one_line_for_every_command_that_writes_there(tmp_path):
    """The fault: `OSError: [Errno 30] Read-only file system` from claim.acquire -> mkdir, as a traceback."""
    path = _spec(tmp_path, "ro", 4, norms='["group"]')
    runs, results = tmp_path / "runs", tmp_path / "results"
    runs.mkdir()
    assert _ablate("run", path, "--runs-root", runs, "--no-progress").exit_code == 0
    assert _ablate("collect", path, "--runs-root", runs, "--results-root", results).exit_code == 0
    other = _spec(tmp_path, "ro2", 6, norms='["group"]')  # a run to train, in the read-only root
    _read_only(tmp_path, runs)
    try:
        _one_line(_ablate("run", other, "--runs-root", runs, "--no-progress"), str(runs), "Read-only file system")
        assert _ablate("list", path, "--runs-root", runs).exit_code == 0  # reads only
        _read_only(tmp_path, results)
        try:
            _one_line(_ablate("collect", path, "--runs-root", runs, "--results-root", results), str(results),
                      "Read-only file system")
            _one_line(_ablate("results", "--results-root", results), str(results), "Read-only file system")
        finally:
            subprocess.run(["umount", str(results)])
    finally:
        subprocess.run(["umount", str(runs)])


def test_a_full_disk_at_a_checkpoint_write_is_the_diskfull_line(tmp_path):
    """The fault: a full disk during torch.save gave `RuntimeError: [enforce fail at inline_container.cc:672]
    unexpected pos`. A runs root on a tmpfs too small for the first checkpoint: the run fails with the
    DiskFull line (the checkpoint's path and the free space), and nothing is left half-written."""
    path = _spec(tmp_path, "full", 4, norms='["group"]')
    runs = tmp_path / "runs"
    runs.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a small tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(runs)], capture_output=True,
                          text=True)
    if made.returncode:
        pytest.skip(f"mount -t tmpfs failed: {made.stderr.strip()}")
    try:
        out = _ablate("run", path, "--runs-root", runs, "--no-progress")
        run = load_spec(path).runs[0]
        folder = run_folder(runs, run.run_id)
        status = read_status(folder)
        assert out.exit_code == 1 and "Traceback" not in out.output, out.output
        assert status["state"] == "failed" and status["reason"].startswith("DiskFull: disk full writing "), status
        assert str(folder / "ckpt-00000002.pt") in status["reason"] and "free there" in status["reason"]
        assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(runs)])
