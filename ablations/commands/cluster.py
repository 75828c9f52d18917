"""`ablate submit`, `status` and `cancel`: a spec's runs as a SLURM job array (slurm/dispatch.py, submitit)."""
from dataclasses import replace

import click

from ablations.commands.common import (echo_overrides, folder_option, invalid_folders, load, migrate_store,
                                       note_legacy, print_table, set_option, spec_options, warn_time_blind)

@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@spec_options
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
@set_option
def submit(spec_path, scale, runs_root, data_root, dry_run, overrides, **params):
    """Submit every incomplete run of SPEC to SLURM as one job array, and return at once.

    \b
    Examples:
      ablate submit ablations/schedule.toml --scale paper -p gpu --gpus-per-node 1 --time 1440
      ablate submit ablations/norm.toml --scale smoke -p debug --cpus-per-task 1 --dry-run
    """
    from ablations.store.layout import run_folder
    from ablations.store.reads import Reads
    from slurm.dispatch import executor_for, pending_runs
    from slurm.dispatch import submit as do_submit
    spec = load(spec_path, scale, overrides)
    folder_option(runs_root, "--runs-root")
    warn_time_blind(spec)
    reads = Reads()  # each file of a run folder read once
    migrate_store(runs_root, reads, [run_folder(runs_root, r.run_id) for r in spec.runs])
    invalid = invalid_folders(spec, spec.runs, runs_root, reads)  # reported; never submitted
    spec = replace(spec, runs=tuple(r for r in spec.runs if r.run_id not in invalid))
    todo = pending_runs(spec, runs_root, reads)
    if dry_run:
        ex, given = executor_for(spec, runs_root, **params)
        click.echo(f"executor: {ex.cluster}")
        echo_overrides(spec)
        for k, v in sorted(given.items()):  # the values that become #SBATCH lines
            click.echo(f"  {k} = {v}")
        click.echo(f"{len(todo)} of {len(spec.runs)} runs would be submitted:")
        for r in todo:
            click.echo(f"  {r.run_id}  {r.axes}  seed {r.config.seed}")
        return
    if not todo:
        click.echo(f"0 jobs submitted: all {len(spec.runs)} runs of {spec.name} are complete or running.")
        return
    jobs = do_submit(spec, runs_root, data_root=data_root, reads=reads, **params)  # its jobs load the spec with the overrides
    ids = " ".join(j.job_id for j in jobs)
    if len(jobs) == 1:  # submitit sends a single task as a plain job, not an array
        click.echo(f"submitted 1 job: {ids}")
    else:
        click.echo(f"submitted {len(jobs)} jobs as array {jobs[0].job_id.split('_')[0]}: {ids}")
    click.echo(f"logs: {jobs[0].paths.folder}  (follow with `ablate status {spec_path}`)")


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@spec_options
def status(spec_path, scale, runs_root):
    """Each run's state (pending, running, requeued, done, failed, ...) from run folders and squeue.

    \b
    Example:
      ablate status ablations/schedule.toml --scale paper
    """
    from ablations.store.layout import run_folder
    from ablations.store.reads import Reads
    from slurm.dispatch import status_table
    spec = load(spec_path, scale)
    folder_option(runs_root, "--runs-root")
    reads = Reads()  # each file of a run folder read once
    note_legacy(runs_root, reads, [run_folder(runs_root, r.run_id) for r in spec.runs])
    print_table(status_table(spec, runs_root, reads), last=("log",))


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@spec_options
def cancel(spec_path, scale, runs_root):
    """scancel every job of SPEC that SLURM still knows.

    \b
    Example:
      ablate cancel ablations/schedule.toml --scale paper
    """
    from slurm.dispatch import cancel as do_cancel
    ids = do_cancel(load(spec_path, scale), runs_root)
    click.echo(f"cancelled {len(ids)} jobs" + (f": {' '.join(ids)}" if ids else ""))
