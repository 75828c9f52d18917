"""The `ablate` command line: the group, and the commands that run a spec's grid here (run, list, release);
the cluster's (ablations/commands/cluster.py) and the results' (ablations/commands/results.py) join it below.

The results commands (plot, report, results) import no torch: the modules that train, run or load specs
(ablations/running, ablations/grid/spec.py) are imported inside the commands that need them.
"""
import os
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import click

from ablations.commands import cluster, results
from ablations.commands.common import (RECORDS, echo_overrides, folder_option, invalid_folders, load,
                                       migrate_store, note_legacy, print_table, set_option, spec_options,
                                       warn_time_blind)
from ablations.store.io import os_error
from ablations.store.layout import DONE, INVALID, UNSCORABLE, run_folder
from ablations.store.reads import Reads, look

def _refuse_emulated_bf16(spec_path, todo, device):
    """Stop before any training when runs to do have bf16 = true and this machine would only emulate it."""
    from ablations.running.hardware import bf16_refusal
    ids = [r.run_id for r in todo if r.config.bf16]
    why = ids and bf16_refusal(True, device)
    if why:
        raise click.ClickException(f"{spec_path}: key 'bf16' of run(s) {', '.join(ids)}: {why}")


def _expanded(spec, runs):
    """The --dry-run listing: run ids, axis values, seeds and the values the overrides set, without
    looking at any folder."""
    from ablations.grid.spec import parse_override
    keys = [parse_override(o)[0] for o in spec.overrides]
    fields = [p[-1] for p in keys if p[:-1] == ["base"] or (len(p) == 4 and p[0] == "scale" and p[2] == "base")]
    return [{"run_id": r.run_id, **r.axes, "seed": r.config.seed, **{f: getattr(r.config, f) for f in fields}}
            for r in runs]


class Commands(click.Group):
    """The `ablate` group: an OSError a user can cause (a read-only root, no permission, a missing parent)
    ends any command as one line, the path, the operation and why, with exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OSError as e:
            raise click.ClickException(os_error(e)) from None


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
@spec_options
@click.option("--dry-run", is_flag=True, help="List the expanded runs with their ids, and nothing else.")
@click.option("--only", "only", multiple=True, metavar="RUN_ID", help="Run only these run ids (repeatable).")
@click.option("--data-root", type=click.Path(file_okay=False), help="Folder holding the dataset files.")
@click.option("--download", is_flag=True, help="Let torchvision download missing datasets (needs network).")
@click.option("--device", help="torch device; default: cuda when present, else cpu.")
@click.option("--workers", default=1, show_default=True, help="Local worker processes (each gets cores/N threads).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@RECORDS
@set_option
def run(spec_path, scale, runs_root, dry_run, only, data_root, download, device, workers, no_progress, records,
        overrides):
    """Train and evaluate every run of SPEC locally; complete runs are skipped.

    \b
    Examples:
      ablate run ablations/demo.toml
      ablate run ablations/loss.toml --scale smoke --runs-root /tmp/runs
      ablate run ablations/norm.toml --only 3f2a9c01de
      ablate run ablations/demo.toml --set base.lr=1e-3 --set eval.fid_samples=2000 --dry-run
    """
    from ablations.running import ledger, runner
    spec = load(spec_path, scale, overrides)
    warn_time_blind(spec)
    runs = [r for r in spec.runs if not only or r.run_id in only]
    unknown = set(only) - {r.run_id for r in spec.runs}
    if unknown:
        raise click.ClickException(f"{spec_path}: unknown run ids {sorted(unknown)}; "
                                   f"see `ablate run {spec_path} --dry-run`")
    if dry_run:
        echo_overrides(spec)
        print_table(_expanded(spec, runs))
        return
    folder_option(runs_root, "--runs-root")
    reads = Reads()  # each file of a run folder read once, until this command changes the folder
    migrate_store(runs_root, reads, [run_folder(runs_root, r.run_id) for r in runs])
    invalid = invalid_folders(spec, runs, runs_root, reads)
    todo = [r for r in runs if r.run_id not in invalid
            and ledger.state(spec, r, ledger.source(spec, r, runs_root, records, reads), reads)["state"] != DONE]
    click.echo(f"{spec.name}: {len(runs)} runs, {len(runs) - len(todo) - len(invalid)} complete, {len(todo)} to run"
               + (f", {len(invalid)} invalid (not run)" if invalid else "") + f" -> {runs_root}")
    _refuse_emulated_bf16(spec_path, todo, device or runner.default_device())
    if todo:
        click.echo(_eta(spec, todo, runs_root, device or runner.default_device(), reads))
    ledger.ask_all(spec, todo, runs_root)  # before any claim: whichever spec trains a run keeps these checkpoints
    stop = _stop_on_signals()
    kw = dict(data_root=data_root, download=download, device=device, progress=not no_progress)
    if workers > 1:  # every worker walks the whole list; claims give each run to one of them
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init,
                                 initargs=(workers,)) as pool:
            states = {}
            job = (spec_path, scale, overrides, [r.run_id for r in todo], runs_root, {**kw, "records": records})
            for part in pool.map(_run_in_worker, [job] * workers):
                states.update(part)
    else:
        states = runner.run_all(spec, todo, runs_root, echo=click.echo, should_stop=stop.is_set, records=records,
                                **kw)
    unscorable = [r.run_id for r in todo if states.get(r.run_id) == UNSCORABLE]
    failed = [*invalid, *(r.run_id for r in todo if states.get(r.run_id) not in (DONE, UNSCORABLE))]
    reads.forget(*(run_folder(root, r.run_id) for r in todo for root in (runs_root, records) if root))  # trained
    print_table(ledger.table(spec, runs_root, records, reads))
    if unscorable:
        click.echo(f"{len(unscorable)} run(s) unscorable for this spec (done for the specs that trained them; "
                   f"`ablate list` gives the reason and the way out): {', '.join(unscorable)}", err=True)
    if stop.is_set():
        click.echo(_stopped(todo, states), err=True)
        sys.exit(130)
    if failed:
        click.echo(f"{len(failed)} run(s) did not finish: {', '.join(failed)}", err=True)
    if failed or unscorable:
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


def _eta(spec, todo, runs_root, device, reads=None) -> str:
    """The work left: each run's remaining training steps and its evaluations not yet in its rows."""
    from ablations.run.config import total_steps
    from ablations.run.shapes import SIZES
    from ablations.running import budget, ledger
    work = []
    for r in todo:
        folder = run_folder(runs_root, r.run_id)
        steps_left = max(0, total_steps(r.config, SIZES[r.config.dataset]["train"]) - look(reads, folder).last_step)
        work.append(budget.run_flops(r.config, spec.eval, steps_left, ledger.missing(spec, r, folder, reads)))
    return budget.eta(work, budget.measured_rates(todo[0].config, spec.eval, device))


@main.command(name="list")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@spec_options
@RECORDS
@set_option
def list_runs(spec_path, scale, runs_root, records, overrides):
    """Show the runs of SPEC and their status (pending, running, done, needs-eval, failed).

    \b
    Example:
      ablate list ablations/demo.toml
      ablate list ablations/demo.toml --set base.lr=1e-3
    """
    from ablations.running import ledger
    spec = load(spec_path, scale, overrides)
    folder_option(runs_root, "--runs-root")
    reads = Reads()  # each file of a run folder read once
    note_legacy(runs_root, reads, [run_folder(runs_root, r.run_id) for r in spec.runs])
    rows = ledger.table(spec, runs_root, records, reads)
    print_table(rows)
    invalid = [r["reason"] for r in rows if r["state"] == INVALID]
    for why in invalid:
        click.echo(f"error: {why}", err=True)
    if invalid:
        sys.exit(1)


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@spec_options
@RECORDS
@set_option
def record(spec_path, scale, runs_root, records, overrides):
    """Write the record of every finished run of SPEC in the runs root (config.json, status.json, rows.jsonl and
    sample grids: no checkpoints) into RECORDS/<run_id>/, where `run`, `list` and `collect` read it with
    --records. `ablate run --records` writes each as it finishes; this writes those a grid made without it
    (a SLURM grid, say). A record of another training is replaced whole (ablations/store/records.py).

    
    Example:
      ablate record ablations/norm.toml --scale curve --runs-root /scratch/runs --records results/runs
    """
    from ablations.store.layout import DONE, read_status
    from ablations.store.records import write
    spec = load(spec_path, scale, overrides)
    if not records:
        raise click.ClickException("record: give --records (e.g. results/runs) or set ABLATE_RECORDS")
    folder_option(runs_root, "--runs-root")
    folder_option(records, "--records")
    invalid = invalid_folders(spec, spec.runs, runs_root)
    written = 0
    for r in spec.runs:
        folder = run_folder(runs_root, r.run_id)
        if r.run_id not in invalid and folder.is_dir() and read_status(folder)["state"] == DONE:
            click.echo(write(folder, records))
            written += 1
    click.echo(f"{written} of {len(spec.runs)} runs finished in {runs_root}: their records are in {records}")
    if invalid:
        sys.exit(1)


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--only", "only", multiple=True, required=True, metavar="RUN_ID",
              help="The run whose claim to remove (repeatable).")
@spec_options
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
    spec = load(spec_path, scale)
    folder_option(runs_root, "--runs-root")
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
    spec = load(spec_path, scale, overrides)
    runs = [r for r in spec.runs if r.run_id in run_ids]
    return runner.run_all(spec, runs, runs_root, echo=lambda msg: None, should_stop=_WORKER_STOP.is_set,
                          **{**kw, "progress": False})


for command in (cluster.submit, cluster.status, cluster.cancel, results.collect, results.export, results.plot,
                results.report, results.results_cmd, results.compare, results.classifier, results.bench):
    main.add_command(command)

if __name__ == "__main__":
    main()
