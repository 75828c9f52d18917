"""One run end to end: config.json -> train (or resume) -> evaluate -> rows in rows.jsonl.

A run is stored once, in `<runs root>/<run_id>/` (ablations/store/layout.py), whichever specs name it. A
spec is a view over run ids plus its eval settings: evaluating a trained run for another spec adds
only that spec's missing rows. The same code serves `ablate run`, SLURM jobs and submitit's debug
executor; both local and SLURM runs hold the run's claim while they train or evaluate it.
"""
import contextlib
import functools
import os
import platform
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch

from ablations.store import claim
from ablations.running import tracking
from ablations.running import data as datasets
from ablations.running.evaluation import denoising, generate, nll, peak_memory_mb, sampling_forward
from ablations.running.hardware import bf16_refusal, cpu_info
from ablations.grid.config import NOT_SETTINGS, TrainConfig, eval_steps, scored_at
from ablations.store.io import DiskFull, append_jsonl, atomic_write, read_json, write_json
from ablations.store.layout import (
    CLAIM,
    CONFIG,
    DONE,
    FAILED,
    INTERRUPTED,
    INVALID,
    LOG,
    NEEDS_EVAL,
    PARTIAL,
    ROWS,
    RUNNING,
    STATUS,
    compile_cache,
    fid_cache,
    last_step,
    orphans,
    pid_alive,
    read_status,
    run_folder,
    sample_grid_name,
    write_status,
)
from ablations.running.parallel import any_true, from_main, is_main, rank, world
from ablations.store.schema import CURVES, DENOISING, EVAL_KEY, WHOLE, key, label, parse, problem, read_rows, row
from ablations.grid.spec import Run, Spec
from ablations.running.training import NonFiniteLoss, build_model, memory_format, run_schedule, total_steps, train
from core.likelihood import STRATA_SPACING
from core.samplers import nfe

NLL_CLIP_X0 = True  # the bound of the model the samplers draw from (core.likelihood.nll_bpd)


def nll_spacing(strata: int, T: int):
    """The `spacing` column of NLL rows: the strata's layout when stratified, None when exact."""
    return STRATA_SPACING if 0 < strata < T else None


def reference(dataset: str, split: str, n: int) -> str:
    """The `reference` column: the real images a number is computed against."""
    return f"{dataset}:{split}:{n or datasets.SIZES[dataset][split]}"


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
    k = prc_count(ev.fid_samples, ev.fid_reference_n or datasets.SIZES[cfg.dataset][ev.fid_reference])
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
    return total_steps(run.config, datasets.SIZES[run.config.dataset]["train"])


def missing(spec: Spec, run: Run, folder) -> list:
    """(train_step, setting or "nll", "denoise" or "cost") of the rows this spec needs and the run does not have
    yet, each once (a torn append's rows do not count: `read_rows`)."""
    have = _have(folder)
    return list(dict.fromkeys(what for k, what in wanted(spec, run).items() if k not in have))


def _have(folder) -> set:
    """The eval keys of the rows the run holds (a torn append's rows do not count)."""
    return {key(r) for r in read_rows(Path(folder) / ROWS)[0]}


def config_id(record: dict) -> str:
    """The run id a config.json's `train` table hashes to (ablations/grid/config.py: TrainConfig.run_id)."""
    train = record["train"]
    return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in train.items()}).run_id()


def config_record(run: Run, overrides=()) -> dict:
    """A new run folder's config.json: the id, the resolved config (the id hashes only `train`), and the
    --set overrides of the command that made the folder."""
    return {"run_id": run.run_id, "train": asdict(run.config), "overrides": list(overrides)}


def check_folder(run: Run, runs_root, overrides=()) -> str | None:
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
            others = sorted(p.name for p in folder.iterdir() if p.name not in (CLAIM, STATUS, LOG)
                            and p not in orphans(folder))
        except OSError as e:
            return f"{folder}: cannot be read ({e.strerror or e})"
        if others:
            return (f"{folder}: no {CONFIG}, but the folder holds {', '.join(others[:3])}"
                    f"{', ...' if len(others) > 3 else ''}; not touched: restore {CONFIG} or move the folder away")
        write_json(path, config_record(run, overrides))
        return None
    record = read_json(path)
    if record is None:
        return f"{path}: unreadable (not a JSON object); restore it or move the folder away"
    try:
        found = config_id(record)
    except (TypeError, KeyError, ValueError, AttributeError) as e:  # no `train` table, unknown fields
        return f"{path}: not a run config ({type(e).__name__}: {e}); restore it or move the folder away"
    if found != run.run_id:
        return (f"{path} hashes to run {found}, not to its folder's id {run.run_id} (edited after the run was "
                "made?); the run is not trained, evaluated or collected: restore the file or move the folder away")
    return None


def state(spec: Spec, run: Run, runs_root) -> dict:
    """The run's status, with `state` one of pending, running, interrupted, done, needs-eval, failed,
    unknown (status.json unreadable) or invalid (`check_folder`; the reason says why)."""
    folder = run_folder(runs_root, run.run_id)
    bad_folder = check_folder(run, runs_root, spec.overrides)
    if bad_folder:
        return {"state": INVALID, "reason": bad_folder}
    st = read_status(folder)
    if st["state"] == RUNNING:
        holder = claim.read(folder)
        if not pid_alive(st) and not (holder and claim.alive(holder)):
            st = {**st, "state": INTERRUPTED}
    elif st["state"] == DONE and last_step(folder) < run_steps(run):  # trained for a shorter spec
        st = {**st, "state": INTERRUPTED, "reason": f"trained {last_step(folder)} of the {run_steps(run)} steps "
                                                    "this spec asks for; re-run to go on"}
    elif st["state"] == DONE and missing(spec, run, folder):
        st = {**st, "state": NEEDS_EVAL}
    return st


def table(spec: Spec, runs_root) -> list[dict]:
    """One row per run of the spec: run_id, its axis values, seed, state, step, reason."""
    out, now = [], time.time()
    for run in spec.runs:
        st = state(spec, run, runs_root)
        step = st.get("step", "")
        if st["state"] in (RUNNING, INTERRUPTED):  # a killed run's status lags its checkpoints
            step = max(step or 0, last_step(run_folder(runs_root, run.run_id)))
        out.append({"run_id": run.run_id, **run.axes, "seed": run.config.seed, "state": st["state"],
                    "step": step, "held_by": held_by(run_folder(runs_root, run.run_id), st, now),
                    "reason": st.get("reason", "")})
    return out


def held_by(folder, st: dict, now: float) -> str:
    """Who holds the run's claim and for how long ('' when nobody does), marked stale when its holder is
    known to be gone (`ablate release` removes a claim by hand)."""
    if st["state"] == INVALID:
        return ""
    h = claim.read(folder)
    if h is None:
        return ""
    stale = claim.checkable(h) and not claim.alive(h)
    return claim.describe(h, now, folder / CLAIM) + (" (stale)" if stale else "")


def is_complete(spec: Spec, run: Run, runs_root) -> bool:
    return state(spec, run, runs_root)["state"] == DONE


@functools.lru_cache(maxsize=None)
def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@functools.lru_cache(maxsize=4)
def _images(name, split, root, download):
    return datasets.load(name, split, root, download)[0]


@functools.lru_cache(maxsize=None)
def machine(device) -> str:
    """What the numbers ran on: the GPU's name, or the CPU model and the threads torch uses."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    model = cpu_info()["cpu_model"] or platform.processor() or "unknown CPU"
    return f"{model}, {torch.get_num_threads()} threads"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_all(spec: Spec, runs, runs_root, *, poll_s: float = 2.0, echo=print, **kw) -> dict:
    """Run every incomplete run under its claim. A run claimed by another live process (a second
    `ablate run`, a SLURM job) is skipped and revisited until it is complete or its claim is free, so
    overlapping grids train each run once; a run that another process failed meanwhile is not retried.
    Returns {run_id: final state}."""
    todo, states, waiting, started = list(runs), {}, False, time.time()
    should_stop = kw.get("should_stop") or (lambda: False)
    while todo and not should_stop():
        progressed = False
        for run in list(todo):
            if should_stop():
                break
            folder = run_folder(runs_root, run.run_id)
            st = state(spec, run, runs_root)
            if st["state"] in (DONE, INVALID) or (st["state"] == FAILED and st.get("updated", 0) >= started):
                states[run.run_id] = st["state"]  # done, invalid, or failed by another process since we started
                todo.remove(run)
                continue
            try:
                ok, holder = claim.acquire(folder)
            except claim.ClaimError as e:  # a claim.json that cannot be removed: this run waits for a hand
                echo(str(e))
                states[run.run_id] = INVALID
                todo.remove(run)
                continue
            if not ok:
                continue
            try:
                states[run.run_id] = run_one(spec, run, runs_root, **kw)
            finally:
                claim.release(folder)
            todo.remove(run)
            progressed = True
        if todo and not progressed:
            if not waiting:
                echo(f"waiting for {len(todo)} run(s) held by another process: "
                     + ", ".join(r.run_id for r in todo))
            waiting = True
            time.sleep(poll_s)
    return states


class Interrupted(Exception):
    pass


def run_one(spec: Spec, run: Run, runs_root, *, data_root=None, download=False, device=None, progress=True,
            stop_at=None, should_stop=None) -> str:
    """Train and evaluate one run unless it is complete. Returns its final state. Failures (a
    non-finite loss, an exception) are recorded in status.json and returned, never raised.

    `should_stop()` (Ctrl-C, SIGTERM, SLURM's checkpoint signal) is polled at every training step and
    between sampler settings: training then saves a checkpoint, and the run is marked `interrupted`
    with the step reached. A KeyboardInterrupt (a second Ctrl-C) marks it too, then propagates."""
    device = device or default_device()
    if run.config.compile:  # compiled kernels are cached on disk, so a grid's later runs skip most compile time
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache(runs_root).resolve()))
    folder = run_folder(runs_root, run.run_id)
    main = is_main()  # with several tasks, only rank 0 reads the folder's bookkeeping and writes
    outcome = from_main(_open_folder(run, runs_root, folder, spec.overrides) if main else None)  # all follow rank 0
    if outcome is not None:
        return outcome
    if is_complete(spec, run, runs_root):
        return DONE
    refused = bf16_refusal(run.config.bf16, device)  # a SLURM node or worker the CLI's check did not see
    if refused:
        if main:
            write_status(folder, FAILED, reason=refused, step=last_step(folder))
        print(f"run {run.run_id}: {refused}", file=sys.stderr, flush=True)
        return FAILED
    # another task's messages go to its own SLURM log (stderr), so a failure there is read, not guessed
    log = _logger(folder, progress) if main else (lambda msg: print(f"[task {rank()}] {msg}", file=sys.stderr,
                                                                     flush=True))
    status = write_status if main else (lambda *a, **k: None)
    emit = Appender(folder, run.config, device, log) if main else Appender.none()
    try:
        return _train_and_score(spec, run, folder, emit, log, status, data_root=data_root, download=download,
                                device=device, progress=progress, stop_at=stop_at, should_stop=should_stop,
                                runs_root=runs_root)
    except (Interrupted, KeyboardInterrupt) as e:
        step, name = last_step(folder), type(e).__name__
        reason = "interrupted during evaluation" if isinstance(e, Interrupted) else name
        _record(run.run_id, f"interrupted ({name})", lambda: status(folder, INTERRUPTED, step=step, reason=reason),
                lambda: log(f"interrupted ({name}) after step {step}; re-run to resume"))
        if isinstance(e, KeyboardInterrupt):
            raise
        return INTERRUPTED
    except NonFiniteLoss as e:
        why, step = str(e), e.step
        _record(run.run_id, f"failed: {why}", lambda: status(folder, FAILED, reason=why, step=step),
                lambda: log(f"run {run.run_id} failed: {why}"))
    except Exception as e:  # noqa: BLE001 - a failed run is data; the grid goes on
        why, step = f"{type(e).__name__}: {e}", last_step(folder)
        detail = why if isinstance(e, DiskFull) else traceback.format_exc()  # a full disk needs no traceback
        _record(run.run_id, f"failed: {why}", lambda: status(folder, FAILED, reason=why, step=step),
                lambda: log(f"run {run.run_id} failed:\n{detail}"))
    finally:
        emit.track(lambda: emit.events.close())
    return FAILED


class Appender:
    """The run's row appends (task 0 only) and the TensorBoard events made from them (the `tracking`
    extra). Calling it appends rows in one append: every row carries its provenance, append_id and
    append_rows, so a torn append is told apart."""

    def __init__(self, folder, cfg, device, log, enabled=True):
        self.folder, self.log, self.enabled = folder, log, enabled
        if not enabled:
            self.events = None
            return
        self.provenance = {"device": str(device), "torch": torch.__version__, "commit": git_commit(),
                           "host": platform.node(), "cpu": machine(device)}
        resumed = last_step(folder)
        self.events = tracking.events(folder, cfg, purge_step=resumed + 1 if resumed else None)

    @classmethod
    def none(cls):
        """The appender of a task other than 0: it writes nothing."""
        return cls(None, None, None, None, enabled=False)

    def __call__(self, rows):
        if not (self.enabled and rows):
            return
        stamp, append_id = time.time(), uuid.uuid4().hex[:12]
        rows = [{**r, **self.provenance, "timestamp": stamp, "append_id": append_id, "append_rows": len(rows)}
                for r in rows]
        bad = next(((r, why) for r in rows if (why := problem(r))), None)
        if bad:
            raise ValueError(f"not a row ({bad[1]}): {bad[0]}")
        append_jsonl(self.folder / ROWS, rows)
        self.track(lambda: self.events.add(rows))

    def track(self, write):
        """Write TensorBoard events: a failure there is logged and ends tracking, never the run (the rows
        are the record)."""
        try:
            if self.events is not None:
                write()
        except Exception as e:  # noqa: BLE001
            self.events = None
            self.log(f"TensorBoard event files stopped ({type(e).__name__}: {e}); rebuild them from the rows with "
                     "`ablate export SPEC --tensorboard` after removing tb/")


def _train_and_score(spec, run, folder, emit, log, status, *, data_root, download, device, progress, stop_at,
                     should_stop, runs_root) -> str:
    """Score the checkpoints a stopped run reached, train (scoring each checkpoint the spec names as it is
    written), score the last, and record the peak memory: DONE, or INTERRUPTED when training stopped."""
    cfg, main = run.config, is_main()
    status(folder, RUNNING, step=last_step(folder))
    images = _images(cfg.dataset, "train", data_root, download)
    if main:
        _tidy_rows(folder, last_step(folder), log)
    total = total_steps(cfg, len(images))
    if last_step(folder) < total:
        log(f"run {run.run_id} {run.axes} seed {cfg.seed}: training on {device} x{world()} tasks")
    else:
        log(f"run {run.run_id}: trained; scoring {len(missing(spec, run, folder))} missing row group(s)")
    model = {"ema": build_model(cfg).to(device, memory_format=memory_format(cfg)).requires_grad_(False)}
    score = functools.partial(score_checkpoints, spec, run, folder, model, emit, log, device=device,
                              data_root=data_root, download=download, runs_root=runs_root,
                              should_stop=should_stop, progress=progress and main)
    score(upto=last_step(folder))  # the checkpoints a stopped run reached but had not scored
    result = train(cfg, folder, images, device=device, progress=progress, stop_at=stop_at,
                   should_stop=should_stop, log=log, on_log=lambda step, means: emit(
                       [row(run.run_id, m, v, phase="train", train_step=step, n=cfg.batch)
                        for m, v in means.items()]),
                   keep=eval_steps(spec.eval, total), on_checkpoint=lambda step: score(upto=step))
    if result["step"] < result["total"]:
        status(folder, INTERRUPTED, step=result["step"], total=result["total"])
        log(f"interrupted at step {result['step']}/{result['total']} (checkpoint saved); re-run to resume")
        return INTERRUPTED
    score(upto=result["step"])
    have = _have(folder)
    peak = row(run.run_id, "peak_mem_mb", peak_memory_mb(device), phase="train", train_step=result["step"],
               n=cfg.batch)
    if main and result["steps_timed"] and key(peak) not in have:
        emit([peak])
    status(folder, DONE, step=result["step"], total=result["total"])
    log(f"run {run.run_id} done")
    return DONE


def _open_folder(run, runs_root, folder, overrides=()) -> str | None:
    """Check the run's folder, create it with its config.json and remove the temp files a kill left:
    None when the run may go on, else the state it ends in (INVALID, or FAILED on a full disk)."""
    bad_folder = check_folder(run, runs_root, overrides)
    if bad_folder:  # `ablate run` reports it before it starts; a SLURM job ends here
        print(bad_folder, file=sys.stderr, flush=True)
        return INVALID
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / CONFIG).exists():
            write_json(folder / CONFIG, config_record(run, overrides))
        for tmp in orphans(folder):
            tmp.unlink(missing_ok=True)
    except OSError as e:  # a full disk before the run's first file: the run fails, the grid goes on
        print(f"run {run.run_id} failed before it started: {e}", file=sys.stderr, flush=True)
        return FAILED
    return None


def _record(run_id, what, *writes):
    """Record an interruption or a failure, best effort: when writing it fails too (a full disk), say
    both on stderr and return, so the grid goes on to the next run."""
    for write in writes:
        try:
            write()
        except Exception as again:  # noqa: BLE001
            print(f"run {run_id} {what}; recording that failed too: {type(again).__name__}: {again}",
                  file=sys.stderr, flush=True)
            return


def score_checkpoints(spec, run, folder, model, emit, log, *, upto, device, data_root, download, runs_root,
                      should_stop=None, progress=False):
    """Evaluate every checkpoint the spec scores, up to step `upto`, that lacks rows: oldest first, each
    from the EMA weights its checkpoint file holds (so scoring while training goes on and after it ends
    give the same rows). `model` is the U-Net the weights are loaded into, compiled once for every
    checkpoint: {"forward": ...} caches its compiled forward between calls."""
    from ablations.store.checkpoint import load_step
    need = wanted(spec, run)
    for at in eval_steps(spec.eval, run_steps(run)):
        if at > upto:
            break
        have = from_main(_have(folder) if is_main() else None)  # task 0 reads; every task follows
        lacking = {k: what for k, (step, what) in need.items() if step == at and k not in have}
        if not lacking:
            continue
        state = load_step(folder, at, device)
        if state is None:
            raise FileNotFoundError(
                f"run {run.run_id}: the checkpoint of step {at} was not kept (the run trained to "
                f"{last_step(folder)} under a spec whose eval_at did not name {at}), so its rows cannot be made "
                f"without training again: move {folder} away, or drop {at} from eval_at")
        model["ema"].load_state_dict(state["ema"])
        if is_main() and "cost" in lacking.values():
            emit(cost_rows(run, state))
        log(f"  scoring the checkpoint of step {at}")
        evaluate(spec, run, folder, model, emit, log, at=at, have=have, lacking=lacking, device=device,
                 data_root=data_root, download=download, runs_root=runs_root, should_stop=should_stop,
                 progress=progress)


def cost_rows(run, state) -> list:
    """What training cost to a checkpoint, from the checkpoint itself: images, FLOPs, wall seconds and
    images/s (compile time excluded), and the compile seconds when compiled."""
    from ablations.running.budget import per_image
    cfg, at = run.config, state["step"]
    images = at * cfg.batch
    rate = state["steps_timed"] * cfg.batch / (state["wall_s"] - state.get("compile_s", 0.0)) \
        if state["steps_timed"] else float("nan")
    return [row(run.run_id, m, v, phase="train", train_step=at, n=cfg.batch) for m, v in (
        ("train_images", images), ("train_wall_s", state["wall_s"]), ("train_img_per_s", rate),
        *((("compile_s", state.get("compile_s", 0.0)),) if cfg.compile else ()),
        ("train_flops", images * per_image(cfg)[1]))]  # train_flops last: its presence marks the group done


def evaluate(spec, run, folder, model, emit, log, *, at, have, lacking, device, data_root, download, runs_root,
             should_stop=None, progress=False):
    """The rows this spec needs at checkpoint `at` and the run lacks (`lacking`: {row key: setting, "nll",
    "denoise" or "cost"}; `have`: the run's row keys), scored with
    model["ema"] (the checkpoint's EMA weights). Per sampler setting: its images, from the kept
    samples file when it holds enough (no sampling), else generated, kept (with a sample grid and
    throughput rows); then each missing group in one append: per extractor FID/KID, per extractor
    precision/recall, and solver_rms against the run's kept DDIM endpoints (computed once). Then the
    NLL rows, in one append, and the DENOISING rows (x0_rms, nll_term_bpd by timestep), in another."""
    from ablations.running.evaluation import load_images
    from ablations.store.layout import samples_name
    sc = Scoring(run, spec.eval, folder, at, emit, log, device, progress)
    cfg, ev = run.config, spec.eval
    schedule = run_schedule(cfg)
    ema = model["ema"].eval()
    groups = _groups(lacking)  # {setting: [(kind, extractor)]}
    nll_missing = "nll" in lacking.values()
    denoise_missing = [k for k, what in lacking.items() if what == "denoise"]
    kept = {s: load_images(folder / samples_name(*s, sample_seed=ev.sample_seed, train_step=at), ev.fid_samples)
            for s in groups}
    to_sample = [s for s in groups if any_true(kept[s] is None, device)]  # every task agrees
    solver_refs, new_refs = _kept_solver_refs(sc, groups)
    first = []
    if (to_sample or new_refs or nll_missing or denoise_missing) and "forward" not in model:
        model["forward"], compile_s = sampling_forward(ema, cfg, (ev.sample_batch, *datasets.SHAPES[cfg.dataset]),
                                                       device)
        first = [("compile_s", compile_s)] if cfg.compile else []  # with the first rows written
    forward = model.get("forward", ema)
    for c in new_refs:
        solver_refs[c] = _solver_refs(sc, forward, schedule, c)
    for s, kinds in groups.items():
        if should_stop is not None and any_true(should_stop(), device):
            raise Interrupted
        cols = dict(phase="eval", **s._asdict(), nfe=nfe(s.sampler, s.steps), sample_seed=ev.sample_seed,
                    train_step=at)
        images = kept[s]
        if s in to_sample:
            images = _sample(sc, forward, schedule, s, cols, first, have)
            if images is None:  # not task 0
                continue
            first = []
        elif not is_main():
            continue
        else:
            log(f"  {label(*s)}: scoring the {ev.fid_samples} kept images")
        for kind, extractor in kinds:
            emit(_score(kind, extractor, images, solver_refs.get(s.clip_x0), run, cols, ev, log=log, s=s,
                        cache_root=fid_cache(runs_root), data_root=data_root, progress=progress))
    if nll_missing:
        _nll_rows(sc, forward, schedule, first, data_root, download)
        first = []
    if denoise_missing:
        _denoise_rows(sc, forward, schedule, denoise_missing, first, data_root, download)


class Scoring(NamedTuple):
    """One checkpoint's scoring: the run, the spec's eval config, the run's folder, the step, and where
    rows and messages go."""

    run: Run
    ev: object  # EvalConfig
    folder: Path
    at: int
    emit: object
    log: object
    device: object
    progress: bool


def _kept_solver_refs(sc: Scoring, groups) -> tuple[dict, list]:
    """({clip_x0: the kept DDIM-over-all-T endpoints, or None}, the clip_x0 values whose endpoints every
    task must generate) for the settings with solver_rms rows to make."""
    from ablations.running.evaluation import load_images
    refs = {s.clip_x0 for s in groups if ("solver", None) in groups[s]}
    solver_refs = {c: load_images(_solver_ref_path(sc, c), sc.ev.solver_images) for c in refs}
    return solver_refs, [c for c in sorted(refs) if any_true(solver_refs[c] is None, sc.device)]


def _solver_ref_path(sc: Scoring, clip_x0) -> Path:
    from ablations.store.layout import solver_reference_name
    return sc.folder / solver_reference_name(sc.run.config.T, clip_x0, sample_seed=sc.ev.sample_seed,
                                             train_step=sc.at)


def _solver_refs(sc: Scoring, forward, schedule, clip_x0):
    """The reference endpoints of solver_rms (DDIM over all T steps), generated and kept (task 0)."""
    from ablations.running.evaluation import solver_reference, write_images
    cfg, ev = sc.run.config, sc.ev
    ref_setting = solver_reference(cfg.T, clip_x0)
    with _bar(ev.solver_images, f"solver reference {label(*ref_setting)}", sc.progress) as bar:
        images, seconds = generate(forward, schedule, cfg, ref_setting, ev.solver_images,
                                   batch=ev.sample_batch, seed=ev.sample_seed, device=sc.device, progress=bar)
    if is_main():
        atomic_write(_solver_ref_path(sc, clip_x0), functools.partial(write_images, images_uint8=images))
    sc.log(f"  solver reference {label(*ref_setting)}: {ev.solver_images} images in {seconds:.0f} s")
    return images


def _sample(sc: Scoring, forward, schedule, s, cols, first, have):
    """A setting's images, generated by every task; task 0 writes their throughput rows (with the compile
    row `first`), their sample grid, and the samples file, kept last. None on the other tasks."""
    from ablations.running.evaluation import write_images
    from ablations.store.layout import samples_name
    cfg, ev = sc.run.config, sc.ev
    with _bar(ev.fid_samples, f"sampling {label(*s)}", sc.progress) as bar:
        images, seconds = generate(forward, schedule, cfg, s, ev.fid_samples, batch=ev.sample_batch,
                                   seed=ev.sample_seed, device=sc.device, progress=bar)
    if not is_main():
        return None
    sc.emit([r for r in (row(sc.run.run_id, m, v, **cols, n=ev.fid_samples) for m, v in (
        *first, ("sample_img_per_s", ev.fid_samples / seconds),
        ("nfe_per_s", ev.fid_samples * cols["nfe"] / seconds), ("sample_wall_s", seconds),
        ("peak_mem_mb", peak_memory_mb(sc.device)))) if key(r) not in have])
    atomic_write(sc.folder / sample_grid_name(*s, train_step=sc.at),
                 lambda tmp: _save_grid(tmp, images[:ev.grid_images]))
    # kept last: a kill before it samples the setting again (its throughput rows are not repeated)
    atomic_write(sc.folder / samples_name(*s, sample_seed=ev.sample_seed, train_step=sc.at),
                 functools.partial(write_images, images_uint8=images))
    sc.log(f"  {label(*s)}: {ev.fid_samples} images kept, {ev.fid_samples / seconds:.1f} img/s")
    return images


def _nll_rows(sc: Scoring, forward, schedule, first, data_root, download):
    """The NLL rows (Ho et al. 2020, Eq. 5; core.likelihood.nll_bpd) on the first nll_images test images,
    in one append with the compile row `first` when nothing was sampled before."""
    cfg, ev = sc.run.config, sc.ev
    test = _images(cfg.dataset, "test", data_root, download)[:ev.nll_images]
    with _bar(len(test), "NLL", sc.progress) as bar:
        r = nll(forward, schedule, cfg, test, strata=ev.nll_strata, seed=ev.sample_seed, device=sc.device,
                batch=ev.sample_batch, clip_x0=NLL_CLIP_X0, progress=bar)
    cols = dict(phase="eval", n=len(test), sample_seed=ev.sample_seed, strata=r["strata"],
                reference=reference(cfg.dataset, "test", len(test)), clip_x0=NLL_CLIP_X0,
                spacing=nll_spacing(ev.nll_strata, cfg.T), train_step=sc.at)
    sc.emit([row(sc.run.run_id, m, v, **cols) for m, v in (
        *first, ("nll_wall_s", r["seconds"]), ("nll_bpd", r["bpd"]))])
    sc.log(f"  NLL {r['bpd']:.3f} bits/dim ({r['strata']} strata of T={cfg.T}, n={len(test)})")


def _denoise_rows(sc: Scoring, forward, schedule, lacking, first, data_root, download):
    """The DENOISING rows the run lacks (`lacking`: their keys), at their timesteps, on the first nll_images
    test images, in one append (with the compile row `first` when nothing was scored before)."""
    cfg, ev = sc.run.config, sc.ev
    test = _images(cfg.dataset, "test", data_root, download)[:ev.nll_images]
    lacking = set(lacking)
    ts = sorted({int(k[EVAL_KEY.index("t")]) for k in lacking})
    got = denoising(forward, schedule, cfg, test, ts, seed=ev.sample_seed, device=sc.device,
                    batch=ev.sample_batch, clip_x0=ev.clip_x0)
    cols = dict(phase="eval", n=len(test), sample_seed=ev.sample_seed, clip_x0=ev.clip_x0,
                reference=reference(cfg.dataset, "test", len(test)), train_step=sc.at)
    rows = [row(sc.run.run_id, m, v, **cols, t=t) for t in ts for m, v in got[t].items()]
    sc.emit([row(sc.run.run_id, m, v, **cols) for m, v in first] + [r for r in rows if key(r) in lacking])
    sc.log("  x0 RMS error by t: " + ", ".join(f"{t}: {got[t]['x0_rms']:.3f}" for t in ts))


GROUP = {"fid": "fid", "recall": "prc", "solver_rms": "solver"}  # the metric keying a row group -> the group


def _groups(lacking: dict) -> dict:
    """{setting: [(group, extractor)]} of the row groups behind the `lacking` row keys, in wanted's
    order; group is "fid" (fid, kid, kid_std, fid_wall_s), "prc" (precision, recall) or "solver"."""
    out = {}
    for k, s in lacking.items():
        if s not in NOT_SETTINGS:
            out.setdefault(s, []).append((GROUP[k[0]], k[EVAL_KEY.index("extractor")]))
    return out


def _score(kind, extractor, images, solver_ref, run, cols, ev, *, log, s, cache_root, data_root, progress) -> list:
    """The rows of one group ("fid", "prc" or "solver") for one setting's images."""
    from ablations.running.evaluation import solver_rms
    from ablations.metrics.fidelity import fid, prc
    cfg = run.config
    if kind == "solver":
        m = ev.solver_images
        value = solver_rms(images[:m], solver_ref[:m])
        log(f"  {label(*s)}: solver_rms {value:.4f} vs DDIM over all {cfg.T} steps (n={m})")
        return [row(run.run_id, "solver_rms", value, **cols, n=m, reference=solver_reference_label(cfg.T))]
    kw = dict(dataset=cfg.dataset, extractor=extractor, split=ev.fid_reference, cache_root=cache_root,
              data_root=data_root, reference_n=ev.fid_reference_n or None,
              weights_path=(ev.inception_weights or None) if extractor == "inception-v3-compat" else None,
              progress=progress)
    t0 = time.perf_counter()
    if kind == "prc":
        r = prc(images, **kw)
        ref = dict(n=r["n"], extractor=extractor, reference=r["reference"])
        log(f"  {label(*s)}: precision {r['precision']:.3f}, recall {r['recall']:.3f} ({extractor}, n={r['n']})")
        return [row(run.run_id, m, r[m], **cols, **ref) for m in ("precision", "recall")]  # recall marks it done
    r = fid(images, **kw)
    ref = dict(n=r["n"], extractor=extractor, reference=r["reference"])
    log(f"  {label(*s)}: FID {r['fid']:.2f}, KID {r['kid']:.4f} ± {r['kid_std']:.4f} ({extractor}, n={r['n']})")
    return [row(run.run_id, m, v, **cols, **ref) for m, v in (
        ("fid_wall_s", time.perf_counter() - t0), ("kid", r["kid"]), ("kid_std", r["kid_std"]),
        ("fid", r["fid"]))]  # fid last: its presence marks the group done


def solver_reference_label(T: int) -> str:
    """The `reference` column of solver_rms rows: the reference sampler and its steps."""
    return f"ddim:{T}"


@contextlib.contextmanager
def _bar(total, desc, enabled):
    """A progress bar with rate and ETA (tqdm) yielding its update function, or None when disabled."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm
    with tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, mininterval=1.0) as bar:
        yield bar.update


def _save_grid(path, images_uint8):
    from torchvision.utils import save_image
    save_image(images_uint8.float() / 255, path, nrow=8, format="png")


def _tidy_rows(folder, step, log):
    """On resume, under the run's claim: forget training loss and MSE rows logged after the checkpoint we resume
    from (training logs them again), and set aside in rows.partial.jsonl the rows of an append that was
    cut short and the lines that are not rows (`ablations.store.schema.parse`), so the missing rows are
    written once. Whole rows of a metric this suite does not know (a newer suite's) stay: it would not
    write them again. Each file is replaced atomically; the set-aside lines are written first."""
    try:
        data = (folder / ROWS).read_bytes()
    except FileNotFoundError:
        return
    keep, aside, dropped = [], [], 0
    for line, kind, obj in parse(data):
        if kind not in WHOLE:
            aside.append(line + b"\n")
        elif kind == "row" and obj["metric"] in CURVES and (obj["train_step"] or 0) > step:
            dropped += 1
        else:
            keep.append(line + b"\n")
    if not aside and not dropped and (not data or data.endswith(b"\n")):
        return
    if aside:
        old = (folder / PARTIAL).read_bytes() if (folder / PARTIAL).exists() else b""
        new = b"".join(line for line in aside if line not in old.splitlines(keepends=True))
        atomic_write(folder / PARTIAL, lambda tmp: Path(tmp).write_bytes(old + new))
        log(f"{ROWS}: {len(aside)} line(s) set aside in {PARTIAL} (rows of a torn append, or not rows); "
            "the rows they lack are written again")
    atomic_write(folder / ROWS, lambda tmp: Path(tmp).write_bytes(b"".join(keep)))


def _logger(folder, echo):
    def log(msg):
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        with open(folder / LOG, "a") as f:
            f.write(line + "\n")
        if echo:
            print(line, flush=True)
    return log

