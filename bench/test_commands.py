"""The commands at grid sizes that sweeps reach: `ablate run --dry-run`, `ablate list` and `ablate
collect` on a grid of 100 runs and one of 2,000 (4 architectures each, as norm x lr x seeds), each a
fresh process as a user runs it, plus the bare import of the command line. Every run folder holds a
config.json, a done status.json and 8 training rows, so `list` and `collect` read what they read in a
real runs root. The target: 2,000 runs within 2x of 100 runs (commands_large_over_small in the ratios).
"""
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from ablations.store.layout import CONFIG, ROWS, STATUS, run_folder
from ablations.store.schema import row
from ablations.grid.spec import load_spec
from bench.conftest import ROOT, ablate, describe

GRIDS = {"small-grid": (5, 5), "large-grid": (25, 20)}  # (learning rates, seeds) per norm: 100 and 2,000 runs
SPEC = """name = "{name}"
seeds = {seeds}
[base]
T = 100
model_channels = 8
mults = [1, 2]
res_blocks = 1
batch = 16
train_steps = 4
[grid]
norm = ["group", "layer", "batch", "instance"]
lr = {lrs}
[eval]
fid_samples = 32
fid_reference_n = 1000
nll_images = 8
nll_strata = 2
grid_images = 16
[[eval.setting]]
sampler = "ddim"
steps = [5, 10]
"""


@pytest.fixture(scope="module")
def grids(tmp_path_factory):
    """grid -> (spec path, runs root, results root, number of runs); each grid's folders are written the
    first time it is asked for (plain writes: the fixture is not what is timed)."""
    made = {}

    def get(name):
        if name not in made:
            n_lr, n_seeds = GRIDS[name]
            tmp = tmp_path_factory.mktemp(name)
            path = tmp / "spec.toml"
            path.write_text(SPEC.format(name=name, seeds=list(range(n_seeds)),
                                        lrs=[round(1e-4 * (1 + i), 6) for i in range(n_lr)]))
            spec = load_spec(path)
            for r in spec.runs:
                folder = run_folder(tmp / "runs", r.run_id)
                folder.mkdir(parents=True)
                (folder / CONFIG).write_text(json.dumps({"run_id": r.run_id, "train": asdict(r.config)}))
                (folder / STATUS).write_text(json.dumps({"state": "done", "step": 4, "total": 4}))
                (folder / ROWS).write_text("".join(json.dumps(row(r.run_id, "train_loss", 1.0 / s, phase="train",
                                                                  train_step=s, n=16), sort_keys=True) + "\n"
                                                   for s in range(1, 9)))
            made[name] = (path, tmp / "runs", tmp / "results", len(spec.runs))
        return made[name]
    return get


COMMANDS = {"dry-run": lambda p, runs, res: ("run", p, "--dry-run"),
            "list": lambda p, runs, res: ("list", p, "--runs-root", runs),
            "collect": lambda p, runs, res: ("collect", p, "--runs-root", runs, "--results-root", res)}


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_command(benchmark, grids, command, grid):
    path, runs, results, n = grids(grid)
    describe(benchmark, kind="command", implementation="ours", variant=command, batch=n)
    out = benchmark.pedantic(ablate, args=COMMANDS[command](path, runs, results), rounds=3, iterations=1)
    assert out.count("\n") >= n if command != "collect" else f"from {n} runs" in out


def test_import(benchmark):
    describe(benchmark, kind="import", implementation="ours", variant="ablations.commands.cli")
    benchmark.pedantic(subprocess.run, args=([sys.executable, "-c", "import ablations.commands.cli"],),
                       kwargs={"cwd": ROOT, "check": True}, rounds=3, iterations=1)
