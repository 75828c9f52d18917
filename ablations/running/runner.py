"""One run end to end: config.json -> train (or resume) -> evaluate -> rows in rows.jsonl.

A run is stored once, in `<runs root>/<run_id>/` (ablations/store/layout.py), whichever specs name it. A
spec is a view over run ids plus its eval settings: evaluating a trained run for another spec adds
only that spec's missing rows (`ledger.missing`; `scoring` makes them). The same code serves `ablate run`,
SLURM jobs and submitit's debug executor; both local and SLURM runs hold the run's claim while they train
or evaluate it.
"""
import functools
import os
import platform
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path

import torch

from ablations.grid.spec import Run, Spec
from ablations.run.config import eval_steps, total_steps
from ablations.run.model import build_model
from ablations.running import tracking
from ablations.running.evaluation import peak_memory_mb
from ablations.running.hardware import bf16_refusal, cpu_info
from ablations.running.parallel import from_main, is_main, rank, world
from ablations.running.scoring import Interrupted, Unscorable, images_of, score_checkpoints
from ablations.running.ledger import (check_folder, config_record, have_keys, is_complete, missing, run_steps, state,
                                      unscorable)
from ablations.running.training import NonFiniteLoss, memory_format, train
from ablations.store import claim
from ablations.store.io import DiskFull, append_jsonl, atomic_write, os_error, write_json
from ablations.store.records import write as write_record
from ablations.store.layout import (
    CONFIG,
    DONE,
    FAILED,
    INTERRUPTED,
    INVALID,
    LOG,
    PARTIAL,
    ROWS,
    RUNNING,
    UNSCORABLE,
    ask,
    asked,
    compile_cache,
    last_step,
    orphans,
    process,
    run_folder,
    read_status,
    write_status,
)
from ablations.store.schema import CURVES, WHOLE, key, parse, problem, row


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


@functools.lru_cache(maxsize=None)
def machine(device) -> str:
    """What the numbers ran on: the GPU's name, or the CPU model and the threads torch uses."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    model = cpu_info()["cpu_model"] or platform.processor() or "unknown CPU"
    return f"{model}, {torch.get_num_threads()} threads"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_all(spec: Spec, runs, runs_root, *, poll_s: float = 2.0, echo=print, records=None, **kw) -> dict:
    """Run every incomplete run under its claim. A run claimed by another live process (a second
    `ablate run`, a SLURM job) is skipped and revisited until it is complete or its claim is free, so
    overlapping grids train each run once; a run that another process failed meanwhile is not retried.
    With `records`, each run done here gets its record there at once (ablations/store/records.py).
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
            if st["state"] in (DONE, INVALID, UNSCORABLE) or (st["state"] == FAILED
                                                              and st.get("updated", 0) >= started):
                states[run.run_id] = st["state"]  # done, invalid, unscorable for this spec, or failed by
                if st["state"] == UNSCORABLE:     # another process since we started
                    echo(f"run {run.run_id}: {st['reason']}")
                todo.remove(run)
                continue
            try:
                ok, holder = claim.acquire(folder)
            except claim.ClaimError as e:  # a claim.json that cannot be removed: this run waits for a hand
                echo(str(e))
                states[run.run_id] = INVALID
                todo.remove(run)
                continue
            except OSError as e:  # a read-only runs root, a folder without permission
                echo(f"error: run {run.run_id}: cannot claim it: {os_error(e)}")
                states[run.run_id] = FAILED
                todo.remove(run)
                continue
            if not ok:
                continue
            try:
                states[run.run_id] = run_one(spec, run, runs_root, **kw)
                if records is not None and read_status(folder)["state"] == DONE:
                    echo(write_record(folder, records))
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
    outcome = outcome or _for_this_spec(spec, run, runs_root, folder, main)
    if outcome is not None:
        return outcome
    before = read_status(folder) if main else {}
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
    except Unscorable as e:  # another spec's training passed the step between our check and our claim
        why, kept = str(e), {k: v for k, v in before.items() if k not in ("state", "updated", *process())}
        _record(run.run_id, "unscorable", lambda: status(folder, before["state"], **kept),
                lambda: log(f"run {run.run_id}: {why}"))
        return UNSCORABLE
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


def _for_this_spec(spec, run, runs_root, folder, main) -> str | None:
    """Record the checkpoints this spec scores in the run (`layout.ask`); then DONE when the run holds every
    row it asks for, UNSCORABLE when it cannot (this spec's outcome: the run's status stays as it is for
    every other spec), None when there is work to do."""
    if main:
        ask(folder, eval_steps(spec.eval, run_steps(run)), spec.name)
    if is_complete(spec, run, runs_root):
        return DONE
    why = from_main(unscorable(spec, run, folder) if main else None)
    if why:
        print(f"run {run.run_id}: {why}", file=sys.stderr, flush=True)
        return UNSCORABLE
    return None


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
    fresh = {} if last_step(folder) else {"training": uuid.uuid4().hex[:12]}  # a new training, from the seed
    status(folder, RUNNING, step=last_step(folder), **fresh)
    images = images_of(cfg.dataset, "train", data_root, download)
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
                   keep=lambda: {*eval_steps(spec.eval, total), *asked(folder)},
                   on_checkpoint=lambda step: score(upto=step))
    if result["step"] < result["total"]:
        status(folder, INTERRUPTED, step=result["step"])
        log(f"interrupted at step {result['step']}/{result['total']} (checkpoint saved); re-run to resume")
        return INTERRUPTED
    score(upto=result["step"])
    have = have_keys(folder)
    peak = row(run.run_id, "peak_mem_mb", peak_memory_mb(device), phase="train", train_step=result["step"],
               n=cfg.batch)
    if main and result["steps_timed"] and key(peak) not in have:
        emit([peak])
    status(folder, DONE, step=result["step"])
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
