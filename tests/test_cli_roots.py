"""A run's identity travels with it (issue 26): `collect` writes each run's axis values from its own
config.json into axes.json; `plot` and `report` take a results folder and read its axes there, never a
spec; every results command takes the same root options, declared once."""
import json
import subprocess
import sys
from pathlib import Path

import click
import pandas as pd
import pytest
from click.testing import CliRunner

from ablations.commands.cli import main
from ablations.reporting import axes
from ablations.reporting.table import summarize, write_csv
from ablations.store.schema import RUN_COLUMNS, SPEC_COLUMNS, STATUS_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
RESULTS_COMMANDS = {"collect", "plot", "report", "results", "export"}
SPEC_COMMANDS = {"run", "list", "release", "submit", "status", "cancel", "collect", "export", "record"}
RECORDS_COMMANDS = {"run", "list", "collect", "record"}


def _ablate(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def _option(command, name) -> click.Option | None:
    return next((p for p in main.commands[command].params if p.name == name), None)


def test_every_command_takes_the_shared_options_from_one_declaration():
    """--scale and --runs-root on every spec command, --runs-root and --results-root on every results command,
    each option the same (help, default, type) wherever it appears, and declared once in the source."""
    for names, commands in ((("scale", "runs_root"), SPEC_COMMANDS), (("runs_root", "results_root"), RESULTS_COMMANDS)):
        for command in commands:
            for name in names:
                assert _option(command, name) is not None, (command, name)
    assert all(_option(c, "records") is not None for c in RECORDS_COMMANDS)
    for name in ("scale", "runs_root", "results_root", "records"):
        found = [o for c in main.commands for o in [_option(c, name)] if o is not None]
        assert len({(o.help, o.default, o.show_default, type(o.type), tuple(o.opts)) for o in found}) == 1, name
    source = (ROOT / "ablations" / "commands" / "common.py").read_text()
    for flag in ("--scale", "--runs-root", "--results-root", "--records"):
        assert source.count(f'click.option("{flag}"') == 1, flag
    runs_help = _option("run", "runs_root").help
    assert "RUNS_ROOT/<run_id>/" in runs_help and "<spec>/<run_id>" not in runs_help


def paper_folder(root: Path) -> Path:
    """A paper-scale results folder made from rows (no run, no model): the schedule question at cpu
    numbers' shape, with Inception FID over 50,000 images, two schedules x two seeds."""
    folder = root / "schedule-paper"
    rows, runs = [], []
    for schedule in ("linear", "cosine"):
        for seed in (0, 1):
            run_id = f"{schedule[:3]}{seed}"
            cols = {"run_id": run_id, "ablation": "schedule-paper", "scale": "paper", "seed": seed,
                    "schedule": schedule, "prediction": "eps", "status": "done", "reason": None}
            runs.append({"run_id": run_id, "seed": seed, "schedule": schedule, "prediction": "eps"})
            rows += [{**cols, "metric": "train_loss", "phase": "train", "train_step": s, "n": 128,
                      "value": 0.1 / s ** 0.5} for s in (100, 200, 800_000)]
            rows.append({**cols, "metric": "train_img_per_s", "phase": "train", "train_step": 800_000, "n": 128,
                         "value": 900.0 + seed})
            for sampler, steps, fid in (("ddim", 50, 4.0), ("ddpm", 1000, 3.2)):
                setting = {"phase": "eval", "train_step": 800_000, "sampler": sampler, "steps": steps, "eta": 0.0,
                           "clip_x0": True, "spacing": "leading", "nfe": steps}
                rows.append({**cols, **setting, "metric": "fid", "n": 50_000, "extractor": "inception",
                             "reference": "cifar10:train:50000", "sample_seed": 0,
                             "value": fid + (schedule == "cosine") * 0.3 + seed * 0.1})
                rows.append({**cols, **setting, "metric": "sample_img_per_s", "n": 50_000, "value": 40.0 / steps})
            rows.append({**cols, "metric": "nll_bpd", "phase": "eval", "train_step": 800_000, "clip_x0": True,
                         "n": 10_000, "reference": "cifar10:test:10000", "strata": 1000, "sample_seed": 0,
                         "value": 3.7 - (schedule == "cosine") * 0.05})
    order = list(dict.fromkeys(["run_id", *SPEC_COLUMNS, "schedule", "prediction", *RUN_COLUMNS, *STATUS_COLUMNS]))
    table = pd.DataFrame(rows).reindex(columns=order)
    folder.mkdir(parents=True)
    write_csv(table, folder / "rows.csv")
    write_csv(summarize(pd.read_csv(folder / "rows.csv"), ["schedule", "prediction"]), folder / "summary.csv")
    axes.write(folder, "ablations/schedule.toml", "schedule-paper", "paper", ["schedule"], ["schedule", "prediction"],
               runs)
    return folder


FRESH = """
import json, sys
from pathlib import Path
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, Path)):
        opened.append(str(args[0]))
sys.addaudithook(hook)
from ablations.commands.cli import main
for command in ("plot", "report"):
    main([command, sys.argv[1]], standalone_mode=False)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "core", "torch_fidelity", "torchvision"))
weights = [p for p in opened if "weights" in p or p.endswith((".pt", ".pth", ".pkl")) or "torch" in p]
print(json.dumps({"heavy": heavy, "weights": weights}))
"""


def test_plotting_and_reporting_a_paper_scale_folder_needs_neither_torch_nor_weights(tmp_path):
    """`ablate plot` and `ablate report` on a paper-scale folder, in a fresh interpreter: no torch, no core, no
    torch_fidelity imported, no weights file opened; the report names the axis that axes.json names."""
    folder = paper_folder(tmp_path)
    r = subprocess.run([sys.executable, "-c", FRESH, str(folder)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"heavy": [], "weights": []}
    for f in ("fid_vs_steps", "bars", "loss", "throughput"):
        assert (folder / f"{f}.png").stat().st_size > 1000
    report = (folder / "report.md").read_text()
    assert "Axis: `schedule`." in report and "inception" in report and "| schedule |" in report


def test_plot_and_report_take_a_folder_or_its_name_and_the_root_options(tmp_path):
    """The folder's name under --results-root finds it; --runs-root is taken (and never read); a spec file is
    not a results folder, and the error says how to make one."""
    folder = paper_folder(tmp_path / "res")
    _ablate("report", folder.name, "--results-root", tmp_path / "res", "--runs-root", tmp_path / "nowhere")
    assert "Axis: `schedule`." in (folder / "report.md").read_text()
    out = _ablate("plot", ROOT / "ablations" / "schedule.toml", "--results-root", tmp_path / "res", ok=False)
    assert "not a results folder" in out and "ablate collect" in out


def test_the_axis_comes_from_axes_json_not_from_the_columns(tmp_path):
    """Both schedule and prediction vary in the rows; axes.json's grid names prediction, so the report's axis
    is prediction (a rule guessing from the columns would pick schedule, the first that varies)."""
    folder = paper_folder(tmp_path)
    rows = pd.read_csv(folder / "rows.csv")
    rows["prediction"] = rows["seed"].map({0: "eps", 1: "v"})
    write_csv(rows, folder / "rows.csv")
    record = axes.read(folder)
    runs = [{"run_id": k, **v} for k, v in record["runs"].items()]
    axes.write(folder, record["spec"], record["ablation"], "paper", ["prediction"], ["prediction", "schedule"], runs)
    _ablate("report", folder)
    assert "Axis: `prediction`." in (folder / "report.md").read_text()


@pytest.mark.parametrize("broken, said", [
    (None, ["axes.json: no such file", "`ablate collect SPEC`"]),
    (lambda r: {**r, "grid": ["prediction"]}, ["key 'grid'", "must lead key 'axes'"]),
    (lambda r: {**r, "axes": ["schedule", "norm"], "runs": {k: {**v, "norm": "group"} for k, v in r["runs"].items()}},
     ["key 'axes'", "norm not a column of rows.csv", "valid: run_id"]),
    (lambda r: {**r, "runs": {"lin0": {"seed": 0}}}, ["key 'runs.lin0'", "no value for schedule, prediction"]),
    (lambda r: {**r, "scale": 3}, ["key 'scale'", "expected a string or null, got 3"]),
    (lambda r: {k: v for k, v in r.items() if k != "grid"}, ["key 'grid' missing", "valid keys: spec"]),
])
def test_a_folder_without_a_good_axes_json_is_a_clear_error(tmp_path, broken, said):
    """Each command that reads a folder says which file and key is wrong, and how to make the file."""
    folder = paper_folder(tmp_path)
    path = folder / axes.FILE
    if broken is None:
        path.unlink()
    else:
        path.write_text(json.dumps(broken(json.loads(path.read_text()))))
    for args in (("plot", folder), ("report", folder), ("results", "--results-root", tmp_path)):
        out = _ablate(*args, ok=False)
        assert str(path) in out and "Traceback" not in out, out
        for text in said:
            assert text in out, (args, text, out)


def test_collect_takes_the_axis_values_from_each_runs_config_json(tmp_path):
    """Runs whose folders hold only config.json, status.json and a row (nothing trained): collect writes
    axes.json with the spec, scale, grid axes first and each run's values from its config (a tuple-valued
    grid axis labelled as the spec labels it), and the same values in rows.csv; a run with no folder yet
    is a status row with the spec's values."""
    from ablations.grid.spec import load_spec
    from ablations.running.ledger import config_record
    from ablations.store.io import append_jsonl, write_json
    from ablations.store.layout import CONFIG, STATUS, run_folder
    from ablations.store.schema import row
    spec_path = tmp_path / "widths.toml"
    spec_path.write_text('name = "widths"\nseeds = [0, 1]\n[base]\nschedule = "cosine"\nres_blocks = 1\n'
                         'train_steps = 4\n[grid]\nmults = [[1, 2], [1, 2, 2]]\n[[eval.setting]]\n'
                         'sampler = "ddim"\nsteps = 10\n')
    spec = load_spec(spec_path)
    runs_root = tmp_path / "runs"
    for r in spec.runs[:-1]:
        folder = run_folder(runs_root, r.run_id)
        folder.mkdir(parents=True)
        write_json(folder / CONFIG, config_record(r))
        write_json(folder / STATUS, {"state": "done"})
        append_jsonl(folder / "rows.jsonl", [row(r.run_id, "train_loss", 0.5, phase="train", train_step=4, n=128)])
    _ablate("collect", spec_path, "--runs-root", runs_root, "--results-root", tmp_path / "res")
    out = tmp_path / "res" / "widths"
    record = axes.read(out)
    assert (record["spec"], record["ablation"], record["scale"]) == (str(spec_path), "widths", None)
    assert record["grid"] == ["mults"] and record["axes"] == ["mults", "schedule", "prediction", "loss", "variance",
                                                              "norm"]
    assert record["runs"] == {r.run_id: {"seed": r.config.seed, "mults": str(r.config.mults), "schedule": "cosine",
                                         "prediction": "eps", "loss": "simple", "variance": "fixed_small",
                                         "norm": "group"} for r in spec.runs}
    assert {v["mults"] for v in record["runs"].values()} == {"(1, 2)", "(1, 2, 2)"}
    rows = pd.read_csv(out / "rows.csv").drop_duplicates("run_id").set_index("run_id")
    for run_id, values in record["runs"].items():
        assert {a: rows.loc[run_id, a] for a in values} == values
    assert rows.loc[spec.runs[-1].run_id, "status"] == "pending"


def test_collect_keeps_only_the_rows_this_spec_asked_of_a_shared_run(tmp_path):
    """Run ids leave out train_steps, so a 4-step spec shares its run with an 8-step one that also scored a
    DDPM setting at its last checkpoint: collecting the 4-step spec keeps the rows up to step 4, of its own
    checkpoints (2 and 4) and setting (DDIM-10), and drops the 8-step spec's (before, its table's last
    checkpoint would have been step 8, which this spec never trained to), and of its own checkpoints and
    setting only the measurements it asks for (before, the sampler spec's solver_rms of a shared run reached
    the prediction question's table once the sampler spec had scored it)."""
    from ablations.grid.spec import load_spec
    from ablations.running.ledger import config_record
    from ablations.store.io import append_jsonl, write_json
    from ablations.store.layout import CONFIG, STATUS, run_folder
    from ablations.store.schema import row
    spec_path = tmp_path / "short.toml"
    spec_path.write_text('name = "short"\n[base]\nres_blocks = 1\ntrain_steps = 4\n[eval]\neval_at = [2]\n'
                         '[[eval.setting]]\nsampler = "ddim"\nsteps = 10\n')
    (run,) = load_spec(spec_path).runs
    folder = run_folder(tmp_path / "runs", run.run_id)
    folder.mkdir(parents=True)
    write_json(folder / CONFIG, config_record(run))
    write_json(folder / STATUS, {"state": "done"})
    ddim = dict(phase="eval", sampler="ddim", steps=10, eta=0.0, clip_x0=True, spacing="leading", n=100)
    ddpm = {**ddim, "sampler": "ddpm", "steps": 100}
    nll = dict(phase="eval", n=10, strata=4, clip_x0=True, spacing="geometric")  # as the runner writes it
    rows = [row(run.run_id, "train_loss", 0.5, phase="train", train_step=s, n=1) for s in (2, 4, 6, 8)]
    rows += [row(run.run_id, "fid", 100.0 - s, train_step=s, **ddim) for s in (2, 4, 8)]
    rows += [row(run.run_id, "fid", 90.0, train_step=s, **ddpm) for s in (4, 8)]
    rows += [row(run.run_id, "nll_bpd", 5.0, train_step=s, **nll) for s in (2, 3, 4, 8)]
    # what other specs measured at this spec's own checkpoint and setting: solver_rms (this spec's
    # solver_images is 0), a FID under an extractor it does not name, denoising rows at a t it does not score
    rows += [row(run.run_id, "solver_rms", 0.1, train_step=4, **ddim),
             row(run.run_id, "fid", 80.0, train_step=4, **ddim, extractor="fmnist-classifier-seed1"),
             row(run.run_id, "x0_rms", 0.3, train_step=4, phase="eval", n=10, t=100)]
    append_jsonl(folder / "rows.jsonl", rows)
    _ablate("collect", spec_path, "--runs-root", tmp_path / "runs", "--results-root", tmp_path / "res")
    got = pd.read_csv(tmp_path / "res" / "short" / "rows.csv")
    kept = {(m, s, int(t)) if isinstance(s, str) else (m, "-", int(t))
            for m, s, t in zip(got.metric, got.sampler, got.train_step)}
    assert kept == {("train_loss", "-", 2), ("train_loss", "-", 4), ("fid", "ddim", 2), ("fid", "ddim", 4),
                    ("nll_bpd", "-", 2), ("nll_bpd", "-", 4)}
    assert (got["metric"] == "fid").sum() == 2  # not the other extractor's FID at step 4


def test_make_demo_writes_only_where_git_ignores_and_compares_with_the_committed_demo():
    """`make demo` leaves `git status` clean: every command of its recipe that writes results names a results
    root that git ignores, and it ends beside the committed demo's numbers (`make -n` prints the recipe)."""
    recipe = subprocess.run(["make", "-n", "-o", "setup", "-o", "compiler", "-o", "data", "demo"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    writes = [line for line in recipe if " collect " in line or line.endswith(" results") or " results " in line]
    assert writes and all("--results-root runs/results" in line for line in writes), recipe
    paths = ["runs/results/demo/rows.csv", "runs/results/README.md"]
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == paths
    assert any("ablate compare runs/results/demo results/demo" in line for line in recipe), recipe


def test_compare_puts_each_number_beside_the_same_cell_and_says_where_the_protocols_differ(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for folder, value, reference, seeds in ((ours, 140.0, "fashion_mnist:test:10000", 1),
                                            (theirs, 138.2, "fashion_mnist:train:60000", 3)):
        folder.mkdir()
        pd.DataFrame([{"ablation": "demo", "scale": None, "norm": "group", "metric": m, "phase": "eval",
                       "train_step": 1800, "sampler": "ddim", "steps": 10, "eta": 0.0, "clip_x0": True,
                       "spacing": "leading", "n": 1000, "extractor": "fmnist-classifier", "reference": reference,
                       "sample_seed": 0, "mean": v, "std": None, "seeds": seeds, "ci95": None}
                      for m, v in (("fid", value), ("sample_wall_s", 9.0))]).to_csv(folder / "summary.csv",
                                                                                   index=False)
    out = _ablate("compare", ours, theirs)
    (line,) = [x for x in out.splitlines() if x.startswith("| fid |")]
    assert "| 140 | 138.2 | +1.8 |" in line
    assert "reference: fashion_mnist:test:10000 vs fashion_mnist:train:60000" in line
    assert "seeds: 1 vs 3" in line  # make demo's one seed beside the committed demo's three
    assert "sample_wall_s" not in out  # machine speed, not a result
