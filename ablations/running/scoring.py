"""Scoring a run's checkpoints: from each checkpoint's EMA weights, the rows a spec lacks there, per sampler
setting (its samples, FID/KID, precision/recall, solver error), the NLL and the denoising rows by timestep,
and what training cost to that checkpoint. Scoring while training goes on and after it ends give the same
rows, and a stop resumes with the rows still lacking (every group is one append)."""
import contextlib
import functools
import time
from pathlib import Path
from typing import NamedTuple

from ablations.grid.spec import Run
from ablations.run.config import NOT_SETTINGS, eval_steps
from ablations.run.data import load
from ablations.run.model import run_schedule
from ablations.run.shapes import SHAPES
from ablations.running.evaluation import denoising, generate, nll, peak_memory_mb, sampling_forward
from ablations.running.parallel import any_true, from_main, is_main
from ablations.running.ledger import (
    NLL_CLIP_X0,
    have_keys,
    nll_spacing,
    reference,
    run_steps,
    solver_reference_label,
    wanted,
)
from ablations.store.io import atomic_write
from ablations.store.layout import fid_cache, last_step, sample_grid_name
from ablations.store.schema import EVAL_KEY, key, row
from core.samplers import nfe


def said(s) -> str:
    """A sampler setting in a log line, in the spec's words: "ddim · 10 steps · eta=0 · leading" (a legend shows
    the sampler's registry `word` instead: ablations/reporting/legend.py)."""
    return f"{s.sampler} · {s.steps} steps · eta={float(s.eta):g} · {s.spacing}" + ("" if s.clip_x0 else " · no clip")


@functools.lru_cache(maxsize=4)
def images_of(name, split, root, download):
    return load(name, split, root, download)[0]


class Interrupted(Exception):
    pass


class Unscorable(Exception):
    """A checkpoint this spec scores is gone: the run trained past it unkept (`ledger.unscorable`)."""


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
        have = from_main(have_keys(folder) if is_main() else None)  # task 0 reads; every task follows
        lacking = {k: what for k, (step, what) in need.items() if step == at and k not in have}
        if not lacking:
            continue
        state = load_step(folder, at, device)
        if state is None:
            raise Unscorable(
                f"the checkpoint of step {at} was not kept (the run trained to {last_step(folder)} under a spec "
                f"whose eval_at did not name {at}), so this spec's rows there cannot be made without training "
                f"again: drop {at} from eval_at, or train it again in another runs root (--runs-root)")
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
        model["forward"], compile_s = sampling_forward(ema, cfg, (ev.sample_batch, *SHAPES[cfg.dataset]),
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
            log(f"  {said(s)}: scoring the {ev.fid_samples} kept images")
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
    with _bar(ev.solver_images, f"solver reference {said(ref_setting)}", sc.progress) as bar:
        images, seconds = generate(forward, schedule, cfg, ref_setting, ev.solver_images,
                                   batch=ev.sample_batch, seed=ev.sample_seed, device=sc.device, progress=bar)
    if is_main():
        atomic_write(_solver_ref_path(sc, clip_x0), functools.partial(write_images, images_uint8=images))
    sc.log(f"  solver reference {said(ref_setting)}: {ev.solver_images} images in {seconds:.0f} s")
    return images


def _sample(sc: Scoring, forward, schedule, s, cols, first, have):
    """A setting's images, generated by every task; task 0 writes their throughput rows (with the compile
    row `first`), their sample grid, and the samples file, kept last. None on the other tasks."""
    from ablations.running.evaluation import write_images
    from ablations.store.layout import samples_name
    cfg, ev = sc.run.config, sc.ev
    with _bar(ev.fid_samples, f"sampling {said(s)}", sc.progress) as bar:
        images, seconds = generate(forward, schedule, cfg, s, ev.fid_samples, batch=ev.sample_batch,
                                   seed=ev.sample_seed, device=sc.device, progress=bar)
    if not is_main():
        return None
    sc.emit([r for r in (row(sc.run.run_id, m, v, **cols, n=ev.fid_samples) for m, v in (
        *first, ("sample_img_per_s", ev.fid_samples / seconds),
        ("nfe_per_s", ev.fid_samples * cols["nfe"] / seconds), ("sample_wall_s", seconds),
        ("peak_mem_mb", peak_memory_mb(sc.device)))) if key(r) not in have])
    atomic_write(sc.folder / sample_grid_name(*s, train_step=sc.at, sample_seed=ev.sample_seed),
                 lambda tmp: _save_grid(tmp, images[:ev.grid_images]))
    # kept last: a kill before it samples the setting again (its throughput rows are not repeated)
    atomic_write(sc.folder / samples_name(*s, sample_seed=ev.sample_seed, train_step=sc.at),
                 functools.partial(write_images, images_uint8=images))
    sc.log(f"  {said(s)}: {ev.fid_samples} images kept, {ev.fid_samples / seconds:.1f} img/s")
    return images


def _nll_rows(sc: Scoring, forward, schedule, first, data_root, download):
    """The NLL rows (Ho et al. 2020, Eq. 5; core.likelihood.nll_bpd) on the first nll_images test images,
    in one append with the compile row `first` when nothing was sampled before."""
    cfg, ev = sc.run.config, sc.ev
    test = images_of(cfg.dataset, "test", data_root, download)[:ev.nll_images]
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
    test = images_of(cfg.dataset, "test", data_root, download)[:ev.nll_images]
    lacking = set(lacking)
    ts = sorted({int(k[EVAL_KEY.index("t")]) for k in lacking})
    t0 = time.perf_counter()
    got = denoising(forward, schedule, cfg, test, ts, seed=ev.sample_seed, device=sc.device,
                    batch=ev.sample_batch, clip_x0=ev.clip_x0)
    seconds = time.perf_counter() - t0
    cols = dict(phase="eval", n=len(test), sample_seed=ev.sample_seed, clip_x0=ev.clip_x0,
                reference=reference(cfg.dataset, "test", len(test)), train_step=sc.at)
    rows = [row(sc.run.run_id, m, v, **cols, t=t) for t in ts for m, v in got[t].items()]
    sc.emit([row(sc.run.run_id, m, v, **cols) for m, v in (*first, ("denoise_wall_s", seconds))]
            + [r for r in rows if key(r) in lacking])
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
        log(f"  {said(s)}: solver_rms {value:.4f} vs DDIM over all {cfg.T} steps (n={m})")
        return [row(run.run_id, "solver_rms", value, **cols, n=m, reference=solver_reference_label(cfg.T))]
    kw = dict(dataset=cfg.dataset, extractor=extractor, split=ev.fid_reference, cache_root=cache_root,
              data_root=data_root, reference_n=ev.fid_reference_n or None,
              weights_path=(ev.inception_weights or None) if extractor == "inception-v3-compat" else None,
              progress=progress)
    t0 = time.perf_counter()
    if kind == "prc":
        r = prc(images, **kw)
        ref = dict(n=r["n"], extractor=extractor, reference=r["reference"])
        log(f"  {said(s)}: precision {r['precision']:.3f}, recall {r['recall']:.3f} ({extractor}, n={r['n']})")
        return [row(run.run_id, m, v, **cols, **ref) for m, v in (
            ("prc_wall_s", time.perf_counter() - t0), ("precision", r["precision"]),
            ("recall", r["recall"]))]  # recall last: its presence marks the group done
    r = fid(images, **kw)
    ref = dict(n=r["n"], extractor=extractor, reference=r["reference"])
    log(f"  {said(s)}: FID {r['fid']:.2f}, KID {r['kid']:.4f} ± {r['kid_std']:.4f} ({extractor}, n={r['n']})")
    return [row(run.run_id, m, v, **cols, **ref) for m, v in (
        ("fid_wall_s", time.perf_counter() - t0), ("kid", r["kid"]), ("kid_std", r["kid_std"]),
        ("fid", r["fid"]))]  # fid last: its presence marks the group done


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
