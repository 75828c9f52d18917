"""`ablate collect` and `ablate results` as a user runs them (a fresh process each), with `ablate list` and `ablate run`
beside them, on what they read in practice: each file once per command (issue 39, item 5).

- collect, list and run (nothing left to train or score) on a store of the prediction question's curve grid at
  33 seeds, 99 runs: each folder holds a config.json, a done status.json and a rows.jsonl with every row the spec
  asks for (4 checkpoints; 80 eval rows) and the training rows logged every 25 steps (3 metrics), 248 lines;
  and, beside them, the norm question's curve grid at 2 seeds (14 runs of its own), which a migration pass over
  the whole store reads;
- results on a copy of the committed results folders (their rows, findings, axes.json and notes), every summary,
  figure, report and the index drawn again.

Each benchmark also records the CPU seconds of the command's process (`cpu_s`, user + system, the median over
its rounds), which other work on a shared machine inflates less than the wall time.
"""
import json
import resource
import shutil
import statistics
from pathlib import Path

import pytest

from ablations.grid.spec import load_spec
from ablations.running.ledger import config_record, run_steps, wanted
from ablations.store.layout import CONFIG, ROWS, STATUS, run_folder
from ablations.store.schema import EVAL_KEY, row
from bench.conftest import ROOT, ablate, describe

SEEDS = (f"seeds={list(range(33))}",)
EVERY = 25  # the training rows' logging interval, as the curve scale's runs log them


def _finished(spec, runs):
    """Every run of `spec` finished in `runs` (plain writes: the fixture is not what is timed)."""
    for r in spec.runs:
        folder = run_folder(runs, r.run_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG).write_text(json.dumps(config_record(r)))
        total = run_steps(r)
        (folder / STATUS).write_text(json.dumps({"state": "done", "step": total, "total": total}))
        lines = [row(r.run_id, m, 1.0 / s, phase="train", train_step=s, n=r.config.batch)
                 for s in range(EVERY, total + 1, EVERY) for m in ("train_loss", "train_img_per_s", "train_wall_s")]
        for k in wanted(spec, r):
            cols = dict(zip(EVAL_KEY, k))
            lines.append(row(r.run_id, cols.pop("metric"), 1.0, **cols))
        (folder / ROWS).write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(spec path, runs root, results root, number of runs): the prediction curve grid at 33 seeds, finished, beside
    the norm curve grid at 2 seeds (the runs both name hold the prediction spec's rows)."""
    tmp = tmp_path_factory.mktemp("store")
    path = ROOT / "ablations" / "prediction.toml"
    spec = load_spec(path, "curve", overrides=SEEDS)
    _finished(load_spec(ROOT / "ablations" / "norm.toml", "curve", overrides=("seeds=[0, 1]",)), tmp / "runs")
    _finished(spec, tmp / "runs")
    return path, tmp / "runs", tmp / "results", len(spec.runs)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A copy of the committed results folders (no records, no benchmarks): what `make results` redraws."""
    tmp = tmp_path_factory.mktemp("results") / "results"
    shutil.copytree(ROOT / "results", tmp, ignore=lambda folder, names: [n for n in names if n in ("runs", "bench")]
                    if Path(folder) == ROOT / "results" else [])
    return tmp


def _timed(benchmark, args) -> str:
    """`ablate ARGS` in 3 rounds, its wall time by pytest-benchmark and its process's CPU time in `cpu_s`."""
    cpu = []

    def call():
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = ablate(*args)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        return out
    out = benchmark.pedantic(call, rounds=3, iterations=1)
    benchmark.extra_info["cpu_s"] = statistics.median(cpu)
    return out


COMMANDS = {"collect": lambda p, runs, res: ("collect", p, "--scale", "curve", "--set", SEEDS[0], "--runs-root", runs,
                                             "--results-root", res),
            "list": lambda p, runs, res: ("list", p, "--scale", "curve", "--set", SEEDS[0], "--runs-root", runs),
            "run": lambda p, runs, res: ("run", p, "--scale", "curve", "--set", SEEDS[0], "--runs-root", runs,
                                         "--no-progress")}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_store_command(benchmark, store, command):
    path, runs, results, n = store
    describe(benchmark, kind="read_once", implementation="ours", variant=command, batch=n)
    out = _timed(benchmark, COMMANDS[command](path, runs, results))
    assert {"collect": f"from {n} runs", "list": "done", "run": f"{n} complete, 0 to run"}[command] in out


def test_results(benchmark, results):
    folders = len(list(results.glob("*/rows.csv")))
    describe(benchmark, kind="read_once", implementation="ours", variant="results", batch=folders)
    out = _timed(benchmark, ("results", "--results-root", results))
    assert "files regenerated" in out
