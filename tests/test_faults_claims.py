"""Faults that must not wedge or fool the run store: empty, unreadable, stale and reused-pid claims,
claims removed by hand, tampered or incomplete run folders, and the path cases of the command line
(one line, a non-zero exit, no traceback). Also: the spec's model checks and the FLOP count are done
once per architecture, not once per run."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import tiny_spec

from ablations.running import budget
from ablations.store import claim
from ablations.grid import spec as spec_module
from ablations.commands.cli import main
from ablations.run.config import TrainConfig
from ablations.store.layout import boot_id, pid_alive, read_status, run_folder, start_time
from ablations.grid.spec import load_spec
from ablations.run.model import ARCHITECTURE, build_model

ROOT = Path(__file__).resolve().parent.parent
SPEC = tiny_spec("faults")


def _ablate(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _states(output) -> dict:
    """{run_id: state} from a listing (`ablate list`'s table)."""
    lines = [line.split() for line in output.splitlines()]
    header = next(i for i, cols in enumerate(lines) if cols[:1] == ["run_id"])
    col = lines[header].index("state")
    return {cols[0]: cols[col] for cols in lines[header + 1:] if len(cols) > col and len(cols[0]) == 10}


def _one_line_error(result, *words):
    """A failed command: non-zero exit, no traceback, and a line naming `words`."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if all(w in line for w in words)]
    assert lines, result.output


@pytest.fixture
def sleeper():
    """A live process that is not ours to hold any claim."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        while start_time(p.pid) is None:
            time.sleep(0.01)
        yield p
    finally:
        p.kill()
        p.wait()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(spec path, runs root) with the tiny spec's one run trained and evaluated once."""
    tmp = tmp_path_factory.mktemp("trained")
    path = tmp / "spec.toml"
    path.write_text(SPEC)
    result = _ablate("run", path, "--runs-root", tmp / "runs", "--no-progress")
    assert result.exit_code == 0, result.output
    return path, tmp / "runs"


def _copy(trained, tmp_path):
    path, runs = trained
    shutil.copytree(runs, tmp_path / "runs")
    run = load_spec(path).runs[0]
    return path, tmp_path / "runs", run, run_folder(tmp_path / "runs", run.run_id)


def _claim(folder, **fields):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "claim.json").write_text(json.dumps({"job": None, "host": socket.gethostname(), **fields}))


# --- claims -------------------------------------------------------------------------------------------

def test_an_empty_claim_does_not_block_its_run(tmp_path):
    """`: > runs/<id>/claim.json` made `ablate run` wait forever."""
    path = tmp_path / "spec.toml"
    path.write_text(SPEC)
    folder = run_folder(tmp_path / "runs", load_spec(path).runs[0].run_id)
    folder.mkdir(parents=True)
    (folder / "claim.json").write_bytes(b"")
    r = subprocess.run([sys.executable, "-m", "ablations.commands.cli", "run", str(path), "--runs-root", str(tmp_path / "runs"),
                        "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{folder / 'claim.json'}: empty; it counts as no claim" in r.stderr
    assert "waiting for" not in r.stdout and read_status(folder)["state"] == "done"
    assert not (folder / "claim.json").exists()


@pytest.mark.parametrize("blob", [b"{", b"[1, 2]", b'{"host": "x"}', b"\xff\xfe", b'{"pid": 12'])
def test_an_unreadable_claim_counts_as_no_claim_with_a_warning(tmp_path, capsys, blob):
    (tmp_path / "claim.json").write_bytes(blob)
    assert claim.read(tmp_path) is None
    assert f"{tmp_path / 'claim.json'}:" in capsys.readouterr().err
    assert claim.acquire(tmp_path) == (True, None)
    assert claim.read(tmp_path)["pid"] == os.getpid()
    claim.release(tmp_path)
    assert not (tmp_path / "claim.json").exists() and not list(tmp_path.iterdir())


def test_a_claim_records_its_process_start_time_and_boot(tmp_path):
    assert claim.acquire(tmp_path) == (True, None)
    held = claim.read(tmp_path)
    assert held["start"] == start_time(os.getpid()) is not None and held["boot"] == boot_id() is not None
    assert claim.alive(held)
    claim.release(tmp_path)


def test_a_claim_naming_a_reused_pid_is_stale(tmp_path, sleeper):
    """A live process with the claimed pid but another start time (or boot) is not the holder."""
    real = {"pid": sleeper.pid, "start": start_time(sleeper.pid), "boot": boot_id()}
    assert claim.alive({"host": socket.gethostname(), **real})
    for reused in ({**real, "start": real["start"] + 1}, {**real, "boot": "another-boot"}):
        _claim(tmp_path, **reused)
        assert not claim.alive(claim.read(tmp_path))
        assert claim.acquire(tmp_path) == (True, None)  # taken over
        assert claim.read(tmp_path)["pid"] == os.getpid()
        claim.release(tmp_path)
    _claim(tmp_path, pid=sleeper.pid)  # an older claim, without start and boot: judged by its pid
    assert claim.acquire(tmp_path) == (False, claim.read(tmp_path))
    _claim(tmp_path, **real)
    assert claim.acquire(tmp_path) == (False, claim.read(tmp_path))


def test_a_run_whose_status_names_a_reused_pid_shows_interrupted(tmp_path, sleeper):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC)
    folder = run_folder(tmp_path / "runs", load_spec(path).runs[0].run_id)
    folder.mkdir(parents=True)
    _ablate("list", path, "--runs-root", tmp_path / "runs")  # writes config.json into the empty folder
    status = {"state": "running", "step": 2, "host": socket.gethostname(), "pid": sleeper.pid, "boot": boot_id()}
    (folder / "status.json").write_text(json.dumps({**status, "start": start_time(sleeper.pid)}))
    assert _states(_ablate("list", path, "--runs-root", tmp_path / "runs").output) == {folder.name: "running"}
    (folder / "status.json").write_text(json.dumps({**status, "start": start_time(sleeper.pid) - 1}))
    assert not pid_alive(json.loads((folder / "status.json").read_text()))
    assert _states(_ablate("list", path, "--runs-root", tmp_path / "runs").output) == {folder.name: "interrupted"}


def test_ablate_run_takes_over_a_reused_pid_claim(trained, tmp_path, sleeper):
    path, runs, run, folder = _copy(trained, tmp_path)
    (folder / "rows.jsonl").write_text("")  # evaluation is needed again: the run must get the claim
    _claim(folder, pid=sleeper.pid, start=start_time(sleeper.pid) + 7, boot=boot_id(), since=time.time() - 45)
    listing = _ablate("list", path, "--runs-root", runs).output
    assert f"{socket.gethostname()} pid {sleeper.pid}, 45 s (stale)" in listing, listing
    r = subprocess.run([sys.executable, "-m", "ablations.commands.cli", "run", str(path), "--runs-root", str(runs),
                        "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "waiting for" not in r.stdout, r.stdout + r.stderr
    assert read_status(folder)["state"] == "done" and not (folder / "claim.json").exists()


def test_list_shows_who_holds_each_claimed_run(tmp_path, sleeper):
    path = tmp_path / "spec.toml"
    path.write_text(tiny_spec("held", norms='["group", "layer", "batch"]'))
    a, b, c = (run_folder(tmp_path / "runs", r.run_id) for r in load_spec(path).runs)
    _claim(a, job="4242_3", since=time.time() - 3 * 3600)
    _claim(b, pid=sleeper.pid, start=start_time(sleeper.pid), boot=boot_id(), since=time.time() - 125)
    out = _ablate("list", path, "--runs-root", tmp_path / "runs")
    assert out.exit_code == 0, out.output
    lines = {line.split()[0]: line for line in out.output.splitlines()[1:]}
    assert "job 4242_3, 3 h" in lines[a.name]  # squeue is not here: a job that cannot be checked counts as alive
    assert f"{socket.gethostname()} pid {sleeper.pid}, 2 min" in lines[b.name] and "stale" not in lines[b.name]
    assert "pid" not in lines[c.name] and "job" not in lines[c.name]
    assert out.output.splitlines()[0].split()[-2:] == ["held_by", "reason"]


def test_release_removes_a_claim_and_refuses_a_live_one_unless_forced(tmp_path, sleeper):
    path = tmp_path / "spec.toml"
    path.write_text(tiny_spec("rel", norms='["group", "layer"]'))
    a, b = load_spec(path).runs
    fa, fb = (run_folder(tmp_path / "runs", r.run_id) for r in (a, b))
    live = dict(pid=sleeper.pid, start=start_time(sleeper.pid), boot=boot_id())
    _claim(fa, **live)
    refused = _ablate("release", path, "--only", a.run_id, "--runs-root", tmp_path / "runs")
    _one_line_error(refused, a.run_id, "alive", "--force")
    assert claim.read(fa)["pid"] == sleeper.pid
    forced = _ablate("release", path, "--only", a.run_id, "--force", "--runs-root", tmp_path / "runs")
    assert forced.exit_code == 0 and "released" in forced.output and not (fa / "claim.json").exists()
    # another host's claim cannot be checked from here: released without --force; so is a stale one
    (fb / "claim.json").parent.mkdir(parents=True)
    (fb / "claim.json").write_text(json.dumps({"job": None, "host": "elsewhere", "pid": 1}))
    _claim(fa, **{**live, "start": live["start"] + 1})
    out = _ablate("release", path, "--only", a.run_id, "--only", b.run_id, "--runs-root", tmp_path / "runs")
    assert out.exit_code == 0, out.output
    assert not (fa / "claim.json").exists() and not (fb / "claim.json").exists()
    assert f"{b.run_id}: claim of elsewhere pid 1" in out.output
    assert f"{a.run_id}: no claim" in _ablate("release", path, "--only", a.run_id, "--runs-root",
                                              tmp_path / "runs").output
    _one_line_error(_ablate("release", path, "--only", "0123456789", "--runs-root", tmp_path / "runs"),
                    "unknown run ids", "0123456789")


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_a_claim_file_gets_the_users_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert claim.acquire(tmp_path) == (True, None)
    finally:
        os.umask(old)
    assert (tmp_path / "claim.json").stat().st_mode & 0o777 == 0o666 & ~mask
    claim.release(tmp_path)


def test_release_never_removes_another_process_claim(tmp_path, sleeper):
    _claim(tmp_path, pid=sleeper.pid, start=start_time(sleeper.pid), boot=boot_id())
    claim.release(tmp_path)
    assert claim.read(tmp_path)["pid"] == sleeper.pid


# --- run folders against their ids ----------------------------------------------------------------------

def _files(folder) -> dict:
    """Every file under a run folder (its TensorBoard tb/ too) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_tampered_config_is_reported_and_its_run_not_trained_evaluated_or_collected(trained, tmp_path):
    path, runs, run, folder = _copy(trained, tmp_path)
    record = json.loads((folder / "config.json").read_text())
    record["train"]["lr"] = 1e-3  # now hashes to another run
    (folder / "config.json").write_text(json.dumps(record))
    other = TrainConfig.from_record(record).run_id()
    (folder / "rows.jsonl").write_text("")  # the run would need evaluating, were it trusted
    before = _files(folder)

    listing = _ablate("list", path, "--runs-root", runs)
    _one_line_error(listing, str(folder / "config.json"), other, run.run_id)
    assert _states(listing.output) == {run.run_id: "invalid"}
    ran = _ablate("run", path, "--runs-root", runs, "--no-progress")
    _one_line_error(ran, str(folder / "config.json"), "hashes to run")
    assert "1 invalid (not run)" in ran.output
    out = tmp_path / "res"
    collected = _ablate("collect", path, "--runs-root", runs, "--results-root", out)
    _one_line_error(collected, "invalid run folder", run.run_id)
    assert _files(folder) == before  # neither trained nor evaluated
    assert run.run_id not in set(pd.read_csv(out / "faults" / "rows.csv")["run_id"])


def test_a_missing_config_is_rewritten_when_the_folder_holds_nothing_else(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC)
    run = load_spec(path).runs[0]
    folder = run_folder(tmp_path / "runs", run.run_id)
    folder.mkdir(parents=True)
    (folder / "claim.json").write_text("")  # a start killed between its claim and its config
    (folder / "log.txt").write_text("")
    out = _ablate("list", path, "--runs-root", tmp_path / "runs")
    assert out.exit_code == 0 and _states(out.output) == {run.run_id: "pending"}, out.output
    assert json.loads((folder / "config.json").read_text())["run_id"] == run.run_id


def test_a_missing_config_beside_other_files_is_reported_and_left_alone(trained, tmp_path):
    path, runs, run, folder = _copy(trained, tmp_path)
    (folder / "config.json").unlink()
    before = _files(folder)
    for cmd in (["list"], ["run", "--no-progress"], ["collect", "--results-root", tmp_path / "res"]):
        _one_line_error(_ablate(cmd[0], path, "--runs-root", runs, *cmd[1:]), str(folder), "no config.json")
    assert _files(folder) == before


def test_an_unreadable_status_is_reported_not_shown_pending(trained, tmp_path):
    path, runs, run, folder = _copy(trained, tmp_path)
    (folder / "status.json").write_text('{"state": "do')
    out = _ablate("list", path, "--runs-root", runs).output
    assert _states(out) == {run.run_id: "unknown"} and str(folder / "status.json") in out, out
    assert _ablate("run", path, "--runs-root", runs, "--no-progress").exit_code == 0  # checkpoints and rows decide
    assert read_status(folder)["state"] == "done"


# --- path cases -----------------------------------------------------------------------------------------

def test_a_spec_path_under_a_file_or_a_symlink_loop_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    _one_line_error(_ablate("run", tmp_path / "file" / "spec.toml", "--dry-run"), "file/spec.toml",
                    "cannot read the spec file")
    os.symlink(tmp_path / "loop.toml", tmp_path / "loop.toml")
    for cmd in ("run", "list", "collect"):
        _one_line_error(_ablate(cmd, tmp_path / "loop.toml"), "loop.toml", "cannot read the spec file")


def test_a_file_where_a_run_folder_should_be_is_reported_and_the_grid_goes_on(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(tiny_spec("files", norms='["group", "layer"]'))
    a, b = load_spec(path).runs
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / a.run_id).write_text("not a folder")
    os.symlink(runs / b.run_id, runs / b.run_id)  # a symlink loop where b's folder should be
    listing = _ablate("list", path, "--runs-root", runs)
    _one_line_error(listing, str(runs / a.run_id), "not a folder")
    assert _states(listing.output) == {a.run_id: "invalid", b.run_id: "invalid"}
    os.unlink(runs / b.run_id)
    ran = _ablate("run", path, "--runs-root", runs, "--no-progress")
    _one_line_error(ran, str(runs / a.run_id), "not a folder")
    assert read_status(run_folder(runs, b.run_id))["state"] == "done"  # the grid went on
    collected = _ablate("collect", path, "--runs-root", runs, "--results-root", tmp_path / "res")
    _one_line_error(collected, "invalid run folder", a.run_id)
    assert set(pd.read_csv(tmp_path / "res" / "files" / "rows.csv")["run_id"]) == {b.run_id}


@pytest.mark.parametrize("cmd", ["run", "list", "collect", "status"])
def test_a_runs_root_under_a_file_is_one_line(tmp_path, cmd):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC)
    (tmp_path / "file").write_text("x")
    _one_line_error(_ablate(cmd, path, "--runs-root", tmp_path / "file" / "runs"), "--runs-root",
                    "is under", "which is a file")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    _one_line_error(_ablate(cmd, path, "--runs-root", tmp_path / "loop"), "--runs-root", "symlink loop")


def test_a_spec_with_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_bytes(b"\xef\xbb\xbf" + SPEC.encode())
    assert load_spec(path).runs[0].run_id == load_spec(_plain(tmp_path)).runs[0].run_id
    assert _ablate("run", path, "--dry-run").exit_code == 0


def _plain(tmp_path):
    p = tmp_path / "plain.toml"
    p.write_text(SPEC)
    return p


def test_an_empty_scale_is_rejected_naming_the_valid_scales(tmp_path):
    _one_line_error(_ablate("run", _plain(tmp_path), "--scale", "", "--dry-run"), "unknown scale ''", "'smoke'",
                    "'cpu'", "'paper'")


# --- commands that scale ----------------------------------------------------------------------------------

def test_build_model_reads_only_the_architecture_fields():
    """ARCHITECTURE is the cache key of the spec's model check and the FLOP count: it must be exactly
    what build_model reads."""
    read = set()

    class Spy:
        def __getattr__(self, name):
            read.add(name)
            return getattr(TrainConfig(), name)

    build_model(Spy())
    assert read == set(ARCHITECTURE)


def test_a_grid_builds_each_architecture_once(tmp_path, monkeypatch):
    text = tiny_spec("arch", norms='["group", "layer", "batch", "instance"]').replace(
        "seeds = [0]", "seeds = [0, 1, 2]").replace("[grid]\n", "[grid]\nlr = [1e-4, 2e-4]\n")
    path = tmp_path / "spec.toml"
    path.write_text(text)
    builds = []
    real = spec_module.build_model
    monkeypatch.setattr(spec_module, "build_model", lambda cfg: builds.append(cfg.norm) or real(cfg))
    spec_module._model_error.cache_clear()
    spec = load_spec(path)
    assert len(spec.runs) == 24 and sorted(builds) == ["batch", "group", "instance", "layer"]
    counted = []
    real_budget = budget.build_model
    monkeypatch.setattr(budget, "build_model", lambda cfg: counted.append(cfg.norm) or real_budget(cfg))
    budget._per_image.cache_clear()
    flops = [budget.run_flops(r.config, spec.eval, 10) for r in spec.runs]
    assert sorted(counted) == ["batch", "group", "instance", "layer"]
    assert flops[0] == flops[1] == budget.run_flops(spec.runs[0].config, spec.eval, 10)


def test_a_claim_that_is_a_folder_is_reported_and_the_grid_goes_on(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(tiny_spec("dirclaim", norms='["group", "layer"]'))
    a, b = load_spec(path).runs
    (run_folder(tmp_path / "runs", a.run_id) / "claim.json").mkdir(parents=True)
    ran = _ablate("run", path, "--runs-root", tmp_path / "runs", "--no-progress")
    _one_line_error(ran, str(run_folder(tmp_path / "runs", a.run_id) / "claim.json"), "a folder, not a claim")
    assert read_status(run_folder(tmp_path / "runs", b.run_id))["state"] == "done"
    assert read_status(run_folder(tmp_path / "runs", a.run_id))["state"] == "pending"


def test_submit_never_sends_an_invalid_run(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(tiny_spec("sub", norms='["group", "layer"]'))
    a, b = load_spec(path).runs
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / a.run_id).write_text("not a folder")
    out = _ablate("submit", path, "--runs-root", tmp_path / "runs", "--cluster", "local", "--dry-run").output
    assert f"{tmp_path / 'runs' / a.run_id}: not a folder" in out and "1 of 1 runs would be submitted" in out, out
    assert b.run_id in out and f"  {a.run_id}  " not in out
