"""Faults in the rows store: a full disk or a short write in the middle of an append, a failure while
recording a failure, lines that are not rows; and the small faults of issue 28 (the stop message, the
step `list` shows after a kill, the FID cache's mode and temp files). Every fault is injected in-process
(monkeypatching the write path), never with a real full disk."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import tiny_spec

import ablations.store.io
from ablations.store import claim
from ablations.running import ledger, runner
from ablations.commands.cli import _stopped, main
from ablations.run.data import load
from ablations.metrics.fidelity import fid
from ablations.store.io import write_json
from ablations.store.layout import orphans, read_status, run_folder
from ablations.store.schema import IDENTITY, OPTIONAL, key, read_rows, row
from ablations.grid.spec import load_spec
from ablations.reporting.table import collect

ROOT = Path(__file__).resolve().parent.parent
SPEC = tiny_spec("torn", sample_steps="[3, 5]")  # two sampler settings: the first one's append is torn


def _ablate(*args, code=0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output + (result.stderr or "")
    return result


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _identity(r):
    return tuple(key(r)) + (r["train_step"],)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The spec run once without faults: (spec path, its run's rows)."""
    tmp = tmp_path_factory.mktemp("reference")
    path = tmp / "torn.toml"
    path.write_text(SPEC)
    _ablate("run", path, "--runs-root", tmp / "runs", "--no-progress")
    rows, bad = read_rows(run_folder(tmp / "runs", load_spec(path).runs[0].run_id) / "rows.jsonl")
    assert bad == 0
    return path, rows


def _nth_line_end(blob: bytes, n: int) -> int:
    at = -1
    for _ in range(n):
        at = blob.index(b"\n", at + 1)
    return at + 1


CUTS = {  # where the short write stops, in the append's bytes
    "nothing": lambda blob: 0,
    "whole rows": lambda blob: _nth_line_end(blob, 1),
    "half a line": lambda blob: _nth_line_end(blob, 1) + 40,
    "every row but the last newline": lambda blob: len(blob) - 1,
}
APPENDS = {"a sampler setting": b'"metric": "fid"', "the NLL": b'"metric": "nll_bpd"',
           "training's summary": b'"metric": "train_wall_s"'}
CASES = [("a sampler setting", cut) for cut in CUTS] + [
    (append, cut) for append in ("the NLL", "training's summary") for cut in ("whole rows", "half a line")]


class FullDisk:
    """os.write as a filling disk does it: the chosen append of rows.jsonl writes `cut` bytes, then
    every write under `root` fails with ENOSPC (as do status writes) until `free()`."""

    def __init__(self, monkeypatch, root, marker, cut):
        self.root, self.marker, self.cut, self.full, self.torn = str(root), marker, cut, False, None
        self.real, self.real_usage = os.write, shutil.disk_usage
        monkeypatch.setattr(ablations.store.io.os, "write", self.write)
        monkeypatch.setattr(ablations.store.io.shutil, "disk_usage", self.usage)
        status = runner.write_status
        monkeypatch.setattr(runner, "write_status", lambda *a, **k: self.refuse() or status(*a, **k))

    def refuse(self):
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def usage(self, path):
        return SimpleNamespace(total=10**9, used=10**9 - 4096, free=4096) if self.full else self.real_usage(path)

    def write(self, fd, data):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.startswith(self.root):
            self.refuse()
            if self.torn is None and target.endswith("rows.jsonl") and self.marker in bytes(data):
                self.full, cut = True, self.cut(bytes(data))
                self.torn = bytes(data)[:cut]
                if cut == 0:
                    self.refuse()
                return self.real(fd, bytes(data)[:cut])
        return self.real(fd, data)

    def free(self):
        self.full = False


@pytest.mark.parametrize("append, cut", CASES)
def test_a_torn_append_is_set_aside_and_its_rows_written_once(tmp_path, monkeypatch, reference, append, cut):
    path, expected = reference
    runs = tmp_path / "runs"
    folder = run_folder(runs, load_spec(path).runs[0].run_id)
    disk = FullDisk(monkeypatch, tmp_path, APPENDS[append], CUTS[cut])
    out = _ablate("run", path, "--runs-root", runs, "--no-progress", code=1)
    assert disk.torn is not None, "the append was never reached"
    # one clear message: the file, the free space; then the failed status write, and the grid went on
    assert f"disk full writing {folder / 'rows.jsonl'} (4096 bytes free there" in out.stderr, out.stderr
    assert "recording that failed too: OSError: [Errno 28]" in out.stderr
    assert "Traceback" not in out.output + out.stderr
    rows, skipped = read_rows(folder / "rows.jsonl")
    whole = cut == "every row but the last newline"
    assert skipped == (0 if whole or cut == "nothing" else disk.torn.count(b"\n") + (cut == "half a line"))
    disk.free()

    _ablate("run", path, "--runs-root", runs, "--no-progress")
    rows, skipped = read_rows(folder / "rows.jsonl")
    assert skipped == 0 and read_status(folder)["state"] == "done"
    ids = [_identity(r) for r in rows]
    assert len(ids) == len(set(ids)) and set(ids) == {_identity(r) for r in expected}  # every row, once
    numbers = lambda rs: sorted((r["metric"], r["steps"] or 0, r["value"]) for r in rs  # noqa: E731
                                if r["metric"] in ("fid", "kid", "nll_bpd"))
    assert numbers(rows) == numbers(expected)  # the same numbers as a run without the fault
    partial = folder / "rows.partial.jsonl"
    if whole or cut == "nothing":
        assert not partial.exists()  # nothing to set aside: all rows whole, or none written
    else:
        assert partial.read_bytes() == disk.torn + b"\n" * (cut == "half a line")  # set aside byte for byte
    res = _ablate("collect", path, "--runs-root", runs, "--results-root", tmp_path / "res").output
    assert "0 lines that are not rows skipped" in res and "0 duplicate rows dropped" in res
    summary = pd.read_csv(tmp_path / "res" / "torn" / "summary.csv")
    assert (summary["seeds"] == 1).all(), summary


def test_a_failure_while_recording_a_failure_does_not_stop_the_grid(tmp_path, monkeypatch):
    path = tmp_path / "two.toml"
    path.write_text(tiny_spec("two", '["group", "layer"]'))
    first, second = load_spec(path).runs
    train, status = runner.train, runner.write_status

    def failing_train(cfg, *a, **k):
        if cfg == first.config:
            raise RuntimeError("boom")
        return train(cfg, *a, **k)

    def status_on_a_full_disk(folder, state, **k):
        if state == "failed":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return status(folder, state, **k)

    monkeypatch.setattr(runner, "train", failing_train)
    monkeypatch.setattr(runner, "write_status", status_on_a_full_disk)
    out = _ablate("run", path, "--runs-root", tmp_path / "runs", "--no-progress", code=1)
    line = next(x for x in out.stderr.splitlines() if x.startswith(f"run {first.run_id} "))
    assert "failed: RuntimeError: boom" in line and "OSError: [Errno 28] No space left on device" in line
    assert read_status(run_folder(tmp_path / "runs", second.run_id))["state"] == "done"  # the grid went on
    assert f"1 run(s) did not finish: {first.run_id}" in out.stderr


def _good(run_id, metric="fid", value=10.0, steps=5, **cols):
    return row(run_id, metric, value, phase="eval", sampler="ddim", steps=steps, eta=0.0, clip_x0=True,
               spacing="leading", n=32, extractor="fmnist-classifier", reference="fashion_mnist:train:1000",
               sample_seed=0, **cols)


RUN_ID = "0123456789"
MALFORMED = {  # kind -> a line that is not a row (a whole row of an unknown metric is one: test_foreign_rows.py)
    "no schema keys": json.dumps({"metric": "fid", "value": "abc"}),
    "value a string": json.dumps(_good(RUN_ID, value="abc")),
    "value a bool": json.dumps(_good(RUN_ID, value=True)),
    "value infinite": json.dumps(_good(RUN_ID, value=float("inf"))),
    "metric not a name": json.dumps({**_good(RUN_ID), "metric": 3}),
    "phase not a name": json.dumps({**_good(RUN_ID), "phase": None}),
    "unknown metric, value a string": json.dumps({**_good(RUN_ID), "metric": "fjd", "value": "abc"}),
    "not an object": "[1, 2]",
    "not JSON": '{"metric": "fid", "val',
    "append_rows not a count": json.dumps({**_good(RUN_ID), "append_id": "a", "append_rows": "8"}),
}


def _collect_one(tmp_path, lines):
    folder = tmp_path / "runs" / RUN_ID
    folder.mkdir(parents=True)
    (folder / "rows.jsonl").write_text("".join(line + "\n" for line in lines))
    run = {"folder": folder, "run_id": RUN_ID, "ablation": "x", "scale": "smoke", "seed": 0, "norm": "group"}
    counts = collect([run], tmp_path / "res", axes=["norm"])
    return counts, pd.read_csv(tmp_path / "res" / "rows.csv"), pd.read_csv(tmp_path / "res" / "summary.csv")


@pytest.mark.parametrize("kind", MALFORMED)
def test_collect_skips_and_counts_each_kind_of_line_that_is_not_a_row(tmp_path, kind):
    good = [json.dumps(_good(RUN_ID, value=10.0)), json.dumps(_good(RUN_ID, "kid", 0.5))]
    counts, rows, summary = _collect_one(tmp_path, [good[0], MALFORMED[kind], good[1]])
    assert counts["skipped"] == 1 and counts["rows"] == 2 and counts["duplicates"] == 0
    assert sorted(rows["value"]) == [0.5, 10.0] and (summary["seeds"] == 1).all()


def test_collect_drops_rows_whose_eval_key_repeats_and_counts_them(tmp_path):
    """The rows a torn append left before appends carried append_id: the same numbers, measured twice
    (other timings, other timestamps). A single-seed run must show seeds = 1."""
    once = [_good(RUN_ID, "sample_wall_s", 1.0, timestamp=1.0), _good(RUN_ID, "fid", 10.0, timestamp=1.0)]
    again = [_good(RUN_ID, "sample_wall_s", 1.3, timestamp=2.0), _good(RUN_ID, "fid", 10.0, timestamp=2.0)]
    train = [row(RUN_ID, "train_loss", v, phase="train", train_step=s, n=16) for s, v in ((1, 0.9), (2, 0.8))]
    counts, rows, summary = _collect_one(tmp_path, [json.dumps(r) for r in (*train, *once, *again)])
    assert counts["duplicates"] == 2 and counts["rows"] == 4
    assert rows[rows["metric"] == "sample_wall_s"]["value"].tolist() == [1.0]  # the first measurement kept
    assert (summary["seeds"] == 1).all()
    assert set(IDENTITY) - set(OPTIONAL) <= set(rows.columns) and not set(OPTIONAL) & set(rows.columns)  # unused


def test_a_torn_append_does_not_count_as_written_anywhere(tmp_path):
    """A whole row of a cut append (its append_rows says more) is skipped by the one reader: by collect
    and by the runner's `missing`, which then evaluates that setting again."""
    path = tmp_path / "t.toml"
    path.write_text(SPEC)
    spec = load_spec(path)
    run = spec.runs[0]
    folder = run_folder(tmp_path / "runs", run.run_id)
    folder.mkdir(parents=True)
    last = ledger.run_steps(run)
    fid5 = {**_good(run.run_id, steps=5, train_step=last), "append_id": "b", "append_rows": 1}

    def missing_steps(fid3_rows):  # per sampler steps, how many of its row groups are missing
        fid3 = {**_good(run.run_id, steps=3, train_step=last), "append_id": "a", "append_rows": fid3_rows}
        (folder / "rows.jsonl").write_text(json.dumps(fid3) + "\n" + json.dumps(fid5) + "\n")
        have = ledger.have_keys(folder)
        return Counter(s.steps for k, (_, s) in ledger.wanted(spec, run).items()
                       if k not in have and s not in ("nll", "cost")), fid3

    whole, _ = missing_steps(1)  # the same row, its append complete
    torn, fid3 = missing_steps(8)
    assert torn[3] == whole[3] + 1 and torn[5] == whole[5]  # only the torn FID row is missing again
    assert read_rows(folder / "rows.jsonl") == ([fid5], 1)


def test_a_row_the_runner_cannot_read_is_set_aside_and_evaluated_again(tmp_path, reference):
    path, expected = reference
    src = run_folder(Path(path).parent / "runs", load_spec(path).runs[0].run_id)
    runs = tmp_path / "runs"
    folder = run_folder(runs, src.name)
    shutil.copytree(src, folder)
    lines = (folder / "rows.jsonl").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if '"metric": "fid"' in line and '"steps": 3,' in line)
    bad = json.dumps({**json.loads(lines[at]), "value": "abc"}, sort_keys=True)
    lines[at] = bad
    (folder / "rows.jsonl").write_text("\n".join(lines) + "\n")
    assert "needs-eval" in _ablate("list", path, "--runs-root", runs).output
    _ablate("run", path, "--runs-root", runs, "--no-progress")
    rows, skipped = read_rows(folder / "rows.jsonl")
    fid3 = [r["value"] for r in rows if r["metric"] == "fid" and r["steps"] == 3]
    assert skipped == 0 and fid3 == [r["value"] for r in expected if r["metric"] == "fid" and r["steps"] == 3]
    assert bad + "\n" in (folder / "rows.partial.jsonl").read_text()  # the rest of its append went with it
    ids = [_identity(r) for r in rows]
    assert len(ids) == len(set(ids)) == len(expected)


def test_after_sigterm_the_message_says_what_happened(tmp_path):
    runs = [SimpleNamespace(run_id=i) for i in ("aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc")]
    said = _stopped(runs, {"aaaaaaaaaa": "interrupted", "bbbbbbbbbb": "done"})
    assert said == ("interrupted: 1 run(s) stopped with a checkpoint (training at a step boundary, or evaluation "
                    "between sampler settings): aaaaaaaaaa; 1 run(s) not started (held by another process, or not "
                    "reached): cccccccccc; re-run to resume")


def test_sigterm_while_waiting_on_a_claim_does_not_claim_a_checkpoint(tmp_path):
    path = tmp_path / "wait.toml"
    path.write_text(SPEC)
    runs = tmp_path / "runs"
    run_id = load_spec(path).runs[0].run_id
    folder = run_folder(runs, run_id)
    assert claim.acquire(folder)[0]  # held by this (live) process
    try:
        proc = subprocess.Popen([sys.executable, "-m", "ablations.commands.cli", "run", str(path), "--runs-root", str(runs),
                                 "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        t0 = time.time()
        for line in proc.stdout:
            if "waiting for 1 run(s) held by another process" in line:
                break
            assert time.time() - t0 < 300
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
    finally:
        claim.release(folder)
    assert proc.returncode == 130, err
    assert f"interrupted: 1 run(s) not started (held by another process, or not reached): {run_id}" in err
    assert "checkpoint" not in err and read_status(folder)["state"] == "pending"


def test_after_a_kill_list_shows_the_newest_checkpoints_step(tmp_path):
    path = tmp_path / "kill.toml"
    path.write_text(SPEC)
    runs = tmp_path / "runs"
    run_id = load_spec(path).runs[0].run_id
    folder = run_folder(runs, run_id)
    folder.mkdir(parents=True)
    write_json(folder / "config.json", {"run_id": run_id, "train": asdict(load_spec(path).runs[0].config)})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    write_json(folder / "status.json", {"state": "running", "pid": int(dead), "host": os.uname().nodename, "step": 0})
    (folder / "ckpt-00000003.pt").write_bytes(b"a checkpoint")
    header, *lines = _ablate("list", path, "--runs-root", runs).output.splitlines()[-2:]
    shown = dict(zip(header.split(), lines[0].split()))
    assert shown["run_id"] == run_id and (shown["state"], shown["step"]) == ("interrupted", "3"), lines


def test_the_fid_cache_gets_the_umask_and_its_temp_files_are_cleaned_up(tmp_path, monkeypatch):
    cache = tmp_path / "fid"
    cache.mkdir()
    stale = [cache / ".ref-a.pt.x1y2z3.tmp", cache / "tmpab12cd_9"]  # ours, and torch-fidelity's old kind
    young = cache / ".ref-b.pt.q7r8s9.tmp"  # a live writer's, in another process
    for p in (*stale, young):
        p.write_bytes(b"half a cache file")
    hour_ago = time.time() - 3601
    for p in stale:
        os.utime(p, (hour_ago, hour_ago))
    saves, write = [], Path.write_bytes

    def spy(self, data):  # the bytes of every save land in a temp file of a known name, then a rename
        if self.parent == cache:
            saves.append((self, orphans(cache)))
        return write(self, data)

    monkeypatch.setattr(Path, "write_bytes", spy)
    old = os.umask(0o027)
    try:
        fid(load("fashion_mnist", "test")[0][:200], dataset="fashion_mnist", extractor="fmnist-classifier",
            cache_root=cache, reference_n=200)
    finally:
        os.umask(old)
    written = sorted(cache.glob("ref-*.pt"))
    assert len(written) == 2 and all(p.stat().st_mode & 0o777 == 0o640 for p in written)
    assert saves and all(tmp in found for tmp, found in saves)  # a kill mid-save leaves a known orphan
    assert not any(p.exists() for p in stale) and young.exists()
    assert orphans(cache) == [young]
