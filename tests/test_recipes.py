"""The README's recipes, followed as written: a toy numeric training axis and a toy sampler are added to a copy of
the suite through exactly the places README.md's "Adding an axis" and "Adding a sampler" list, and nowhere else,
then run end to end at the smoke scale through `ablate`: spec validation, training, rows, solver error, the
collected table, the legends and the report. Skipping any one listed place makes the run fail (or its check)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
END = None  # an edit that appends to the file

# --- the listed places, as a user edits them ------------------------------------------------------------------
# A numeric axis `toy_gain` (the loss times a gain), fed to loss_terms by its own name.
TOY_AXIS = {
    "core/losses.py": [(END, '''

_loss_terms = loss_terms  # the toy axis's core keyword: loss_terms(..., toy_gain) scales the loss


def loss_terms(*args, toy_gain: float = 1.0, **kw):
    """loss_terms with the loss times `toy_gain` (tests/test_recipes.py)."""
    terms = _loss_terms(*args, **kw)
    return {**terms, "loss": toy_gain * terms["loss"]}
''')],
    "ablations/run/axes.py": [('    loss_terms: ("vlb_weight",),\n', '    loss_terms: ("vlb_weight", "toy_gain"),\n')],
    "ablations/run/config.py": [("    seed: int = 0\n", "    seed: int = 0\n    toy_gain: float = 1.0  # the toy axis\n"),
                                ("RANGES = {\n", 'RANGES = {\n    "toy_gain": (lambda v: v > 0, "a number > 0"),\n')],
}
# A sampler `toy`: DDIM at eta = 0 under another name, deterministic, so it gets solver_rms rows.
TOY_SAMPLER = {
    "core/samplers.py": [(END, '''

def toy(D, x, plan, *, prediction, variance, eta, clip_x0, generator, callback):
    """DDIM at eta = 0 by another name (tests/test_recipes.py)."""
    return ddim(D, x, plan, prediction=prediction, variance=variance, eta=0.0, clip_x0=clip_x0, generator=generator,
                callback=callback)


SAMPLERS["toy"] = Sampler(toy, deterministic=True, word="Toy-DDIM")
''')],
    "README.md": [("| `sampler` | ", "| `sampler` | `toy` (DDIM at eta 0 by another name), ")],
}
# Each place a recipe lists, by what it does: skipping one (its edit) must fail the end-to-end check.
PLACES = {
    "axis: its core keyword": ("core/losses.py", 0), "axis: its registry entry": ("ablations/run/axes.py", 0),
    "axis: its config field": ("ablations/run/config.py", 0), "axis: its range": ("ablations/run/config.py", 1),
    "sampler: its function and registry entry": ("core/samplers.py", 0),
    "sampler: its Vocabulary row": ("README.md", 0),
}

SPEC = """
name = "recipe"
[grid]
toy_gain = [1.0, 2.0]
[[eval.setting]]
sampler = "toy"
steps = 3
[[eval.setting]]
sampler = "ddim"
steps = 3
[scale.smoke.eval]  # the smoke scale, with fewer images: the pipeline, in seconds
fid_samples = 16
sample_batch = 16
extra_extractors = []
solver_images = 4
nll_images = 4
grid_images = 4
"""

# Run in the copy, in one process: each stage's exit code and output, and every figure's legend and titles.
SCRIPT = r'''
import json, os, sys
import torch
torch.set_num_threads(1)
import pytest
from click.testing import CliRunner
from ablations.commands.cli import main
from ablations.reporting import plots

spec, runs, results = sys.argv[1:4]
out, drawn, real = {}, {}, plots.save_figure


def seen(fig, out_dir, name):  # what each figure shows in words, then the figure written as always
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    drawn[name] = [t.get_text() for lg in legends for t in lg.get_texts()] + [ax.get_title() for ax in fig.axes]
    return real(fig, out_dir, name)


plots.save_figure = seen
out["vocabulary"] = {"code": int(pytest.main(["-q", "-p", "no:cacheprovider", "tests/test_axes.py", "-k",
                                              "vocabulary"])), "output": ""}
stages = [("validation", ["run", spec, "--scale", "smoke", "--dry-run"]),
          ("run", ["run", spec, "--scale", "smoke", "--runs-root", runs, "--no-progress"]),
          ("collect", ["collect", spec, "--scale", "smoke", "--runs-root", runs, "--results-root", results]),
          ("report", ["report", os.path.join(results, "recipe-smoke")]),
          ("plot", ["plot", os.path.join(results, "recipe-smoke")])]
r = CliRunner().invoke(main, ["run", spec, "--scale", "smoke", "--dry-run", "--set", "grid.toy_gain=[-1.0]"])
out["refused"] = {"code": r.exit_code, "output": r.output}  # a bad value is refused before anything runs
for name, args in stages:
    if any(out[s]["code"] for s, _ in stages if s in out) or out["vocabulary"]["code"]:
        break
    r = CliRunner().invoke(main, args)
    out[name] = {"code": r.exit_code, "output": r.output + (repr(r.exception) if r.exit_code else "")}
out["legends"] = drawn
print("RESULT " + json.dumps(out))
'''


def _edit(copy: Path, places: dict, skip=None):
    for path, edits in places.items():
        text = (copy / path).read_text()
        for i, (old, new) in enumerate(edits):
            if skip == (path, i):
                continue
            if old is END:
                text += new
            else:
                assert text.count(old) == 1, f"{path}: the recipe's anchor {old!r} moved; update tests/test_recipes.py"
                text = text.replace(old, new)
        (copy / path).write_text(text)


def _follow(tmp_path, skip=None) -> tuple[dict, Path]:
    """A copy of the suite with the toy axis and sampler added at the listed places (less `skip`), run end to
    end in a fresh interpreter: (each stage's code and output, and the figures' words; the results folder)."""
    copy = tmp_path / "suite"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("core", "ablations", "slurm"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=ignore)
    (copy / "tests").mkdir()
    for f in ("conftest.py", "test_axes.py"):
        shutil.copy(ROOT / "tests" / f, copy / "tests" / f)
    shutil.copy(ROOT / "README.md", copy / "README.md")
    _edit(copy, TOY_AXIS, skip)
    _edit(copy, TOY_SAMPLER, skip)
    (tmp_path / "recipe.toml").write_text(SPEC)
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "recipe.toml"), str(tmp_path / "runs"),
                        str(tmp_path / "results")], cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(line[-1][len("RESULT "):]), tmp_path / "results" / "recipe-smoke"


def _check(out: dict, folder: Path):
    """What the recipes promise, end to end."""
    for stage in ("vocabulary", "validation", "run", "collect", "report", "plot"):
        assert stage in out and out[stage]["code"] == 0, (stage, out.get(stage))
    assert "toy_gain" in out["validation"]["output"]  # the dry run lists the runs with their axis values
    assert out["refused"]["code"] != 0 and "grid.toy_gain[0]" in out["refused"]["output"], out["refused"]
    rows = pd.read_csv(folder / "rows.csv")
    assert (rows["status"] == "done").all()
    # training: the value reached loss_terms (same seed, same first batch: the first loss doubles)
    first = rows[rows["metric"] == "train_loss"].sort_values("train_step").groupby("toy_gain")["value"].first()
    assert first[2.0] / first[1.0] == pytest.approx(2.0, rel=1e-5)
    # rows: the toy sampler's, its NFE from its entry, its solver error from its entry's `deterministic`
    fid = rows[(rows["metric"] == "fid")].set_index(["toy_gain", "sampler"])["value"]
    assert fid[(1.0, "toy")] == fid[(1.0, "ddim")] and fid[(2.0, "toy")] == fid[(2.0, "ddim")]  # DDIM by another name
    assert set(rows.loc[rows["sampler"] == "toy", "nfe"].dropna()) == {3}
    solver = rows[rows["metric"] == "solver_rms"]
    assert sorted(solver["sampler"]) == ["ddim", "ddim", "toy", "toy"]
    # the table, the legends and the report: one text per value of the numeric axis, the sampler by its entry's word
    record = json.loads((folder / "axes.json").read_text())
    assert record["grid"] == ["toy_gain"] and {v["toy_gain"] for v in record["runs"].values()} == {"1.0", "2.0"}
    assert set(pd.read_csv(folder / "summary.csv")["sampler"].dropna()) == {"toy", "ddim"}
    words = [w for texts in out["legends"].values() for w in texts]
    assert "Toy-DDIM" in words and "DDIM η=0" in words and "toy" not in words
    assert record["words"] == {"toy": "Toy-DDIM", "ddim": "DDIM η={eta}"}
    assert any("2.0" in w for w in words) and not any(re.search(r"(?<![\d.])2(?![\d.])", w) for w in words), words
    report = (folder / "report.md").read_text()
    assert "Axis: `toy_gain`." in report and "Toy-DDIM · 3 steps" in report
    assert re.search(r"\| \w+ \| 2\.0 \| 0 \| done \|", report)  # the runs table
    lines = report.splitlines()  # every other table's axis column too
    assert any(x.startswith("| 2.0 | ") for x in lines) and not any(re.match(r"\| [12] \| ", x) for x in lines)


@pytest.mark.slow
def test_a_numeric_axis_and_a_sampler_added_at_the_listed_places_run_end_to_end(tmp_path):
    out, folder = _follow(tmp_path)
    _check(out, folder)


def test_the_readme_lists_exactly_the_places_the_recipes_edit():
    """Each file the toy axis and sampler edit is named in its README section, and nothing else is edited."""
    text = (ROOT / "README.md").read_text()
    axis = text.split("\n## Adding an axis\n", 1)[1].split("\n## ", 1)[0]
    sampler = text.split("\n## Adding a sampler\n", 1)[1].split("\n## ", 1)[0]
    for path in TOY_AXIS:
        assert f"`{path}`" in axis, path
    for path in TOY_SAMPLER:
        assert f"`{path}`" in sampler or (path == "README.md" and "[Vocabulary](#vocabulary)" in sampler), path
    assert {p for p, _ in PLACES.values()} == {*TOY_AXIS, *TOY_SAMPLER}


@pytest.mark.slow
@pytest.mark.parametrize("place", list(PLACES))
def test_skipping_a_listed_place_fails(tmp_path, place):
    out, folder = _follow(tmp_path, skip=PLACES[place])
    with pytest.raises((AssertionError, KeyError, FileNotFoundError)):
        _check(out, folder)
