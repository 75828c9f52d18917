"""Rows of a metric this suite does not know: a newer suite's, in a run folder both suites share. They are whole
rows, not torn lines: kept in rows.jsonl and left out by the readers; and the rows an older suite did set
aside in rows.partial.jsonl (it took them for torn lines) go back (`migrate.restore_whole_rows`)."""
import json
from pathlib import Path

import pandas as pd
from click.testing import CliRunner
from conftest import tiny_spec

from ablations.commands.cli import main
from ablations.reporting.table import collect
from ablations.running import runner
from ablations.store import claim
from ablations.store.migrate import restore_whole_rows
from ablations.store.schema import parse, read_rows, row

RUN_ID = "0123456789"


def _append(rows, stamp, append_id):
    return [json.dumps({**r, "timestamp": stamp, "append_id": append_id, "append_rows": len(rows)}) for r in rows]


def _train(step, loss=0.5, mse=0.4):
    """One logging step's append, as a newer suite writes it: train_loss and a metric this suite lacks."""
    return [row(RUN_ID, "train_loss", loss, phase="train", train_step=step, n=16),
            {**row(RUN_ID, "train_loss", mse, phase="train", train_step=step, n=16), "metric": "train_future"}]


def _folder(tmp_path, lines, partial=None):
    folder = tmp_path / "runs" / RUN_ID
    folder.mkdir(parents=True)
    (folder / "rows.jsonl").write_text("".join(line + "\n" for line in lines))
    if partial is not None:
        (folder / "rows.partial.jsonl").write_text("".join(line + "\n" for line in partial))
    return folder


def test_a_newer_suites_row_is_whole_and_keeps_its_append_whole():
    whole = _append(_train(10), 1.0, "a")
    torn = _append(_train(20), 2.0, "b")[1:]  # the known row of the append is missing
    bad = json.dumps({**json.loads(whole[1]), "value": "abc"})  # an unknown metric is no excuse for a bad value
    kinds = [kind for _, kind, _ in parse("\n".join([*whole, *torn, bad]).encode())]
    assert kinds == ["row", "foreign", "partial", "bad"]


def test_readers_leave_a_newer_suites_rows_out_without_counting_them_as_skipped(tmp_path):
    folder = _folder(tmp_path, [*_append(_train(10), 1.0, "a"), "{not json"])
    rows, skipped = read_rows(folder / "rows.jsonl")
    assert [r["metric"] for r in rows] == ["train_loss"] and skipped == 1
    run = {"folder": folder, "run_id": RUN_ID, "ablation": "x", "scale": "smoke", "seed": 0, "norm": "group"}
    counts = collect([run], tmp_path / "res", axes=["norm"])
    assert counts["foreign"] == ["train_future"] and counts["skipped"] == 1 and counts["rows"] == 1
    assert pd.read_csv(tmp_path / "res" / "rows.csv")["metric"].tolist() == ["train_loss"]


def test_on_resume_a_newer_suites_rows_stay_and_only_this_suites_later_curve_rows_go(tmp_path):
    lines = [*_append(_train(10), 1.0, "a"), *_append(_train(20), 2.0, "b"), *_append(_train(30), 3.0, "c")]
    folder = _folder(tmp_path, [*lines, "{torn"])
    said = []
    runner._tidy_rows(folder, 20, said.append)
    kept = (folder / "rows.jsonl").read_text().splitlines()
    assert kept == lines[:4] + lines[5:6]  # train_loss at 30 is logged again by training; train_future is not
    assert (folder / "rows.partial.jsonl").read_text() == "{torn\n" and len(said) == 1


def _history():
    """A rows file as written: three training appends, then an eval append, in timestamp order."""
    ev = row(RUN_ID, "fid", 50.0, phase="eval", sampler="ddim", steps=5, eta=0.0, clip_x0=True, spacing="leading",
             n=32, extractor="fmnist-classifier", reference="fashion_mnist:test:1000", sample_seed=0, train_step=30)
    return [*_append(_train(10), 1.0, "a"), *_append(_train(20), 2.0, "b"), *_append(_train(30), 3.0, "c"),
            *_append([ev], 4.0, "d")]


def test_rows_an_older_suite_set_aside_go_back_in_their_place_and_nothing_else_moves(tmp_path):
    full = _history()
    torn = _append(_train(40), 5.0, "e")[:1]
    again = json.dumps({**json.loads(full[6]), "value": 51.0, "timestamp": 4.5})  # a second measurement
    aside = [*full[2:4], torn[0], "{not json", again]
    folder = _folder(tmp_path, full[:2] + full[4:], aside)
    said = []
    assert restore_whole_rows(tmp_path / "runs", echo=said.append) == 1
    assert (folder / "rows.jsonl").read_text() == "".join(line + "\n" for line in full)  # byte for byte, in order
    assert (folder / "rows.partial.jsonl").read_text() == "".join(line + "\n" for line in aside[2:])
    assert "2 whole rows" in said[0]
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert restore_whole_rows(tmp_path / "runs", echo=said.append) == 0  # idempotent
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_restore_killed_between_its_two_writes_is_finished_by_the_next(tmp_path):
    full = _history()
    folder = _folder(tmp_path, full, full[2:4])  # rows.jsonl rewritten, rows.partial.jsonl not yet
    assert restore_whole_rows(tmp_path / "runs", echo=lambda msg: None) == 0
    assert (folder / "rows.jsonl").read_text() == "".join(line + "\n" for line in full)
    assert not (folder / "rows.partial.jsonl").exists()


def test_a_run_a_live_process_holds_is_left_for_a_later_call(tmp_path):
    full = _history()
    folder = _folder(tmp_path, full[:2] + full[4:], full[2:4])
    assert claim.acquire(folder) == (True, None)  # this process: alive
    assert restore_whole_rows(tmp_path / "runs", echo=lambda msg: None) == 0
    assert (folder / "rows.partial.jsonl").read_text().splitlines() == full[2:4]
    claim.release(folder)
    assert restore_whole_rows(tmp_path / "runs", echo=lambda msg: None) == 1


def test_every_command_that_migrates_restores_them(tmp_path):
    spec = tmp_path / "t.toml"
    spec.write_text(tiny_spec())
    full = _history()
    folder = _folder(tmp_path, full[:2] + full[4:], full[2:4])
    listed = CliRunner().invoke(main, ["list", str(spec), "--runs-root", str(tmp_path / "runs")])
    assert listed.exit_code == 0 and "rows set aside" in listed.output, listed.output  # list reads: it says so
    assert (folder / "rows.partial.jsonl").exists()
    result = CliRunner().invoke(main, ["run", str(spec), "--runs-root", str(tmp_path / "runs"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"migrate: {RUN_ID}: 2 whole rows" in result.output
    assert Path(folder / "rows.jsonl").read_text() == "".join(line + "\n" for line in full)
