"""Move a runs root from the first layout (`<root>/<spec>/<run_id>/`) to the run store
(`<root>/<run_id>/`), without retraining. No torch.

Per old run folder: the config's renamed fields (base, ema, steps) get their new names, which gives
the new run id; the folder is renamed to it (or, when another spec's folder already holds that
config, its rows are merged in and the rest is kept under `_superseded/`; a runs root migrated before
keeps them in `_migrated/`, which, as every folder starting with `_`, is never taken for a spec's
folder). Training rows are rewritten in the current row schema. Eval rows are set aside in `migrated/metrics.jsonl`: they were sampled
with per-batch seeds, so they are not paired with new rows, and the run shows `needs-eval` until it
is evaluated again (sampling and FID only; the checkpoint is reused).

NLL rows written before the bound clipped x0 (`core.likelihood.nll_bpd`; they have no `clip_x0`), and
stratified ones written before the strata were geometric (`core.likelihood.stratify`; they have no
`spacing`), are set aside the same way, in `migrated/rows.jsonl`: the run shows `needs-eval` until its
NLL is computed again.

Whole rows that an older suite set aside in rows.partial.jsonl, taking a newer metric for a torn line,
go back to rows.jsonl (`restore_whole_rows`).
"""
import heapq
import json
import os
import re
import shutil
from pathlib import Path

from ablations.run.config import TRAIN_FIELDS, TrainConfig, total_steps
from ablations.run.shapes import SIZES
from ablations.store import claim
from ablations.store.io import append_jsonl, atomic_write, read_json, read_jsonl, write_json, write_text
from ablations.store.layout import CONFIG, PARTIAL, ROWS, RUN_ID, last_step, run_folder, slurm_folder, superseded
from ablations.store.reads import Reads
from ablations.store.schema import WHOLE, identity, read_lines, row

RENAMED = {"base": "model_channels", "ema": "ema_decay", "steps": "train_steps"}
TRAIN_METRICS = {"train_loss", "train_img_per_s", "train_wall_s"}


def old_run_folders(root) -> list[Path]:
    root = Path(root)
    return sorted(p.parent for p in root.glob("*/*/metrics.jsonl")
                  if not p.parent.parent.name.startswith(("_", ".")) and RUN_ID.fullmatch(p.parent.name)
                  and (p.parent / CONFIG).exists())


def migrate(root, echo=print) -> int:
    """Migrate every old-layout run under `root`; returns how many were moved."""
    root, moved = Path(root), 0
    for old in old_run_folders(root):
        spec_dir = old.parent
        cfg = read_json(old / CONFIG, {})
        renamed = {RENAMED.get(k, k): v for k, v in cfg.get("train", {}).items()}
        train = {k: v for k, v in renamed.items() if k in TRAIN_FIELDS}  # as JSON: lists stay lists
        new_id = TrainConfig.from_record({"train": train}).run_id()
        target = run_folder(root, new_id)
        rows, _ = read_jsonl(old / "metrics.jsonl")
        kept = [_train_row(new_id, r) for r in rows if r.get("metric") in TRAIN_METRICS
                or (r.get("metric") == "peak_mem_mb" and r.get("protocol") == "train")]
        if target.exists():
            aside = superseded(root) / spec_dir.name / old.name
            echo(f"migrate: {old} is the same config as {target}; keeping {target}, the old folder goes to {aside}")
            shutil.move(str(old), str(aside))
        else:
            old.rename(target)
            aside = target / "migrated"
            aside.mkdir()
            (target / "metrics.jsonl").rename(aside / "metrics.jsonl")
            for png in target.glob("samples-*.png"):
                png.rename(aside / png.name)
            write_json(target / CONFIG, {"run_id": new_id, "train": train})
            if kept:
                append_jsonl(target / ROWS, kept)
            echo(f"migrate: {old} -> {target}")
        moved += 1
        _move_dispatch(root, spec_dir)
    return moved


def _train_row(run_id, r) -> dict:
    cols = {k: r.get(k) for k in ("device", "torch", "commit", "host", "timestamp")}
    return row(run_id, r["metric"], r["value"], phase="train", train_step=r.get("step"), n=r.get("n"), **cols)


def _move_dispatch(root, spec_dir):
    """submissions.jsonl and _slurm/ of an old spec folder go to <root>/_slurm/<spec>/."""
    dest = slurm_folder(root, spec_dir.name)
    for name in ("submissions.jsonl", "_slurm"):
        src = spec_dir / name
        if src.exists():
            dest.mkdir(parents=True, exist_ok=True)
            if name == "_slurm":
                for job in src.iterdir():
                    shutil.move(str(job), str(dest / job.name))
                src.rmdir()
            else:
                src.rename(dest / name)
    if spec_dir.exists() and not any(spec_dir.iterdir()):
        spec_dir.rmdir()


def legacy(root, reads: Reads | None = None, folders=()) -> list[str]:
    """What the next `ablate run` would migrate under `root`, one line each: run folders of the first layout,
    folders named by their legacy id, and rows set aside in rows.partial.jsonl, found from the names and the
    config.json files alone; and, of `folders` only (the run folders the command reads anyway), the stale NLL
    rows (`stale_nll`) in their rows.jsonl. Every file through `reads`, so that the command, which goes on to
    read these folders, reads each file once. The commands that only read (list, collect, status) say it
    instead of migrating; `ablate run` and `submit` migrate only when it finds something
    (ablations/commands/common.py: `migrate_store`), so a store without legacy items costs them no pass over
    its rows."""
    root = Path(root)
    if not root.is_dir():
        return []
    reads = reads or Reads()
    found = [f"{p}: the first layout (<root>/<spec>/<run_id>/)" for p in old_run_folders(root)]
    for folder in sorted(p for p in root.iterdir() if RUN_ID.fullmatch(p.name) and p.is_dir()):
        if (folder / PARTIAL).exists():
            found.append(f"{folder / PARTIAL}: rows set aside that may be whole")
        try:
            cfg = reads.of(folder).config
        except (TypeError, KeyError, ValueError, AttributeError):
            continue
        if folder.name != cfg.run_id() and folder.name == cfg.legacy_run_id():
            found.append(f"{folder}: named by its legacy id (run {cfg.run_id()})")
    for folder in (f for f in folders if os.path.isdir(f)):  # a file where a folder should be: `ledger.check_folder`
        seen = reads.of(folder)
        T = (seen.record or {}).get("train", {}).get("T")
        why = {stale_nll(obj, T) for _, _, obj in seen.lines if isinstance(obj, dict) and obj.get("strata") is not None}
        if why - {None}:
            found.append(f"{Path(folder) / ROWS}: NLL rows {' and '.join(sorted(why - {None}))}")
    return found


def stale_nll(r: dict, T: int):
    """Why an NLL pass's row (it has `strata`) is stale, or None when it is current."""
    if r.get("clip_x0") is None:
        return "from before the bound clipped x0"
    if r.get("spacing") is None and T is not None and r["strata"] < T:
        return "from before the strata were geometric"
    return None


def set_aside_stale_nll(root, echo=print) -> int:
    """Move the stale NLL rows (`stale_nll`) of every run under `root` that no live process holds to
    <run>/migrated/rows.jsonl; returns how many runs had some. Every other line of rows.jsonl is
    kept byte for byte."""
    count = 0
    for path in sorted(Path(root).glob(f"*/{ROWS}")):
        folder = path.parent
        if not RUN_ID.fullmatch(folder.name) or ((h := claim.read(folder)) and claim.alive(h)):
            continue
        T = (read_json(folder / CONFIG) or {}).get("train", {}).get("T")
        keep, aside, why = [], [], set()
        for line in path.read_text(errors="replace").splitlines(keepends=True):
            try:
                r = json.loads(line)
            except ValueError:
                r = None
            reason = stale_nll(r, T) if isinstance(r, dict) and r.get("strata") is not None else None
            if reason:
                aside.append(r)
                why.add(reason)
            else:
                keep.append(line)
        if aside:
            (folder / "migrated").mkdir(exist_ok=True)
            append_jsonl(folder / "migrated" / ROWS, aside)
            write_text(path, "".join(keep))
            echo(f"migrate: {folder.name}: {len(aside)} NLL rows {' and '.join(sorted(why))} -> "
                 f"migrated/{ROWS}; the NLL is computed again on the next run")
            count += 1
    return count


SAMPLES = re.compile(r"(samples-.+?)(-seed\d+\.npz|\.png)")
SOLVER_REF = re.compile(r"(solver-ref-ddim\d+(?:-noclip)?-seed\d+)(\.npz)")


def share_across_steps(root, echo=print) -> int:
    """Rename every run folder named by its config's legacy id (train_steps hashed:
    `TrainConfig.legacy_run_id`) to its run id, which leaves train_steps out; returns how many moved.
    Only `ablate run` and `submit` call it, never a command that reads (`legacy`).

    In the folder first (so a kill midway is redone by the next call): rows.jsonl's run_id becomes the
    new id, and eval rows without a train_step get the step of the run's last checkpoint (they scored
    its final weights); config.json's run_id too; kept samples, sample grids and solver references get
    that step in their names. When the new id's folder exists already (the same config trained to
    another train_steps), it stays as it is and the legacy folder goes to `_superseded/steps/`. Nothing moves
    while a live process holds either folder."""
    root, moved = Path(root), 0
    for folder in sorted(p for p in root.iterdir() if RUN_ID.fullmatch(p.name) and p.is_dir()):
        record = read_json(folder / CONFIG)
        try:
            cfg = TrainConfig.from_record(record)
        except (TypeError, KeyError, ValueError, AttributeError):
            continue  # not a config: `ablate list` reports the folder
        new = cfg.run_id()
        if folder.name == new or folder.name != cfg.legacy_run_id():
            continue
        target = run_folder(root, new)
        held = [(f, h) for f in (folder, target) if (h := claim.read(f)) and claim.alive(h)]
        if held:
            echo(f"migrate: {held[0][0]} is held by {claim.describe(held[0][1])}; {folder.name} moves to {new} "
                 "on a later `ablate run`")
            continue
        if target.exists():  # the current suite's folder of the run stays where it is, whatever it holds
            aside = superseded(root) / "steps" / folder.name
            aside.parent.mkdir(parents=True, exist_ok=True)
            folder.rename(aside)
            echo(f"migrate: {folder.name} is run {new} under its legacy id, and {target} exists: {target} is kept "
                 f"as it is, the legacy folder goes to {aside}")
            moved += 1
            continue
        step = last_step(folder) or total_steps(cfg, SIZES[cfg.dataset]["train"])
        _rename_inside(folder, new, step)
        folder.rename(target)
        echo(f"migrate: {folder.name} -> {new} (run ids leave train_steps out; its eval rows scored step {step})")
        moved += 1
    return moved


def _rename_inside(folder, new: str, step: int):
    lines = []
    path = folder / ROWS
    for line in (path.read_text(errors="replace").splitlines(keepends=True) if path.exists() else []):
        try:
            r = json.loads(line)
        except ValueError:
            r = None
        if not isinstance(r, dict):
            lines.append(line)
            continue
        r["run_id"] = new
        if r.get("phase") == "eval" and r.get("train_step") is None:
            r["train_step"] = step
        lines.append(json.dumps(r) + "\n")
    if path.exists():
        write_text(path, "".join(lines))
    record = read_json(folder / CONFIG)
    write_json(folder / CONFIG, {**record, "run_id": new})
    for p in folder.iterdir():
        m = SAMPLES.fullmatch(p.name) or SOLVER_REF.fullmatch(p.name)
        if m and not re.search(r"-step\d+$", m.group(1)):
            p.rename(folder / f"{m.group(1)}-step{step}{m.group(2)}")


def restore_whole_rows(root, echo=print) -> int:
    """Move the whole rows in rows.partial.jsonl back into rows.jsonl, for every run under `root` that no live
    process holds; returns how many runs had some. A suite older than a row's metric took the row for a
    line that is not one (the first `schema.parse` did), and its append for a torn one, so it set them
    aside on resume. A whole row is one of an append all of whose lines are in rows.partial.jsonl
    (`schema.parse`); it goes back unless rows.jsonl holds a row of its identity. The restored lines are
    merged into rows.jsonl by timestamp, every line byte for byte, so the file reads as if they had
    never left; rows.partial.jsonl keeps the rest. rows.jsonl is written first: a kill between the two
    writes leaves lines in both, and the next call drops those from rows.partial.jsonl."""
    count = 0
    for path in sorted(Path(root).glob(f"*/{PARTIAL}")):
        folder = path.parent
        if not RUN_ID.fullmatch(folder.name) or ((h := claim.read(folder)) and claim.alive(h)):
            continue
        current, aside = read_lines(folder / ROWS), read_lines(path)
        have = {identity(obj) for _, kind, obj in current if kind in WHOLE}
        there = {line for line, _, _ in current}
        back, rest = [], []
        for line, kind, obj in aside:
            if line in there:
                continue  # restored by a call killed before it rewrote rows.partial.jsonl
            if kind in WHOLE and identity(obj) not in have:
                have.add(identity(obj))
                back.append((line, kind, obj))
            else:
                rest.append(line)
        if back:
            merged = [line for _, line in heapq.merge(_stamped(current), _stamped(back), key=lambda t: t[0])]
            _write_lines(folder / ROWS, merged)
            echo(f"migrate: {folder.name}: {len(back)} whole rows an older suite had set aside in {PARTIAL} "
                 f"-> {ROWS}")
            count += 1
        if not rest:
            path.unlink()
        elif len(rest) < len(aside):
            _write_lines(path, rest)
    return count


def _write_lines(path, lines):
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(b"".join(line + b"\n" for line in lines)))


def _stamped(lines):
    """(timestamp, line) per parsed line, a line without one taking the one before it: the order `heapq.merge`
    keeps."""
    stamp = float("-inf")
    for line, _, obj in lines:
        t = obj.get("timestamp") if isinstance(obj, dict) else None
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            stamp = float(t)
        yield stamp, line
