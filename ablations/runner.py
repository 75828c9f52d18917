"""One run end to end: config.json -> train (or resume) -> evaluate -> rows in metrics.jsonl.

A run folder `runs/<spec>/<run_id>/` holds config.json (written first), status.json, checkpoints,
metrics.jsonl (one JSON row per number), samples-*.png and log.txt. The same code serves
`ablate run`, submitted SLURM jobs and submitit's debug executor.
"""
import functools
import json
import os
import platform
import socket
import subprocess
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

from ablations.spec import AXES, Run, Spec
from core import data as datasets
from core.evaluation import generate, nll, peak_memory_mb
from core.io import append_jsonl, atomic_write, read_jsonl, write_json
from core.parallel import is_main, world
from core.schedules import make_schedule
from core.training import NonFiniteLoss, build_model, checkpoints, train

DONE, FAILED, RUNNING = "done", "failed", "running"


def run_dir(spec: Spec, run: Run, runs_root) -> Path:
    return Path(runs_root) / spec.name / run.run_id


def read_status(folder) -> dict:
    try:
        return json.loads((Path(folder) / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"state": "pending"}


COUNTERS = ("requeues", "restarts")  # kept across status updates


def write_status(folder, state, **extra):
    old = read_status(folder)
    extra = {**{k: old[k] for k in COUNTERS if k in old}, **extra}
    write_json(Path(folder) / "status.json", {"state": state, "updated": time.time(), "host": socket.gethostname(),
                                             "pid": os.getpid(), **extra})


def setting_key(s) -> tuple:
    return (s["sampler"], int(s["steps"]), float(s["eta"]))


def missing_evals(spec: Spec, folder) -> tuple[list, bool]:
    """(sampler settings without an FID row, whether the NLL row is missing)."""
    rows, _ = read_jsonl(Path(folder) / "metrics.jsonl")
    have = {setting_key(r) for r in rows if r["metric"] == "fid"}
    return ([s for s in spec.eval.samplers if setting_key(s) not in have],
            not any(r["metric"] == "nll_bpd" for r in rows))


def is_complete(spec: Spec, run: Run, runs_root) -> bool:
    folder = run_dir(spec, run, runs_root)
    if read_status(folder)["state"] != DONE:
        return False
    settings, need_nll = missing_evals(spec, folder)
    return not settings and not need_nll


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


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_one(spec: Spec, run: Run, runs_root, *, data_root=None, download=False, device=None, progress=True,
            stop_at=None, should_stop=None) -> str:
    """Train and evaluate one run unless it is complete. Returns its final state. Failures (a
    non-finite loss, an exception) are recorded in status.json and returned, never raised."""
    device = device or default_device()
    folder = run_dir(spec, run, runs_root)
    main = is_main()  # with several tasks, only rank 0 writes
    folder.mkdir(parents=True, exist_ok=True)
    config = {"run_id": run.run_id, "spec": spec.name, "scale": spec.scale, "axes": run.axes,
              "train": asdict(run.config), "eval": asdict(spec.eval)}
    if main and not (folder / "config.json").exists():
        write_json(folder / "config.json", config)
    if is_complete(spec, run, runs_root):
        return DONE
    log = _logger(folder, progress) if main else (lambda msg: None)
    status = write_status if main else (lambda *a, **k: None)
    cfg = run.config
    base_row = {"ablation": spec.name, "scale": spec.scale, "run_id": run.run_id, "seed": cfg.seed,
                **{a: getattr(cfg, a) for a in AXES}, **{a: _plain(getattr(cfg, a)) for a in spec.axes},
                "device": str(device), "torch": torch.__version__, "commit": git_commit(),
                "host": platform.node()}
    rows_path = folder / "metrics.jsonl"

    def emit(metric, value, **cols):
        if not main:
            return
        append_jsonl(rows_path, [{**base_row, "sampler": None, "steps": None, "eta": None, "n": None,
                                  "extractor": None, "step": None, "protocol": None, **cols,
                                  "metric": metric, "value": value, "timestamp": time.time()}])

    try:
        status(folder, RUNNING, step=_ckpt_step(folder))
        images = _images(cfg.dataset, "train", data_root, download)
        if main:
            _drop_rows_after(rows_path, _ckpt_step(folder))
        log(f"run {run.run_id} {run.axes} seed {cfg.seed}: training on {device} x{world()} tasks")
        result = train(cfg, folder, images, device=device, progress=progress, stop_at=stop_at,
                       should_stop=should_stop,
                       on_log=lambda step, loss: emit("train_loss", loss, step=step, n=cfg.batch))
        if result["step"] < result["total"]:
            status(folder, RUNNING, step=result["step"], total=result["total"])
            log(f"stopped at step {result['step']}/{result['total']}; resume to continue")
            return RUNNING
        if result["wall_s"] > 0 and result["img_per_s"] == result["img_per_s"]:
            emit("train_img_per_s", result["img_per_s"], step=result["step"], n=cfg.batch)
            emit("train_wall_s", result["wall_s"], step=result["step"])
            emit("peak_mem_mb", peak_memory_mb(device), protocol="train")
        evaluate(spec, run, folder, result["ema"], emit, log, device=device, data_root=data_root,
                 download=download, runs_root=runs_root)
        status(folder, DONE, step=result["step"], total=result["total"])
        log(f"run {run.run_id} done")
        return DONE
    except NonFiniteLoss as e:
        status(folder, FAILED, reason=str(e), step=e.step)
        log(f"run {run.run_id} failed: {e}")
    except Exception as e:  # noqa: BLE001 - a failed run is data; the grid goes on
        status(folder, FAILED, reason=f"{type(e).__name__}: {e}", step=_ckpt_step(folder))
        log(f"run {run.run_id} failed:\n{traceback.format_exc()}")
    return FAILED


def evaluate(spec, run, folder, ema, emit, log, *, device, data_root, download, runs_root):
    """FID, sampling throughput and a sample grid per missing sampler setting; NLL if missing."""
    from core.fidelity import fid
    cfg, ev = run.config, spec.eval
    schedule = make_schedule(cfg.schedule, cfg.T)
    ema.eval()
    settings, need_nll = missing_evals(spec, folder)
    for s in settings:
        images, seconds = generate(ema, schedule, cfg, s, ev.fid_samples, batch=ev.sample_batch,
                                   seed=ev.sample_seed, device=device, clip_x0=ev.clip_x0)
        if not is_main():
            continue
        cols = {**s, "n": ev.fid_samples, "protocol": f"sample_seed={ev.sample_seed}"}
        _save_grid(folder / f"samples-{s['sampler']}-{s['steps']}-{s['eta']:g}.png", images[:ev.grid_images])
        t0 = time.perf_counter()
        r = fid(images, dataset=cfg.dataset, extractor=ev.fid_extractor, split=ev.fid_reference,
                cache_root=Path(runs_root) / ".cache" / "fid", data_root=data_root,
                reference_n=ev.fid_reference_n or None, weights_path=ev.inception_weights or None)
        emit("sample_img_per_s", ev.fid_samples / seconds, **cols)
        emit("nfe_per_s", ev.fid_samples * s["steps"] / seconds, **cols)
        emit("sample_wall_s", seconds, **cols)
        emit("fid_wall_s", time.perf_counter() - t0, **cols, extractor=r["extractor"])
        emit("fid", r["fid"], **{**cols, "extractor": r["extractor"],
                                  "protocol": f"reference={r['reference']} sample_seed={ev.sample_seed}"})
        log(f"  {s['sampler']}-{s['steps']} eta={s['eta']:g}: FID {r['fid']:.2f} ({r['extractor']}, "
            f"n={ev.fid_samples}), {ev.fid_samples / seconds:.1f} img/s")
    if need_nll:
        test = _images(cfg.dataset, "test", data_root, download)[:ev.nll_images]
        r = nll(ema, schedule, cfg, test, timesteps=ev.nll_timesteps, seed=ev.sample_seed, device=device)
        protocol = f"{r['method']} timesteps={r['timesteps']} split=test"
        emit("nll_bpd", r["bpd"], n=len(test), protocol=protocol)
        emit("nll_wall_s", r["seconds"], n=len(test), protocol=protocol)
        log(f"  NLL {r['bpd']:.3f} bits/dim ({protocol}, n={len(test)})")
    emit("peak_mem_mb", peak_memory_mb(device), protocol="eval")


def load_ema(run: Run, folder, device):
    """The EMA model from a run's latest checkpoint."""
    model = build_model(run.config).to(device)
    model.load_state_dict(torch.load(checkpoints(folder)[-1], map_location=device, weights_only=False)["ema"])
    return model.eval()


def _save_grid(path, images_uint8):
    from torchvision.utils import save_image
    atomic_write(path, lambda tmp: save_image(images_uint8.float() / 255, tmp, nrow=8, format="png"))


def _ckpt_step(folder) -> int:
    found = checkpoints(folder)
    return int(found[-1].stem.split("-")[1]) if found else 0


def _drop_rows_after(rows_path, step):
    """On resume, forget training rows logged after the checkpoint we resume from."""
    rows, bad = read_jsonl(rows_path)
    keep = [r for r in rows if r.get("step") is None or r["step"] <= step or r["metric"] != "train_loss"]
    if len(keep) != len(rows) or bad:
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep)
        atomic_write(rows_path, lambda tmp: Path(tmp).write_text(lines))


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def _logger(folder, echo):
    def log(msg):
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        with open(folder / "log.txt", "a") as f:
            f.write(line + "\n")
        if echo:
            print(line, flush=True)
    return log
