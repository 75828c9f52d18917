"""Records: what lasts of a finished run once its machine is gone. No torch.

A record is a run folder without its checkpoints: config.json, status.json, rows.jsonl and the sample grids
(samples-*.png, which `ablate collect` copies), in `<records>/<run_id>/`, the layout of a runs root
(ablations/store/layout.py). A few hundred KB a run, against tens of MB of checkpoints, so a grid's
records go into the repository (results/runs/) as its runs finish, and a fresh machine or another cluster
goes on from them: a run whose record holds every row a spec asks for is done for that spec and is
not trained again (ablations/running/ledger.py: `source`).

One training per record. A run is trained again when its record lacks rows a spec asks for: training on
another machine does not give the same weights to the bit, so the new training's rows are never mixed
with the record's. The run is trained from its seed in the runs root, with no row of the record, and once
done its record replaces the old one whole (`write`). status.json's `training` token names the training
a folder holds; a record of the same training is only ever replaced by a folder holding all its rows.
"""
import os
import shutil
import tempfile
from pathlib import Path

from ablations.store.io import fsync_dir, raise_full
from ablations.store.layout import CONFIG, DONE, ROWS, STATUS, read_status, run_folder
from ablations.store.schema import identity, read_rows

FILES = (CONFIG, STATUS, ROWS)
GRIDS = "samples-*.png"


def files(folder) -> list[Path]:
    """The files of a run folder that its record holds, in a fixed order."""
    folder = Path(folder)
    return [folder / f for f in FILES if (folder / f).exists()] + sorted(folder.glob(GRIDS))


def training(folder) -> str | None:
    """The token of the training a run folder or record holds (status.json's `training`; None before tokens)."""
    return read_status(folder).get("training")


def write(folder, records) -> str:
    """Write the record of the finished run in `folder` into `records`, atomically (a temp folder beside it,
    renamed into place): readers see the old record or the new one, never half. Returns what was done, in
    words. A record of another training is replaced whole; one of the same training is replaced only when
    the folder holds every row it holds (else it is kept: the folder is an older copy)."""
    folder = Path(folder)
    status = read_status(folder)
    if status["state"] != DONE:
        raise ValueError(f"{folder}: not finished ({status['state']}); only a finished run has a record")
    target = run_folder(records, folder.name)
    said = f"record {target}: written"
    if target.exists():
        old = training(target)
        if old == status.get("training"):
            have = {identity(r) for r in read_rows(folder / ROWS)[0]}
            lacking = [r for r in read_rows(target / ROWS)[0] if identity(r) not in have]
            if lacking:
                return (f"record {target}: kept; it holds {len(lacking)} row(s) of the same training that {folder} "
                        "lacks (the folder is an older copy)")
            if all(_same(f, target / f.name) for f in files(folder)) and len(files(target)) == len(files(folder)):
                return f"record {target}: up to date"
            said = f"record {target}: updated"
        else:
            n = len(read_rows(target / ROWS)[0])
            said = (f"record {target}: replaced whole; it held training {old or 'unnamed'} ({n} rows), the run "
                    f"was trained again as {status.get('training') or 'unnamed'}, whose rows are never mixed with "
                    "another training's")
    Path(records).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=records))
    try:
        for f in files(folder):
            try:
                shutil.copyfile(f, tmp / f.name)
            except OSError as e:  # a full disk is the one DiskFull line
                raise_full(target / f.name, e)
                raise
            os.chmod(tmp / f.name, 0o644)
        os.chmod(tmp, 0o755)
        if target.exists():
            gone = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=records))
            target.rename(gone / folder.name)
            tmp.rename(target)
            shutil.rmtree(gone)
        else:
            tmp.rename(target)
        fsync_dir(records)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return said


def _same(a: Path, b: Path) -> bool:
    return b.exists() and a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()

