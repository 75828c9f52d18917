"""Records (ablations/store/records.py): a finished run's config, status, rows and sample grids, without its
checkpoints. They are written as runs finish, read back as a runs root or beside one, checked against their
ids, and collected byte for byte as the live runs root is. A grid started on one machine finishes on a fresh
one from them, and a record that lacks rows is trained again and replaced whole, never mixed."""
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny_spec

from ablations.commands.cli import main
from ablations.grid.spec import load_spec
from ablations.store.layout import checkpoints, read_status, run_folder
from ablations.store.records import files
from ablations.store.schema import read_rows

TIMING = {"sample_img_per_s", "nfe_per_s", "sample_wall_s", "peak_mem_mb", "fid_wall_s", "nll_wall_s", "prc_wall_s",
          "denoise_wall_s", "compile_s", "train_wall_s", "train_img_per_s"}


def _ablate(*args, ok=True):
    out = CliRunner().invoke(main, [str(a) for a in args])
    assert (out.exit_code == 0) == ok, out.output
    assert "Traceback" not in out.output
    return out.output


def _spec(tmp_path, name="rec", settings=""):
    path = tmp_path / f"{name}.toml"
    path.write_text(tiny_spec(name, norms='["group", "layer"]', steps=4, every=2) + settings)
    return path


def _tree(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _values(folder) -> dict:
    """{(metric, train_step, sampler, extractor): value} of the rows that do not time anything."""
    rows, bad = read_rows(Path(folder) / "rows.jsonl")
    assert bad == 0
    return {(r["metric"], r["train_step"], r.get("sampler"), r.get("extractor")): r["value"] for r in rows
            if r["metric"] not in TIMING}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A two-run grid trained once, with its records written as each run finished."""
    tmp = tmp_path_factory.mktemp("records")
    path = _spec(tmp)
    runs, records = tmp / "runs", tmp / "records"
    out = _ablate("run", path, "--runs-root", runs, "--records", records, "--no-progress")
    return path, runs, records, out


def test_a_finished_run_is_written_as_a_record_without_checkpoints(grid):
    path, runs, records, out = grid
    spec = load_spec(path)
    for run in spec.runs:
        rec = run_folder(records, run.run_id)
        assert f"record {rec}: written" in out
        assert sorted(p.name for p in rec.iterdir()) == sorted(f.name for f in files(run_folder(runs, run.run_id)))
        assert not checkpoints(rec) and checkpoints(run_folder(runs, run.run_id))
        assert (rec / "rows.jsonl").read_bytes() == (run_folder(runs, run.run_id) / "rows.jsonl").read_bytes()
        assert read_status(rec)["training"] and read_status(rec)["step"] == 4
    again = _ablate("record", path, "--runs-root", runs, "--records", records)
    assert again.count("up to date") == 2


def test_collect_from_records_is_byte_identical_to_collect_from_the_live_runs_root(grid, tmp_path):
    path, runs, records, _ = grid
    _ablate("collect", path, "--runs-root", runs, "--results-root", tmp_path / "live")
    _ablate("collect", path, "--runs-root", records, "--results-root", tmp_path / "as-root")
    _ablate("collect", path, "--runs-root", tmp_path / "empty", "--records", records, "--results-root",
            tmp_path / "beside")
    live = _tree(tmp_path / "live" / "rec")
    assert live and "rows.csv" in live and any(k.startswith("samples/") for k in live)
    assert _tree(tmp_path / "as-root" / "rec") == live
    assert _tree(tmp_path / "beside" / "rec") == live


def test_records_read_as_a_runs_root_list_done_and_train_nothing(grid, tmp_path):
    path, _, records, _ = grid
    copy = tmp_path / "records"
    shutil.copytree(records, copy)
    before = _tree(copy)
    listed = _ablate("list", path, "--runs-root", copy)
    assert listed.count(" done ") == 2, listed
    ran = _ablate("run", path, "--runs-root", tmp_path / "fresh", "--records", copy, "--no-progress")
    assert "2 complete, 0 to run" in ran
    assert not any((tmp_path / "fresh").glob("*/ckpt-*"))  # nothing trained
    assert _tree(copy) == before


def test_a_record_is_checked_against_its_id(grid, tmp_path):
    path, _, records, _ = grid
    copy = tmp_path / "records"
    shutil.copytree(records, copy)
    run = load_spec(path).runs[0]
    config = copy / run.run_id / "config.json"
    record = json.loads(config.read_text())
    record["train"]["lr"] = 1.0
    config.write_text(json.dumps(record))
    for cmd in (["list", "--runs-root", copy], ["collect", "--runs-root", copy, "--results-root", tmp_path / "r"]):
        out = _ablate(cmd[0], path, *cmd[1:], ok=False)
        assert "hashes to run" in out and run.run_id in out


def test_a_grid_started_on_one_machine_finishes_on_a_fresh_one_from_the_records(grid, tmp_path):
    """Root A trains one run and records it; root B (a fresh machine) has only the records: it trains the
    other run alone, and the two roots' table is the uninterrupted grid's, value for value."""
    path, runs, _, _ = grid
    spec = load_spec(path)
    first, second = spec.runs
    a, b, records = tmp_path / "a", tmp_path / "b", tmp_path / "records"
    _ablate("run", path, "--only", first.run_id, "--runs-root", a, "--records", records, "--no-progress")
    shutil.rmtree(a)  # the machine is gone: only the committed records are left
    out = _ablate("run", path, "--runs-root", b, "--records", records, "--no-progress")
    assert "1 complete, 1 to run" in out
    assert not run_folder(b, first.run_id).exists()
    for run in spec.runs:  # every number as the uninterrupted grid made it (same machine: same bits)
        assert _values(run_folder(records, run.run_id)) == _values(run_folder(runs, run.run_id))
    listed = _ablate("list", path, "--runs-root", b, "--records", records)
    assert listed.count(" done ") == 2 and "its record in" in listed


def test_a_record_that_lacks_a_specs_rows_is_trained_again_and_replaced_whole(grid, tmp_path):
    path, _, records, _ = grid
    copy = tmp_path / "records"
    shutil.copytree(records, copy)
    more = _spec(tmp_path, "rec", settings='[[eval.setting]]\nsampler = "ddpm"\nsteps = 5\n')
    spec = load_spec(more)
    run = spec.runs[0]
    old = read_status(copy / run.run_id)["training"]
    old_rows = (copy / run.run_id / "rows.jsonl").read_bytes()
    listed = _ablate("list", more, "--runs-root", copy)
    assert "unscorable" in listed and "is a record" in listed
    out = _ablate("run", more, "--only", run.run_id, "--runs-root", tmp_path / "runs", "--records", copy,
                  "--no-progress")
    assert "replaced whole" in out
    new = copy / run.run_id
    assert read_status(new)["training"] != old
    rows, _ = read_rows(new / "rows.jsonl")
    old_ids = {r["append_id"] for r in (json.loads(line) for line in old_rows.decode().splitlines())}
    assert not {r["append_id"] for r in rows} & old_ids  # no row of the old training is left
    assert _values(new) == _values(tmp_path / "runs" / run.run_id)
    assert {k[2] for k in _values(new)} >= {"ddim", "ddpm"}


def test_the_committed_records_hold_the_runs_their_ids_name():
    """results/runs/: every record's config.json hashes to its folder's id, it is finished, and every line of
    its rows.jsonl is a row of that run."""
    from ablations.running.ledger import config_id
    root = Path(__file__).resolve().parent.parent / "results" / "runs"
    for folder in sorted(p for p in root.glob("*") if p.is_dir()) if root.exists() else []:
        assert config_id(json.loads((folder / "config.json").read_text())) == folder.name
        assert read_status(folder)["state"] == "done" and not checkpoints(folder)
        rows, bad = read_rows(folder / "rows.jsonl")
        assert bad == 0 and rows and {r["run_id"] for r in rows} == {folder.name}
