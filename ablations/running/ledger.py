"""What a run's folder holds and what a spec needs from it: the rows a spec wants at each checkpoint, the
ones still missing, whether the folder holds the run its id names, and the run's state (`ablate list`).
Read-only but for one repair: a config.json a killed start never wrote (`check_folder`). A command passes its
`Reads` (ablations/store/reads.py) to every call, so that each file of a run folder is read once a command;
without one, each call reads what it needs once."""
import os
import time
from dataclasses import asdict
from pathlib import Path

from ablations.grid.spec import Run, Spec
from ablations.run.config import TrainConfig, eval_steps, scored_at, total_steps
from ablations.run.shapes import SIZES
from ablations.store import claim
from ablations.store.io import write_json
from ablations.store.layout import (
    ASKED,
    CLAIM,
    CONFIG,
    DONE,
    INTERRUPTED,
    INVALID,
    LOG,
    NEEDS_EVAL,
    ROWS,
    RUNNING,
    STATUS,
    UNSCORABLE,
    ask,
    checkpoint_name,
    orphans,
    pid_alive,
    run_folder,
)
from ablations.store.reads import Reads, look
from ablations.store.schema import DENOISING, key, read_rows, row
from core.likelihood import STRATA_SPACING

NLL_CLIP_X0 = True  # the bound of the model the samplers draw from (core.likelihood.nll_bpd)


def nll_spacing(strata: int, T: int):
    """The `spacing` column of NLL rows: the strata's layout when stratified, None when exact."""
    return STRATA_SPACING if 0 < strata < T else None


def reference(dataset: str, split: str, n: int) -> str:
    """The `reference` column: the real images a number is computed against."""
    return f"{dataset}:{split}:{n or SIZES[dataset][split]}"


def wanted(spec: Spec, run: Run) -> dict:
    """{row key: (train_step, setting or "nll", "denoise" or "cost")} of the rows this spec needs from this run,
    at every checkpoint it scores (`config.eval_steps`; the settings of `config.scored_at` there). Per sampler
    setting and extractor (fid_extractor, then extra_extractors): the FID/KID rows (keyed by `fid`) and
    the precision/recall rows (keyed by `recall`); per deterministic setting, with solver_images > 0,
    the `solver_rms` row; the NLL rows; the DENOISING rows per timestep of denoise_t; and the cost rows. `_groups`
    names the row group each missing sampler key stands for."""
    from ablations.running.evaluation import deterministic
    from ablations.metrics.fidelity import prc_count
    cfg, ev = run.config, spec.eval
    fid_ref = reference(cfg.dataset, ev.fid_reference, ev.fid_reference_n)
    k = prc_count(ev.fid_samples, ev.fid_reference_n or SIZES[cfg.dataset][ev.fid_reference])
    prc_ref = reference(cfg.dataset, ev.fid_reference, k)
    total = run_steps(run)
    out = {}
    for at in eval_steps(ev, total):
        for s in scored_at(ev, total, at):
            cols = dict(phase="eval", **s._asdict(), sample_seed=ev.sample_seed, train_step=at)
            for ext in (ev.fid_extractor, *ev.extra_extractors):
                out[key(row(run.run_id, "fid", 0, **cols, n=ev.fid_samples, extractor=ext, reference=fid_ref))] = (at, s)
                out[key(row(run.run_id, "recall", 0, **cols, n=k, extractor=ext, reference=prc_ref))] = (at, s)
            if ev.solver_images and deterministic(s):
                out[key(row(run.run_id, "solver_rms", 0, **cols, n=ev.solver_images,
                            reference=solver_reference_label(cfg.T)))] = (at, s)
        out[key(row(run.run_id, "nll_bpd", 0, phase="eval", n=ev.nll_images, sample_seed=ev.sample_seed,
                    reference=reference(cfg.dataset, "test", ev.nll_images), strata=ev.nll_strata or cfg.T,
                    clip_x0=NLL_CLIP_X0, spacing=nll_spacing(ev.nll_strata, cfg.T), train_step=at))] = (at, "nll")
        for t in ev.denoise_t:
            for m in DENOISING:
                out[key(row(run.run_id, m, 0, phase="eval", n=ev.nll_images, sample_seed=ev.sample_seed,
                            reference=reference(cfg.dataset, "test", ev.nll_images), clip_x0=ev.clip_x0, t=t,
                            train_step=at))] = (at, "denoise")
        out[key(row(run.run_id, "train_flops", 0, phase="train", train_step=at, n=cfg.batch))] = (at, "cost")
    return out


def run_steps(run: Run) -> int:
    """The training steps the run's spec asks for (train_steps, or epochs of the training set)."""
    return total_steps(run.config, SIZES[run.config.dataset]["train"])


def missing(spec: Spec, run: Run, folder, reads: Reads | None = None) -> list:
    """(train_step, setting or "nll", "denoise" or "cost") of the rows this spec needs and the run does not have
    yet, each once (a torn append's rows do not count: `read_rows`)."""
    have = look(reads, folder).keys
    return list(dict.fromkeys(what for k, what in wanted(spec, run).items() if k not in have))


def have_keys(folder) -> set:
    """The eval keys of the rows the run holds (a torn append's rows do not count)."""
    return {key(r) for r in read_rows(Path(folder) / ROWS)[0]}


def config_id(record: dict) -> str:
    """The run id a config.json's `train` table hashes to (ablations/run/config.py: TrainConfig.run_id)."""
    return TrainConfig.from_record(record).run_id()


def config_record(run: Run, overrides=()) -> dict:
    """A new run folder's config.json: the id, the resolved config (the id hashes only `train`), and the
    --set overrides of the command that made the folder."""
    return {"run_id": run.run_id, "train": asdict(run.config), "overrides": list(overrides)}


def check_folder(run: Run, runs_root, overrides=(), reads: Reads | None = None) -> str | None:
    """Why the run's folder does not hold the run its id names, or None when it does or does not exist
    yet. A missing config.json is written from the spec when the folder holds none of a run's results,
    only its bookkeeping (claim, status, log: a start killed before its first write); otherwise the
    folder is left as it is and reported."""
    folder = run_folder(runs_root, run.run_id)
    if not os.path.lexists(folder):
        return None
    if not folder.is_dir():
        return f"{folder}: not a folder (a file or a broken link where the run's folder should be); move it away"
    path = folder / CONFIG
    if not os.path.lexists(path):
        try:
            others = sorted(p.name for p in folder.iterdir() if p.name not in (CLAIM, STATUS, LOG, ASKED)
                            and p not in orphans(folder))
        except OSError as e:
            return f"{folder}: cannot be read ({e.strerror or e})"
        if others:
            return (f"{folder}: no {CONFIG}, but the folder holds {', '.join(others[:3])}"
                    f"{', ...' if len(others) > 3 else ''}; not touched: restore {CONFIG} or move the folder away")
        write_json(path, config_record(run, overrides))
        if reads is not None:
            reads.forget(folder)
        return None
    seen = look(reads, folder)
    if seen.record is None:
        return f"{path}: unreadable (not a JSON object); restore it or move the folder away"
    try:
        found = seen.config.run_id()
    except (TypeError, KeyError, ValueError, AttributeError) as e:  # no `train` table, unknown fields
        return f"{path}: not a run config ({type(e).__name__}: {e}); restore it or move the folder away"
    if found != run.run_id:
        return (f"{path} hashes to run {found}, not to its folder's id {run.run_id} (edited after the run was "
                "made?); the run is not trained, evaluated or collected: restore the file or move the folder away")
    return None


def unscorable(spec: Spec, run: Run, folder, reads: Reads | None = None, lacking=None) -> str | None:
    """Why this spec cannot get its rows from the run as it stands, or None when it can: it asks for rows
    at checkpoints the run trained past without keeping them (no spec that names the run had asked for
    them, `layout.ask`, before training passed them). A reason of this spec's alone: the run's own
    status is left as it is, and every other spec sees the run as it is. `lacking`: `missing`'s answer, when
    the caller has it."""
    reads = reads or Reads()
    seen = reads.of(folder)
    trained = seen.trained_step
    lacking = missing(spec, run, folder, reads) if lacking is None else lacking
    gone = sorted({at for at, _ in lacking
                   if at <= trained and not (Path(folder) / checkpoint_name(at)).exists()})
    if not gone:
        return None
    if not seen.last_step:
        return (f"{folder} is a record (no checkpoints) that lacks this spec's rows at step(s) "
                f"{', '.join(map(str, gone))}: it is trained again, from its seed, by `ablate run SPEC --records "
                f"{Path(folder).parent}` with a runs root of its own; its new record then replaces this one whole")
    return (f"this spec scores step(s) {', '.join(map(str, gone))} of run {run.run_id}, which another spec's "
            f"training passed (to step {trained}) before any spec asked to keep them; the run is as it was for "
            f"every other spec. Way out: drop {', '.join(map(str, gone))} from eval_at, or train it again in "
            "another runs root (--runs-root)")


def ask_all(spec: Spec, runs, runs_root):
    """Record, in each run's folder, the checkpoints this spec scores (`layout.ask`), before any of them is
    claimed: whichever spec then trains a run keeps them."""
    for run in runs:
        ask(run_folder(runs_root, run.run_id), eval_steps(spec.eval, run_steps(run)), spec.name)


def state(spec: Spec, run: Run, runs_root, reads: Reads | None = None) -> dict:
    """The run's status for this spec, with `state` one of pending, running, interrupted, done, needs-eval,
    failed, unknown (status.json unreadable), invalid (`check_folder`; the reason says why) or, this spec's
    alone, unscorable (`unscorable`). A run another spec holds (or left interrupted) that already holds every
    row this spec asks for is done for this spec; its status.json still says what the run is."""
    reads = reads or Reads()
    folder = run_folder(runs_root, run.run_id)
    bad_folder = check_folder(run, runs_root, spec.overrides, reads)
    if bad_folder:
        return {"state": INVALID, "reason": bad_folder}
    seen = reads.of(folder)
    st = seen.status
    if st["state"] == RUNNING:
        holder = seen.claim
        if not pid_alive(st) and not (holder and claim.alive(holder)):
            st = {**st, "state": INTERRUPTED}
    lacking = missing(spec, run, folder, reads) if st["state"] in (RUNNING, DONE, INTERRUPTED) else []
    if st["state"] in (RUNNING, INTERRUPTED) and seen.trained_step >= run_steps(run) and not lacking:
        # held, or left, by another spec: this one has all its rows. No reason of its own, so that this spec's
        # rows read the same whoever holds the run when they are collected (`list` shows the holder)
        return {**st, "state": DONE, "reason": ""}
    if st["state"] in (DONE, INTERRUPTED) and (why := unscorable(spec, run, folder, reads, lacking)):
        st = {**st, "state": UNSCORABLE, "reason": why}
    elif st["state"] == DONE and seen.trained_step < run_steps(run):  # trained for a shorter spec
        st = {**st, "state": INTERRUPTED, "reason": f"trained {seen.trained_step} of the {run_steps(run)} "
                                                    "steps this spec asks for; re-run to go on"}
    elif st["state"] == DONE and lacking:
        st = {**st, "state": NEEDS_EVAL}
    return st


def source(spec: Spec, run: Run, runs_root, records=None, reads: Reads | None = None):
    """The root a spec reads run `run` from: the runs root, or the records (ablations/store/records.py) when
    the run's record is done for this spec and its runs-root folder is not. Never both: a record and a
    runs-root folder may hold two trainings, whose rows are not mixed."""
    if records is None or not os.path.lexists(run_folder(records, run.run_id)):
        return runs_root
    reads = reads or Reads()
    if state(spec, run, runs_root, reads)["state"] == DONE or state(spec, run, records, reads)["state"] != DONE:
        return runs_root
    return records


def table(spec: Spec, runs_root, records=None, reads: Reads | None = None) -> list[dict]:
    """One row per run of the spec: run_id, its axis values, seed, state, step, reason; a run read from its
    record (`source`) says so in its reason."""
    out, now, reads = [], time.time(), reads or Reads()
    for run in spec.runs:
        root = source(spec, run, runs_root, records, reads)
        st = state(spec, run, root, reads)
        step = st.get("step", "")
        if st["state"] in (RUNNING, INTERRUPTED):  # a killed run's status lags its checkpoints
            step = max(step or 0, reads.of(run_folder(root, run.run_id)).last_step)
        reason = st.get("reason", "") if root == runs_root else f"its record in {records}"
        out.append({"run_id": run.run_id, **run.axes, "seed": run.config.seed, "state": st["state"],
                    "step": step, "held_by": held_by(run_folder(root, run.run_id), st, now, reads),
                    "reason": reason})
    return out


def held_by(folder, st: dict, now: float, reads: Reads | None = None) -> str:
    """Who holds the run's claim and for how long ('' when nobody does), marked stale when its holder is
    known to be gone (`ablate release` removes a claim by hand)."""
    if st["state"] == INVALID:
        return ""
    h = look(reads, folder).claim
    if h is None:
        return ""
    stale = claim.checkable(h) and not claim.alive(h)
    return claim.describe(h, now, folder / CLAIM) + (" (stale)" if stale else "")


def is_complete(spec: Spec, run: Run, runs_root, reads: Reads | None = None) -> bool:
    return state(spec, run, runs_root, reads)["state"] == DONE


def solver_reference_label(T: int) -> str:
    """The `reference` column of solver_rms rows: the reference sampler and its steps."""
    return f"ddim:{T}"
