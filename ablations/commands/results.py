"""The results commands: `ablate collect` (run folders -> a results folder's tables), `export` (TensorBoard
files from rows), `plot`, `report` and `results` (figures, reports and the index from the results folders alone),
and the tools beside them, `classifier` and `bench`."""
import os
import sys
from pathlib import Path

import click

from ablations.commands.common import (RECORDS, RESULTS, RESULTS_ROOT, SCALE, folder_option, invalid_folders,
                                       load, note_legacy, roots, set_option)
from ablations.run.config import TRAIN_FIELDS, TrainConfig, eval_steps, scored_at
from ablations.store.layout import run_folder
from ablations.store.reads import Reads, look

def _describe(spec, runs, runs_root, records=None, reads=None) -> list[dict]:
    """What results/ needs to know of each run, as plain values taken from the run itself: its folder, the
    spec and scale, and the seed and axis values of the resolved config its folder's config.json records
    (the grid's axes labelled as the spec labels them, str(value), then the standard axes). A grid axis of
    tables that names no config field keeps the spec's label; a run without a folder yet (a status row
    only) takes the spec's config, the one its id hashes. `until` and `scored` are what this spec asks of
    the run (its training steps; the checkpoints it scores, each with its settings), and `extractors`,
    `solver` and `denoise_t` the measurements it asks for, so that a run shared with a spec that trained it
    further or scored it otherwise gives this spec only its own rows. A run is
    read from its runs-root folder or from its record, never both (`ledger.source`). Each folder's files
    through the command's `reads` (ablations/store/reads.py), which reads them once."""
    from ablations.run.axes import STANDARD  # the registry imports core (torch): collect only, never plot/report
    from ablations.running.ledger import run_steps, source, state
    ev = spec.eval
    measures = {"extractors": [ev.fid_extractor, *ev.extra_extractors], "solver": ev.solver_images > 0,
                "denoise_t": list(ev.denoise_t)}
    out = []
    for r in runs:
        root = source(spec, r, runs_root, records, reads)
        folder, status = run_folder(root, r.run_id), state(spec, r, root, reads)
        cfg = _recorded(folder, reads) or r.config
        axes = {a: str(getattr(cfg, a)) if a in TRAIN_FIELDS else label for a, label in r.axes.items()}
        axes.update({a: getattr(cfg, a) for a in STANDARD if a not in axes})
        until = run_steps(r)
        scored = {at: [s._asdict() for s in scored_at(spec.eval, until, at)] for at in eval_steps(spec.eval, until)}
        out.append({"folder": str(folder), "run_id": r.run_id, "ablation": spec.name, "scale": spec.scale,
                    "seed": cfg.seed, **axes, "until": until, "scored": scored, "status": status, **measures})
    return out


def _recorded(folder, reads=None) -> TrainConfig | None:
    """The TrainConfig a run folder's config.json records (ablations/store/layout.py), or None without one."""
    seen = look(reads, folder)
    return None if seen.record is None else seen.config


def _results_dir(target, results_root) -> str:
    """A results folder: the folder given, or results_root/<target>; the error says how to make one."""
    for folder in (target, os.path.join(results_root, target)):
        if os.path.isdir(folder):
            return folder
    hint = (f"; a spec file makes one: `ablate collect {target}`, then give results_root/<spec>[-<scale>]/"
            if target.endswith(".toml") else "; `ablate collect SPEC` makes one")
    raise click.ClickException(f"{target}: not a results folder (nor is {os.path.join(results_root, target)})"
                               f"{hint}, e.g. {os.path.join(results_root, 'norm-cpu')}")


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@SCALE
@roots
@RECORDS
@set_option
def collect(spec_path, scale, runs_root, results_root, records, overrides):
    """Gather every run's rows into results/<spec>/rows.csv (tidy, long) and summary.csv, the runs'
    identity (the spec, scale, axes and each run's axis values, from its config.json) into axes.json, and
    the spec's findings into findings.json.

    \b
    Example:
      ablate collect ablations/demo.toml && ablate plot results/demo && ablate report results/demo
      ablate collect ablations/demo.toml --set base.lr=1e-3   # the runs of `ablate run ... --set base.lr=1e-3`

    With --set, the overrides are written to results/<spec>/overrides.json (removed when collected without).
    """
    from ablations.reporting import axes as identity
    from ablations.reporting.table import collect as do_collect
    spec = load(spec_path, scale, overrides)
    folder_option(runs_root, "--runs-root")
    folder_option(results_root, "--results-root")
    reads = Reads()  # one pass over each run folder: every file read once, shared by every step below
    note_legacy(runs_root, reads, [run_folder(runs_root, r.run_id) for r in spec.runs])
    out = os.path.join(results_root, spec.name)
    invalid = invalid_folders(spec, spec.runs, runs_root, reads)
    runs = _describe(spec, [r for r in spec.runs if r.run_id not in invalid], runs_root, records, reads)
    from ablations.run.axes import STANDARD
    axes = [*spec.axes, *(a for a in STANDARD if a not in spec.axes)]
    c = do_collect(runs, out, axes=axes, reads=reads)
    identity.write(out, str(spec.path), spec.name, spec.scale, spec.axes, axes, runs,
                   words(s.sampler for s in spec.eval.settings))
    _write_overrides(out, spec)
    write_findings(out, spec)
    click.echo(f"{out}/rows.csv: {c['rows']} rows from {c['runs']} runs ({c['failed']} failed); "
               f"{c['skipped']} lines that are not rows skipped (half-written or malformed); "
               f"{c['duplicates']} duplicate rows dropped")
    if c["foreign"]:
        click.echo(f"note: rows of metrics this suite does not know, left out (a newer suite wrote them): "
                   f"{', '.join(c['foreign'])}")
    _say_unscorable(runs)
    if invalid:
        click.echo(f"error: {len(invalid)} invalid run folder(s) not collected: {', '.join(invalid)}", err=True)
        sys.exit(1)


def words(samplers) -> dict:
    """sampler -> its legend word (its registry entry's `word`), for those of `samplers` that have one:
    axes.json carries them to the figures and reports, which import no registry."""
    from core.samplers import SAMPLERS  # torch: collect only, never plot/report
    return {s: SAMPLERS[s].word for s in samplers if SAMPLERS[s].word}


def _say_unscorable(runs):
    """The runs (`_describe`'s) whose rows this spec cannot get as they stand (ledger.unscorable): each with its
    reason, which names the way out. Collected as they are, with that state in this spec's rows."""
    from ablations.store.layout import UNSCORABLE
    for r in runs:
        if r["status"]["state"] == UNSCORABLE:
            click.echo(f"note: unscorable for this spec: {r['status']['reason']}", err=True)


def _write_overrides(out, spec):
    """results/<spec>/overrides.json: the --set pairs the table was collected with (none: no file)."""
    from ablations.store.io import write_json
    path = Path(out) / OVERRIDES
    if spec.overrides:
        write_json(path, {"spec": str(spec.path), "scale": spec.scale, "overrides": list(spec.overrides)})
    else:
        path.unlink(missing_ok=True)


OVERRIDES = "overrides.json"


def write_findings(out, spec):
    """results/<spec>/findings.json: the spec's published findings and notes (ablations/grid/findings.py), which
    the verdicts read from the folder alone."""
    from ablations.grid.findings import FILE
    from ablations.store.io import write_json
    write_json(Path(out) / FILE, spec.findings)


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--tensorboard", is_flag=True, help="TensorBoard event files under <run>/tb/.")
@SCALE
@roots
@set_option
def export(spec_path, tensorboard, scale, runs_root, results_root, overrides):
    """Write each run's TensorBoard event files from its rows.jsonl, for runs that have none (runs made
    without the `tracking` extra). Needs tensorboard: pip install -e '.[tracking]'.

    \b
    Example:
      ablate export ablations/demo.toml --tensorboard && tensorboard --logdir runs
    """
    from ablations.running import tracking
    if not tensorboard:
        raise click.ClickException("nothing to export: give --tensorboard")
    if tracking.writer_class() is None:
        raise click.ClickException("--tensorboard needs the tensorboard package: pip install -e '.[tracking]'")
    spec = load(spec_path, scale, overrides)
    folder_option(runs_root, "--runs-root")
    invalid = invalid_folders(spec, spec.runs, runs_root)
    done = [r.run_id for r in spec.runs if r.run_id not in invalid
            and tracking.export(run_folder(runs_root, r.run_id), r.config)]
    click.echo(f"{len(done)} of {len(spec.runs)} runs exported to <run>/{tracking.TB}/ (the others have no rows "
               f"or have event files already)" + (f": {', '.join(done)}" if done else ""))
    if invalid:
        sys.exit(1)


def _from_folder(make, *args):
    """make(*args) for a results folder, its axes.json missing or malformed said as an error, not a trace."""
    from ablations.reporting.axes import AxesError
    try:
        return make(*args)
    except AxesError as e:
        raise click.ClickException(str(e)) from None


@click.command()
@click.argument("folder", metavar="RESULTS_DIR")
@roots
def plot(folder, runs_root, results_root):
    """Figures (PNG and PDF) from a results folder alone (rows.csv, axes.json): FID vs steps, bars, loss
    curves, throughput, samples. RESULTS_DIR is a folder `ablate collect` wrote, or its name under
    --results-root; no spec is loaded and no run is read.

    \b
    Example:
      ablate plot results/norm-cpu
      ablate plot norm-cpu --results-root /tmp/results
    """
    from ablations.reporting.figures import plot_all
    for p in _from_folder(plot_all, _results_dir(folder, results_root)):
        click.echo(p)


@click.command()
@click.argument("folder", metavar="RESULTS_DIR")
@roots
def report(folder, runs_root, results_root):
    """RESULTS_DIR/report.md: tables, figures and the protocol, from the folder alone (rows.csv, summary.csv,
    axes.json); RESULTS_DIR as for `ablate plot`.

    \b
    Example:
      ablate report results/norm-cpu
    """
    from ablations.reporting.report import write_report
    click.echo(_from_folder(write_report, _results_dir(folder, results_root)))


@click.command(name="results")
@roots
def results_cmd(runs_root, results_root):
    """Redraw every summary, figure and report under RESULTS_ROOT, and its README.md index, from the
    committed rows.csv and axes.json files alone (no models, no runs folder).

    \b
    Example:
      ablate results
    """
    from ablations.reporting.index import regenerate
    paths = _from_folder(regenerate, results_root)
    click.echo(f"{len(paths)} files regenerated; index: {paths[-1]}")


@click.command()
@click.argument("ours", metavar="RESULTS_DIR")
@click.argument("theirs", metavar="OTHER_DIR")
@RESULTS
def compare(ours, theirs, results_root):
    """Each number of RESULTS_DIR beside the same cell of OTHER_DIR (e.g. a fresh `make demo` beside the
    committed demo): metric, setting and checkpoint, the two means over seeds, and where the two were measured
    against different references or counts, both.

    
    Example:
      ablate compare runs/results/demo results/demo
    """
    from ablations.reporting.compare import side_by_side
    lines = side_by_side(_results_dir(ours, results_root), _results_dir(theirs, results_root))
    click.echo("\n".join(lines))


@click.command()
@click.option("--seed", default=0, show_default=True, help="Seeds the init and each epoch's data order.")
@click.option("--epochs", default=4, show_default=True, help="Passes over the training split.")
@click.option("--data-root", type=click.Path(file_okay=False), help="Folder with the Fashion-MNIST idx files.")
@click.option("--out", type=click.Path(dir_okay=False), help="Where to write the weights. Default: "
              "ablations/metrics/weights/fmnist_classifier.pt (the fmnist-classifier extractor's).")
def classifier(seed, epochs, data_root, out):
    """Retrain the Fashion-MNIST classifier behind the fmnist-classifier FID extractors, deterministically;
    print its test accuracy and the sha256 of the weights (to compare with WEIGHTS in
    ablations/metrics/classifier.py).

    \b
    Examples:
      ablate classifier
      ablate classifier --seed 1 --out ablations/metrics/weights/fmnist_classifier_seed1.pt
    """
    from ablations.metrics.classifier import DEFAULT_WEIGHTS, retrain, sha256
    out = out or DEFAULT_WEIGHTS
    acc, seconds = retrain(out, epochs, seed, data_root)
    click.echo(f"test accuracy {acc:.4f}  ({seconds:.0f} s, {epochs} epochs, seed {seed})")
    click.echo(f"sha256 {sha256(out)}  {out}")


@click.command()
@click.argument("json_path", metavar="BENCH_JSON", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", default=os.path.join(RESULTS_ROOT, "bench"), show_default=True, type=click.Path(file_okay=False))
def bench(json_path, out):
    """Turn `pytest bench --benchmark-json=FILE` output into bench.csv, ratios.csv and a plot.

    \b
    Example:
      pytest bench --benchmark-json=results/bench/bench.json && ablate bench results/bench/bench.json
    """
    from ablations.reporting.bench import write_bench
    for p in write_bench(json_path, out):
        click.echo(p)
