"""Each file read once per command (issue 39, item 5). `ablate collect`, `list` and `run` (on a grid with nothing
left to do) read each run folder's config.json, status.json and rows.jsonl once (ablations/store/reads.py); the
migrations run only when their cheap check (`migrate.legacy`: names and config.json files, and the rows the
command reads anyway) finds a legacy item, and then all of them; `ablate results` reads each rows.csv,
findings.json and axes.json once and decides the verdicts of the whole index once (`verdicts.assessed`)."""
import builtins
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from ablations.commands.cli import main
from ablations.grid.spec import load_spec
from ablations.reporting import verdicts
from ablations.running.ledger import config_record, run_steps, wanted
from ablations.store import migrate
from ablations.store.layout import CONFIG, ROWS, STATUS, run_folder
from ablations.store.reads import Reads
from ablations.store.schema import EVAL_KEY, row
from conftest import tiny_spec

ROOT = Path(__file__).resolve().parent.parent
FILES = (CONFIG, STATUS, ROWS)
PASSES = ("migrate", "share_across_steps", "restore_whole_rows", "set_aside_stale_nll")


@pytest.fixture
def opened(monkeypatch):
    """path -> how many times it was opened for reading (open and io.open: Path.read_text and read_bytes,
    the claims and pandas all go through them)."""
    counts, real = Counter(), io.open

    def counting(file, mode="r", *args, **kwargs):
        f = real(file, mode, *args, **kwargs)
        if isinstance(file, (str, Path)) and not set(mode) & set("wax+"):
            counts[Path(file).resolve()] += 1
        return f
    monkeypatch.setattr(io, "open", counting)
    monkeypatch.setattr(builtins, "open", counting)
    return counts


def _finished(spec, runs):
    """Every run of `spec` finished in `runs` as `ablate run` leaves it (config.json, a done status.json, every row
    the spec asks for; no checkpoint): nothing left to train or score."""
    for r in spec.runs:
        folder = run_folder(runs, r.run_id)
        folder.mkdir(parents=True)
        (folder / CONFIG).write_text(json.dumps(config_record(r)))
        (folder / STATUS).write_text(json.dumps({"state": "done", "step": run_steps(r)}))
        lines = [row(r.run_id, "train_loss", 0.5, phase="train", train_step=run_steps(r), n=r.config.batch)]
        for k in wanted(spec, r):
            cols = dict(zip(EVAL_KEY, k))
            lines.append(row(r.run_id, cols.pop("metric"), 1.0, **cols))
        (folder / ROWS).write_text("".join(json.dumps(x) + "\n" for x in lines))


def _complete(tmp_path):
    """A spec of two runs, both finished (`_finished`): (spec path, spec, runs root)."""
    path = tmp_path / "t.toml"
    path.write_text(tiny_spec(norms='["group", "layer"]'))
    spec, runs = load_spec(path), tmp_path / "runs"
    _finished(spec, runs)
    return path, spec, runs


def _ablate(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_collect_list_and_run_read_each_run_file_once(tmp_path, opened):
    path, spec, runs = _complete(tmp_path)
    for args in (("collect", "--results-root", tmp_path / "results"), ("list",), ("run", "--no-progress")):
        opened.clear()
        out = _ablate(args[0], path, "--runs-root", runs, *args[1:])
        assert out.exit_code == 0, out.output
        for r in spec.runs:
            folder = run_folder(runs, r.run_id).resolve()
            assert [opened[folder / f] for f in FILES] == [1, 1, 1], (args[0], r.run_id, opened)
    assert "2 complete, 0 to run" in out.output


@pytest.fixture
def passes(monkeypatch):
    """The migration passes `ablate run` called (each still runs)."""
    ran = []
    for name in PASSES:
        def spy(root, echo=print, _real=getattr(migrate, name), _name=name):
            ran.append(_name)
            return _real(root, echo=echo)
        monkeypatch.setattr(migrate, name, spy)
    return ran


def test_the_migrations_run_only_when_a_legacy_item_is_present(tmp_path, passes, opened):
    """A store without legacy items costs `ablate run` no migration and no read of a rows file that is not its
    spec's; a folder under its legacy id (train_steps hashed) makes it run every pass, which moves the folder."""
    path, spec, runs = _complete(tmp_path)
    other = tmp_path / "other.toml"  # another spec's finished run in the same store
    other.write_text(tiny_spec("o", norms='["batch"]'))
    _finished(load_spec(other), runs)
    out = _ablate("run", path, "--runs-root", runs, "--no-progress")
    assert out.exit_code == 0 and "0 to run" in out.output, out.output
    assert passes == [] and "migrate:" not in out.output
    assert opened[(run_folder(runs, load_spec(other).runs[0].run_id) / ROWS).resolve()] == 0  # not its spec's

    run = spec.runs[0]
    new, old = run_folder(runs, run.run_id), run_folder(runs, run.config.legacy_run_id())
    shutil.copytree(new, old)
    (old / CONFIG).write_text(json.dumps({**json.loads((new / CONFIG).read_text()), "run_id": old.name}))
    listed = _ablate("list", path, "--runs-root", runs)  # a command that reads only says it
    assert "named by its legacy id" in listed.output and old.exists() and passes == []
    out = _ablate("run", path, "--runs-root", runs, "--no-progress")
    assert out.exit_code == 0 and "0 to run" in out.output, out.output
    assert passes == list(PASSES) and not old.exists() and (runs / "_superseded" / "steps" / old.name).exists()


def test_stale_nll_rows_of_the_commands_runs_make_it_migrate(tmp_path, passes):
    """NLL rows from before the bound clipped x0, in a run the spec names: `ablate list` says so, and `ablate run`
    runs the passes, which set them aside."""
    path, spec, runs = _complete(tmp_path)
    folder = run_folder(runs, spec.runs[0].run_id)
    lines = [json.loads(x) for x in (folder / ROWS).read_text().splitlines()]
    stale = [{k: v for k, v in r.items() if k != "clip_x0"} if r["metric"] == "nll_bpd" else r for r in lines]
    (folder / ROWS).write_text("".join(json.dumps(r) + "\n" for r in stale))
    listed = _ablate("list", path, "--runs-root", runs)
    assert "NLL rows from before the bound clipped x0" in listed.output and "the next `ablate run`" in listed.output
    assert passes == []
    _ablate("run", path, "--runs-root", runs, "--no-progress")
    assert passes == list(PASSES)
    assert not any(r["metric"] == "nll_bpd" for r in map(json.loads, (folder / ROWS).read_text().splitlines()))
    assert (folder / "migrated" / ROWS).exists()


def test_a_folder_the_command_changes_is_read_again():
    reads = Reads()
    seen = reads.of("x")
    assert reads.of("x") is seen
    reads.forget("x")
    assert reads.of("x") is not seen
    seen = reads.of("x")
    reads.clear()
    assert reads.of("x") is not seen


def test_results_reads_each_folder_once_and_decides_the_verdicts_once(tmp_path, opened, monkeypatch):
    from ablations.reporting.index import regenerate
    for name in ("demo", "loss-curve", "notes"):
        shutil.copytree(ROOT / "results" / name, tmp_path / name)
    calls, real = [], verdicts.assess
    monkeypatch.setattr(verdicts, "assess", lambda *a, **k: calls.append(1) or real(*a, **k))
    regenerate(tmp_path)
    assert len(calls) == 1  # was 2N + 1: every figure set, every report and the index decided them again
    for name in ("demo", "loss-curve"):
        folder = (tmp_path / name).resolve()
        assert [opened[folder / f] for f in ("rows.csv", "findings.json", "axes.json")] == [1, 1, 1], opened


def test_a_state_finds_a_runs_missing_rows_once(tmp_path, monkeypatch):
    """`ledger.state` asks `missing` once a run whatever the state: the held-run rule (a run another spec holds or
    left, with every row this spec asks for, is done for it), `unscorable` and needs-eval share its answer (was
    two passes over the spec's wanted rows for a done or interrupted run)."""
    import os
    import socket

    from ablations.running import ledger
    from ablations.store.layout import checkpoint_name, start_time

    _, spec, runs = _complete(tmp_path)
    finished, held = spec.runs
    calls, real = [], ledger.missing
    monkeypatch.setattr(ledger, "missing", lambda *a, **k: calls.append(1) or real(*a, **k))

    def state(run):
        calls.clear()
        return ledger.state(spec, run, runs, Reads())["state"], len(calls)

    folder, steps = run_folder(runs, held.run_id), run_steps(held)
    (folder / checkpoint_name(steps)).touch()  # trained through: its last checkpoint
    me = {"host": socket.gethostname(), "pid": os.getpid(), "start": start_time(os.getpid())}
    for start, seen in ((me["start"], "running"), (me["start"] + 1, "interrupted")):  # +1: another process's pid
        (folder / STATUS).write_text(json.dumps({"state": "running", "step": steps, **me, "start": start}))
        assert state(held) == ("done", 1), seen  # every row this spec asks for

    def drop_the_last_fid(run):
        rows = run_folder(runs, run.run_id) / ROWS
        lines = rows.read_text().splitlines()
        kept = [x for x in lines if not (json.loads(x)["metric"] == "fid" and json.loads(x)["train_step"] == steps)]
        assert len(kept) < len(lines)
        rows.write_text("".join(x + "\n" for x in kept))

    drop_the_last_fid(held)
    assert state(held) == ("interrupted", 1)  # a row to score, at a checkpoint it kept: not unscorable
    assert state(finished) == ("done", 1)
    drop_the_last_fid(finished)
    assert state(finished) == ("unscorable", 1)  # no checkpoint to score it from (as a record)
    (run_folder(runs, finished.run_id) / checkpoint_name(steps)).touch()
    assert state(finished) == ("needs-eval", 1)
