"""What every `ablate` command shares: the options declared once (the spec's scale, the run store, the results
folders, --set), loading a spec with its error as one line, and the run store's checks before any work.
Imports no torch: the modules that train or load specs are imported inside the functions that need them.
"""
import os
from pathlib import Path

import click

RUNS_ROOT = os.environ.get("ABLATE_RUNS_ROOT", "runs")
RESULTS_ROOT = os.environ.get("ABLATE_RESULTS_ROOT", "results")

# The options every command shares, declared once: the spec's scale, the run store and the results folders.
SCALE = click.option("--scale", help="Which scale of the spec (smoke, cpu, paper, ...). Default: the spec's.")
RUNS = click.option("--runs-root", default=RUNS_ROOT, show_default=True, type=click.Path(file_okay=False),
                    help="The run store: each run's folder is RUNS_ROOT/<run_id>/, shared by every spec that "
                         "names the run. Env: ABLATE_RUNS_ROOT.")
RECORDS = click.option("--records", default=os.environ.get("ABLATE_RECORDS"), type=click.Path(file_okay=False),
                       help="Finished runs' records (no checkpoints; e.g. results/runs): a run whose record holds "
                            "every row the spec asks for is done, and `run` writes each run it finishes there. "
                            "Env: ABLATE_RECORDS.")
RESULTS = click.option("--results-root", default=RESULTS_ROOT, show_default=True, type=click.Path(file_okay=False),
                       help="Where results folders go: RESULTS_ROOT/<spec>[-<scale>]/. Env: ABLATE_RESULTS_ROOT.")


def spec_options(f):
    """--scale and --runs-root: every command that reads a spec's runs."""
    return SCALE(RUNS(f))


def roots(f):
    """--runs-root and --results-root: every results command (collect, plot, report, results, export) takes
    both; plot, report and results read the results folders alone, never the runs."""
    return RUNS(RESULTS(f))


def load(spec_path, scale, overrides=()):
    from ablations.grid.spec import SpecError, load_spec
    try:
        return load_spec(spec_path, scale, overrides=overrides)
    except SpecError as e:
        raise click.ClickException(str(e)) from None


def set_option(f):
    """--set KEY=VALUE (repeatable): a spec key changed for this command (ablations/grid/spec.py)."""
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a spec key, e.g. base.lr=1e-3, eval.fid_samples=2000, "
                             "scale.cpu.base.batch=64 (repeatable; the value is TOML, a bare word a string).")(f)


def folder_option(path, option):
    """A folder option (--runs-root, --results-root) that is, or can become, a folder: neither it nor
    any folder above it may be a file."""
    for q in (path, *(str(p) for p in Path(path).parents)):
        if os.path.lexists(q):
            if not os.path.isdir(q):
                kind = "a file" if os.path.isfile(q) else "a broken link or a symlink loop"
                where = f"is {kind}" if q == path else f"is under {q}, which is {kind}"
                raise click.ClickException(f"{option} {path} {where}, not a folder; give a folder")
            return


def invalid_folders(spec, runs, runs_root, reads=None) -> dict:
    """{run_id: why} for the runs whose folders do not hold the run their id names (ledger.check_folder),
    each reported on one line."""
    from ablations.running import ledger
    found = {}
    for r in runs:
        why = ledger.check_folder(r, runs_root, spec.overrides, reads)
        if why:
            found[r.run_id] = why
            click.echo(f"error: {why}", err=True)
    return found


def migrate_store(runs_root, reads=None, folders=()) -> bool:
    """Migrate the run store's legacy folders (ablations/store/migrate.py): `run` and `submit` only, which then
    claim what they train; never a folder a live process holds. Only when the cheap check finds a legacy item
    (`migrate.legacy`: the names and config.json files under the runs root, and the rows of `folders`, the
    command's own runs, all read through the command's `reads`); then every pass runs over the whole store,
    and `reads` forgets what it read. Whether it migrated."""
    from ablations.store import migrate
    if not os.path.isdir(runs_root) or not migrate.legacy(runs_root, reads, folders):
        return False
    migrate.migrate(runs_root, echo=click.echo)
    migrate.share_across_steps(runs_root, echo=click.echo)
    migrate.restore_whole_rows(runs_root, echo=click.echo)
    migrate.set_aside_stale_nll(runs_root, echo=click.echo)
    if reads is not None:
        reads.clear()
    return True


def note_legacy(runs_root, reads=None, folders=()):
    """The commands that read (list, collect, status) change nothing: they say what `ablate run` would migrate
    (`migrate.legacy`, through the command's `reads`, which then reads each file once)."""
    from ablations.store.migrate import legacy
    found = legacy(runs_root, reads, folders)
    for line in found[:5]:
        click.echo(f"note: {line}", err=True)
    if found:
        click.echo(f"note: {len(found)} legacy item(s) under {runs_root}, not read as current runs; the next "
                   "`ablate run` migrates them", err=True)


def print_table(rows: list[dict], last=()):
    """Aligned columns; `last` columns go at the end (long paths)."""
    if not rows:
        return
    cols = [c for c in rows[0] if c not in last] + [c for c in last if c in rows[0]]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    for r in [dict(zip(cols, cols)), *rows]:
        click.echo("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip())


def warn_time_blind(spec):
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


def echo_overrides(spec):
    if spec.overrides:
        click.echo(f"overrides: {' '.join(spec.overrides)}; eval: fid_samples {spec.eval.fid_samples}, "
                   f"{len(spec.eval.settings)} sampler setting(s)")
