"""The `ablate` command line.

The results commands (plot, report, results) import no torch: the modules that train, run or load specs
(ablations/running, ablations/grid/spec.py) are imported inside the commands that need them.
"""
import os
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import click

from ablations.grid.config import TRAIN_FIELDS, TrainConfig, eval_steps, scored_at
from ablations.store.io import read_json
from ablations.store.layout import CONFIG, DONE, INVALID, last_step, run_folder
from ablations.store.schema import AXES

RUNS_ROOT = os.environ.get("ABLATE_RUNS_ROOT", "runs")
RESULTS_ROOT = os.environ.get("ABLATE_RESULTS_ROOT", "results")

# The options every command shares, declared once: the spec's scale, the run store and the results folders.
SCALE = click.option("--scale", help="Which scale of the spec (smoke, cpu, paper, ...). Default: the spec's.")
RUNS = click.option("--runs-root", default=RUNS_ROOT, show_default=True, type=click.Path(file_okay=False),
                    help="The run store: each run's folder is RUNS_ROOT/<run_id>/, shared by every spec that "
                         "names the run. Env: ABLATE_RUNS_ROOT.")
RESULTS = click.option("--results-root", default=RESULTS_ROOT, show_default=True, type=click.Path(file_okay=False),
                       help="Where results folders go: RESULTS_ROOT/<spec>[-<scale>]/. Env: ABLATE_RESULTS_ROOT.")


def _spec_options(f):
    """--scale and --runs-root: every command that reads a spec's runs."""
    return SCALE(RUNS(f))


def _roots(f):
    """--runs-root and --results-root: every results command (collect, plot, report, results, export) takes
    both; plot, report and results read the results folders alone, never the runs."""
    return RUNS(RESULTS(f))


def _load(spec_path, scale, overrides=()):
    from ablations.grid.spec import SpecError, load_spec
    try:
        return load_spec(spec_path, scale, overrides=overrides)
    except SpecError as e:
        raise click.ClickException(str(e)) from None


def _set_option(f):
    """--set KEY=VALUE (repeatable): a spec key changed for this command (ablations/grid/spec.py)."""
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a spec key, e.g. base.lr=1e-3, eval.fid_samples=2000, "
                             "scale.cpu.base.batch=64 (repeatable; the value is TOML, a bare word a string).")(f)


def _folder_option(path, option):
    """A folder option (--runs-root, --results-root) that is, or can become, a folder: neither it nor
    any folder above it may be a file."""
    for q in (path, *(str(p) for p in Path(path).parents)):
        if os.path.lexists(q):
            if not os.path.isdir(q):
                kind = "a file" if os.path.isfile(q) else "a broken link or a symlink loop"
                where = f"is {kind}" if q == path else f"is under {q}, which is {kind}"
                raise click.ClickException(f"{option} {path} {where}, not a folder; give a folder")
            return


def _invalid(spec, runs, runs_root) -> dict:
    """{run_id: why} for the runs whose folders do not hold the run their id names (ledger.check_folder),
    each reported on one line."""
    from ablations.running import ledger
    found = {}
    for r in runs:
        why = ledger.check_folder(r, runs_root, spec.overrides)
        if why:
            found[r.run_id] = why
            click.echo(f"error: {why}", err=True)
    return found


def _refuse_emulated_bf16(spec_path, todo, device):
    """Stop before any training when runs to do have bf16 = true and this machine would only emulate it."""
    from ablations.running.hardware import bf16_refusal
    ids = [r.run_id for r in todo if r.config.bf16]
    why = ids and bf16_refusal(True, device)
    if why:
        raise click.ClickException(f"{spec_path}: key 'bf16' of run(s) {', '.join(ids)}: {why}")


def _migrate(runs_root):
    from ablations.store.migrate import migrate, restore_whole_rows, set_aside_stale_nll, share_across_steps
    if os.path.isdir(runs_root):
        migrate(runs_root, echo=click.echo)
        share_across_steps(runs_root, echo=click.echo)
        restore_whole_rows(runs_root, echo=click.echo)
        set_aside_stale_nll(runs_root, echo=click.echo)


def _print_table(rows: list[dict], last=()):
    """Aligned columns; `last` columns go at the end (long paths)."""
    if not rows:
        return
    cols = [c for c in rows[0] if c not in last] + [c for c in last if c in rows[0]]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    for r in [dict(zip(cols, cols)), *rows]:
        click.echo("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip())


def _warn(spec):
    """Runs that train but cannot answer their question: each reason once, with the run ids, on stderr."""
    from core.unet import time_blind
    blind = {}
    for r in spec.runs:
        c = r.config
        why = time_blind(c.norm, c.conditioning, c.groups, [c.model_channels * m for m in c.mults])
        if why:
            blind.setdefault((c.norm, c.conditioning, why), []).append(r.run_id)
    for (norm, conditioning, why), ids in blind.items():
        click.echo(f"warning: {spec.path}: norm {norm!r} with conditioning {conditioning!r} in run(s) "
                   f"{', '.join(ids)}: {why}", err=True)


def _expanded(spec, runs):
    """The --dry-run listing: run ids, axis values, seeds and the values the overrides set, without
    looking at any folder."""
    from ablations.grid.spec import parse_override
    keys = [parse_override(o)[0] for o in spec.overrides]
    fields = [p[-1] for p in keys if p[:-1] == ["base"] or (len(p) == 4 and p[0] == "scale" and p[2] == "base")]
    return [{"run_id": r.run_id, **r.axes, "seed": r.config.seed, **{f: getattr(r.config, f) for f in fields}}
            for r in runs]


def _echo_overrides(spec):
    if spec.overrides:
        click.echo(f"overrides: {' '.join(spec.overrides)}; eval: fid_samples {spec.eval.fid_samples}, "
                   f"{len(spec.eval.settings)} sampler setting(s)")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main():
    """Declarative DDPM ablations: spec -> runs -> FID / NLL / throughput rows.

    \b
    Examples:
      ablate run ablations/demo.toml                 # the README's main job
      ablate run ablations/schedule.toml --scale smoke
      ablate run ablations/norm.toml --dry-run       # list the expanded runs and their ids
      ablate list ablations/sampler.toml --scale cpu # runs, their status and who holds them
      ablate release ablations/norm.toml --only RUN_ID  # remove a run's claim by hand
      ablate run ablations/demo.toml --set base.lr=1e-3  # a spec key changed for one command
      ablate export ablations/demo.toml --tensorboard    # event files for runs made without tensorboard
    """


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@_spec_options
@click.option("--dry-run", is_flag=True, help="List the expanded runs with their ids, and nothing else.")
@click.option("--only", "only", multiple=True, metavar="RUN_ID", help="Run only these run ids (repeatable).")
@click.option("--data-root", type=click.Path(file_okay=False), help="Folder holding the dataset files.")
@click.option("--download", is_flag=True, help="Let torchvision download missing datasets (needs network).")
@click.option("--device", help="torch device; default: cuda when present, else cpu.")
@click.option("--workers", default=1, show_default=True, help="Local worker processes (each gets cores/N threads).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@_set_option
def run(spec_path, scale, runs_root, dry_run, only, data_root, download, device, workers, no_progress, overrides):
    """Train and evaluate every run of SPEC locally; complete runs are skipped.

    \b
    Examples:
      ablate run ablations/demo.toml
      ablate run ablations/loss.toml --scale smoke --runs-root /tmp/runs
      ablate run ablations/norm.toml --only 3f2a9c01de
      ablate run ablations/demo.toml --set base.lr=1e-3 --set eval.fid_samples=2000 --dry-run
    """
    from ablations.running import ledger, runner
    spec = _load(spec_path, scale, overrides)
    _warn(spec)
    runs = [r for r in spec.runs if not only or r.run_id in only]
    unknown = set(only) - {r.run_id for r in spec.runs}
    if unknown:
        raise click.ClickException(f"{spec_path}: unknown run ids {sorted(unknown)}; "
                                   f"see `ablate run {spec_path} --dry-run`")
    if dry_run:
        _echo_overrides(spec)
        _print_table(_expanded(spec, runs))
        return
    _folder_option(runs_root, "--runs-root")
    _migrate(runs_root)
    invalid = _invalid(spec, runs, runs_root)
    todo = [r for r in runs if r.run_id not in invalid and not ledger.is_complete(spec, r, runs_root)]
    click.echo(f"{spec.name}: {len(runs)} runs, {len(runs) - len(todo) - len(invalid)} complete, {len(todo)} to run"
               + (f", {len(invalid)} invalid (not run)" if invalid else "") + f" -> {runs_root}")
    _refuse_emulated_bf16(spec_path, todo, device or runner.default_device())
    if todo:
        click.echo(_eta(spec, todo, runs_root, device or runner.default_device()))
    stop = _stop_on_signals()
    kw = dict(data_root=data_root, download=download, device=device, progress=not no_progress)
    if workers > 1:  # every worker walks the whole list; claims give each run to one of them
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init,
                                 initargs=(workers,)) as pool:
            states = {}
            job = (spec_path, scale, overrides, [r.run_id for r in todo], runs_root, kw)
            for part in pool.map(_run_in_worker, [job] * workers):
                states.update(part)
    else:
        states = runner.run_all(spec, todo, runs_root, echo=click.echo, should_stop=stop.is_set, **kw)
    failed = [*invalid, *(r.run_id for r in todo if states.get(r.run_id) != DONE)]
    _print_table(ledger.table(spec, runs_root))
    if stop.is_set():
        click.echo(_stopped(todo, states), err=True)
        sys.exit(130)
    if failed:
        click.echo(f"{len(failed)} run(s) did not finish: {', '.join(failed)}", err=True)
        sys.exit(1)


def _stopped(todo, states) -> str:
    """What a Ctrl-C or SIGTERM left, as it happened: runs stopped with a checkpoint, runs never started."""
    from ablations.store.layout import FAILED, INTERRUPTED
    said = {INTERRUPTED: "stopped with a checkpoint (training at a step boundary, or evaluation between "
                         "sampler settings)", None: "not started (held by another process, or not reached)",
            FAILED: "failed"}
    parts = []
    for state, words in said.items():
        ids = [r.run_id for r in todo if states.get(r.run_id) == state]
        if ids:
            parts.append(f"{len(ids)} run(s) {words}: {', '.join(ids)}")
    return "interrupted: " + "; ".join(parts or ["every run finished"]) + "; re-run to resume"


def _eta(spec, todo, runs_root, device) -> str:
    """The work left: each run's remaining training steps and its evaluations not yet in its rows."""
    from ablations.running import budget, ledger
    from ablations.running.data import SIZES
    from ablations.running.training import total_steps
    work = []
    for r in todo:
        folder = run_folder(runs_root, r.run_id)
        steps_left = max(0, total_steps(r.config, SIZES[r.config.dataset]["train"]) - last_step(folder))
        work.append(budget.run_flops(r.config, spec.eval, steps_left, ledger.missing(spec, r, folder)))
    return budget.eta(work, budget.measured_rates(todo[0].config, spec.eval, device))


@main.command(name="list")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@_spec_options
@_set_option
def list_runs(spec_path, scale, runs_root, overrides):
    """Show the runs of SPEC and their status (pending, running, done, needs-eval, failed).

    \b
    Example:
      ablate list ablations/demo.toml
      ablate list ablations/demo.toml --set base.lr=1e-3
    """
    from ablations.running import ledger
    spec = _load(spec_path, scale, overrides)
    _folder_option(runs_root, "--runs-root")
    _migrate(runs_root)
    rows = ledger.table(spec, runs_root)
    _print_table(rows)
    invalid = [r["reason"] for r in rows if r["state"] == INVALID]
    for why in invalid:
        click.echo(f"error: {why}", err=True)
    if invalid:
        sys.exit(1)


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--only", "only", multiple=True, required=True, metavar="RUN_ID",
              help="The run whose claim to remove (repeatable).")
@_spec_options
@click.option("--force", is_flag=True, help="Remove it even when its holder is alive (a live process on this "
                                            "host, a SLURM job squeue knows).")
def release(spec_path, only, scale, runs_root, force):
    """Remove the claim on a run by hand, so the next `ablate run` or job takes it. A claim whose
    holder is alive and checkable (a process on this host, a SLURM job) is kept unless --force; one
    held from another host cannot be checked from here and is removed.

    \b
    Example:
      ablate list ablations/norm.toml                       # the held_by column
      ablate release ablations/norm.toml --only 3f2a9c01de
    """
    from ablations.store import claim
    spec = _load(spec_path, scale)
    _folder_option(runs_root, "--runs-root")
    unknown = sorted(set(only) - {r.run_id for r in spec.runs})
    if unknown:
        raise click.ClickException(f"{spec_path}: unknown run ids {unknown}; see `ablate list {spec_path}`")
    refused = []
    for run_id in only:
        folder = run_folder(runs_root, run_id)
        h = claim.read(folder)
        if h is None:
            click.echo(f"{run_id}: no claim")
            continue
        who = claim.describe(h, path=folder / "claim.json")
        if claim.checkable(h) and claim.alive(h) and not force:
            click.echo(f"error: {run_id}: claim kept: its holder ({who}) is alive; stop it, or give --force",
                       err=True)
            refused.append(run_id)
            continue
        try:
            claim.remove(folder)
        except claim.ClaimError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"{run_id}: claim of {who} released")
    if refused:
        sys.exit(1)


def _stop_on_signals() -> threading.Event:
    """Ctrl-C or SIGTERM: runs stop at the next step boundary, save a checkpoint and are marked
    interrupted; a second signal stops at once (still marking the run)."""
    stop = threading.Event()

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo(f"\n{signal.Signals(signum).name}: stopping at the next step boundary (again to stop now)",
                   err=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    return stop


_WORKER_STOP = threading.Event()


def _worker_init(workers):
    global _WORKER_STOP
    _WORKER_STOP = _stop_on_signals()  # Ctrl-C reaches every process of the terminal's group
    import torch
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _run_in_worker(args):
    from ablations.running import runner
    spec_path, scale, overrides, run_ids, runs_root, kw = args
    spec = _load(spec_path, scale, overrides)
    runs = [r for r in spec.runs if r.run_id in run_ids]
    return runner.run_all(spec, runs, runs_root, echo=lambda msg: None, should_stop=_WORKER_STOP.is_set,
                          **{**kw, "progress": False})


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@_spec_options
@click.option("--partition", "-p", help="sbatch --partition.")
@click.option("--gpus-per-node", default=0, show_default=True, help="sbatch --gpus-per-node; >1 trains with DDP.")
@click.option("--nodes", default=1, show_default=True, help="sbatch --nodes; >1 trains with DDP.")
@click.option("--tasks-per-node", type=int, help="sbatch --ntasks-per-node. Default: max(gpus-per-node, 1).")
@click.option("--cpus-per-task", type=int, help="sbatch --cpus-per-task.")
@click.option("--mem", "mem_gb", type=float, help="Memory per node in GB (sbatch --mem).")
@click.option("--time", "time_min", default=60, show_default=True, help="Minutes per job (sbatch --time).")
@click.option("--array-parallelism", type=int, help="Array tasks running at once (sbatch --array=...%K).")
@click.option("--account", help="sbatch --account.")
@click.option("--qos", help="sbatch --qos.")
@click.option("--constraint", help="sbatch --constraint.")
@click.option("--max-requeues", default=3, show_default=True, help="Requeues on timeout/preemption before failing.")
@click.option("--signal-delay", "signal_delay_s", default=90, show_default=True,
              help="Seconds before the time limit that the checkpoint signal (USR2) is sent.")
@click.option("--cluster", type=click.Choice(["slurm", "local", "debug"]),
              help="submitit executor; default: slurm when sbatch is found, else local.")
@click.option("--data-root", type=click.Path(file_okay=False), help="Dataset folder as seen from the nodes.")
@click.option("--dry-run", is_flag=True, help="Print the sbatch parameters and the runs; submit nothing.")
@_set_option
def submit(spec_path, scale, runs_root, data_root, dry_run, overrides, **params):
    """Submit every incomplete run of SPEC to SLURM as one job array, and return at once.

    \b
    Examples:
      ablate submit ablations/schedule.toml --scale paper -p gpu --gpus-per-node 1 --time 1440
      ablate submit ablations/norm.toml --scale smoke -p debug --cpus-per-task 1 --dry-run
    """
    from slurm.dispatch import executor_for, pending_runs
    from slurm.dispatch import submit as do_submit
    spec = _load(spec_path, scale, overrides)
    _folder_option(runs_root, "--runs-root")
    _warn(spec)
    _migrate(runs_root)
    invalid = _invalid(spec, spec.runs, runs_root)  # reported; never submitted
    spec = replace(spec, runs=tuple(r for r in spec.runs if r.run_id not in invalid))
    todo = pending_runs(spec, runs_root)
    if dry_run:
        ex, given = executor_for(spec, runs_root, **params)
        click.echo(f"executor: {ex.cluster}")
        _echo_overrides(spec)
        for k, v in sorted(given.items()):  # the values that become #SBATCH lines
            click.echo(f"  {k} = {v}")
        click.echo(f"{len(todo)} of {len(spec.runs)} runs would be submitted:")
        for r in todo:
            click.echo(f"  {r.run_id}  {r.axes}  seed {r.config.seed}")
        return
    if not todo:
        click.echo(f"0 jobs submitted: all {len(spec.runs)} runs of {spec.name} are complete or running.")
        return
    jobs = do_submit(spec, runs_root, data_root=data_root, **params)  # its jobs load the spec with the overrides
    ids = " ".join(j.job_id for j in jobs)
    if len(jobs) == 1:  # submitit sends a single task as a plain job, not an array
        click.echo(f"submitted 1 job: {ids}")
    else:
        click.echo(f"submitted {len(jobs)} jobs as array {jobs[0].job_id.split('_')[0]}: {ids}")
    click.echo(f"logs: {jobs[0].paths.folder}  (follow with `ablate status {spec_path}`)")


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@_spec_options
def status(spec_path, scale, runs_root):
    """Each run's state (pending, running, requeued, done, failed, ...) from run folders and squeue.

    \b
    Example:
      ablate status ablations/schedule.toml --scale paper
    """
    from slurm.dispatch import status_table
    spec = _load(spec_path, scale)
    _folder_option(runs_root, "--runs-root")
    _migrate(runs_root)
    _print_table(status_table(spec, runs_root), last=("log",))


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@_spec_options
def cancel(spec_path, scale, runs_root):
    """scancel every job of SPEC that SLURM still knows.

    \b
    Example:
      ablate cancel ablations/schedule.toml --scale paper
    """
    from slurm.dispatch import cancel as do_cancel
    ids = do_cancel(_load(spec_path, scale), runs_root)
    click.echo(f"cancelled {len(ids)} jobs" + (f": {' '.join(ids)}" if ids else ""))


def _describe(spec, runs, runs_root) -> list[dict]:
    """What results/ needs to know of each run, as plain values taken from the run itself: its folder, the
    spec and scale, and the seed and axis values of the resolved config its folder's config.json records
    (the grid's axes labelled as the spec labels them, str(value), then the standard axes). A grid axis of
    tables that names no config field keeps the spec's label; a run without a folder yet (a status row
    only) takes the spec's config, the one its id hashes. `until` and `scored` are what this spec asks of
    the run (its training steps; the checkpoints it scores, each with its settings), so that a run shared
    with a spec that trained it further or scored it otherwise gives this spec only its own rows."""
    from ablations.running.ledger import run_steps
    out = []
    for r in runs:
        folder = run_folder(runs_root, r.run_id)
        cfg = _recorded(folder) or r.config
        axes = {a: str(getattr(cfg, a)) if a in TRAIN_FIELDS else label for a, label in r.axes.items()}
        axes.update({a: getattr(cfg, a) for a in AXES if a not in axes})
        until = run_steps(r)
        scored = {at: [s._asdict() for s in scored_at(spec.eval, until, at)] for at in eval_steps(spec.eval, until)}
        out.append({"folder": str(folder), "run_id": r.run_id, "ablation": spec.name, "scale": spec.scale,
                    "seed": cfg.seed, **axes, "until": until, "scored": scored})
    return out


def _recorded(folder) -> TrainConfig | None:
    """The TrainConfig a run folder's config.json records (ablations/store/layout.py), or None without one."""
    record = read_json(Path(folder) / CONFIG)
    if record is None:
        return None
    return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in record["train"].items()})


def _results_dir(target, results_root) -> str:
    """A results folder: the folder given, or results_root/<target>; the error says how to make one."""
    for folder in (target, os.path.join(results_root, target)):
        if os.path.isdir(folder):
            return folder
    hint = (f"; a spec file makes one: `ablate collect {target}`, then give results_root/<spec>[-<scale>]/"
            if target.endswith(".toml") else "; `ablate collect SPEC` makes one")
    raise click.ClickException(f"{target}: not a results folder (nor is {os.path.join(results_root, target)})"
                               f"{hint}, e.g. {os.path.join(results_root, 'norm-cpu')}")


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@SCALE
@_roots
@_set_option
def collect(spec_path, scale, runs_root, results_root, overrides):
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
    spec = _load(spec_path, scale, overrides)
    _folder_option(runs_root, "--runs-root")
    _folder_option(results_root, "--results-root")
    _migrate(runs_root)
    out = os.path.join(results_root, spec.name)
    invalid = _invalid(spec, spec.runs, runs_root)
    runs = _describe(spec, [r for r in spec.runs if r.run_id not in invalid], runs_root)
    axes = [*spec.axes, *(a for a in AXES if a not in spec.axes)]
    c = do_collect(runs, out, axes=axes)
    identity.write(out, str(spec.path), spec.name, spec.scale, spec.axes, axes, runs)
    _write_overrides(out, spec)
    write_findings(out, spec)
    click.echo(f"{out}/rows.csv: {c['rows']} rows from {c['runs']} runs ({c['failed']} failed); "
               f"{c['skipped']} lines that are not rows skipped (half-written or malformed); "
               f"{c['duplicates']} duplicate rows dropped")
    if c["foreign"]:
        click.echo(f"note: rows of metrics this suite does not know, left out (a newer suite wrote them): "
                   f"{', '.join(c['foreign'])}")
    if invalid:
        click.echo(f"error: {len(invalid)} invalid run folder(s) not collected: {', '.join(invalid)}", err=True)
        sys.exit(1)


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


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--tensorboard", is_flag=True, help="TensorBoard event files under <run>/tb/.")
@SCALE
@_roots
@_set_option
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
    spec = _load(spec_path, scale, overrides)
    _folder_option(runs_root, "--runs-root")
    invalid = _invalid(spec, spec.runs, runs_root)
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


@main.command()
@click.argument("folder", metavar="RESULTS_DIR")
@_roots
def plot(folder, runs_root, results_root):
    """Figures (PNG and PDF) from a results folder alone (rows.csv, axes.json): FID vs steps, bars, loss
    curves, throughput, samples. RESULTS_DIR is a folder `ablate collect` wrote, or its name under
    --results-root; no spec is loaded and no run is read.

    \b
    Example:
      ablate plot results/norm-cpu
      ablate plot norm-cpu --results-root /tmp/results
    """
    from ablations.reporting.plots import plot_all
    for p in _from_folder(plot_all, _results_dir(folder, results_root)):
        click.echo(p)


@main.command()
@click.argument("folder", metavar="RESULTS_DIR")
@_roots
def report(folder, runs_root, results_root):
    """RESULTS_DIR/report.md: tables, figures and the protocol, from the folder alone (rows.csv, summary.csv,
    axes.json); RESULTS_DIR as for `ablate plot`.

    \b
    Example:
      ablate report results/norm-cpu
    """
    from ablations.reporting.report import write_report
    click.echo(_from_folder(write_report, _results_dir(folder, results_root)))


@main.command(name="results")
@_roots
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


@main.command()
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


@main.command()
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


if __name__ == "__main__":
    main()
