"""What runs cost in FLOPs, and an ETA from warm measured steps on this machine.

FLOPs are counted by torch.utils.flop_counter (convolutions, matmuls, attention) per image:
- training: steps x batch x (forward + backward);
- sampling: per setting, fid_samples x NFE x forward;
- NLL: nll_images x (strata, or T when exact) x forward; x0_rms and nll_term_bpd (one pass for both):
  nll_images x len(denoise_t) x forward.
The FID pass and elementwise work are left out; they are a few percent at the scales here.
"""
import functools
import statistics
import time

import torch

from ablations.run.axes import OPTIMIZERS
from ablations.run.config import NOT_SETTINGS, TrainConfig, eval_steps, scored_at, total_steps
from ablations.run.model import ARCHITECTURE, architecture, build_model
from ablations.run.shapes import SHAPES, SIZES
from core.samplers import nfe


def per_image(cfg) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of one image through cfg's U-Net, counted once per
    architecture (a grid's seeds, learning rates, losses and schedules share a count)."""
    return _per_image(architecture(cfg))


@functools.cache
def _per_image(arch: tuple) -> tuple[float, float]:
    from torch.utils.flop_counter import FlopCounterMode  # imports torch._dynamo: seconds, paid only here
    cfg = TrainConfig(**dict(zip(ARCHITECTURE, arch)))
    model = build_model(cfg)
    x, t = torch.zeros(2, *SHAPES[cfg.dataset]), torch.zeros(2, dtype=torch.long)
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            model(x, t)
    with FlopCounterMode(display=False) as both:
        model(x, t).sum().backward()
    return fwd.get_total_flops() / 2, both.get_total_flops() / 2


def run_flops(cfg, ev, steps_left: int, todo=None) -> dict:
    """{train, sample, nll}: FLOPs still to do for one run with `steps_left` training steps and the
    evaluations `todo`: (train_step, setting or "nll" or "denoise") pairs, as `ledger.missing` gives them
    (default: every setting, the NLL and the denoise_t rows at every checkpoint the spec scores,
    `config.eval_steps`); "nll" counts the denoise_t passes too."""
    if todo is None:
        total = total_steps(cfg, SIZES[cfg.dataset]["train"])
        todo = [(at, w) for at in eval_steps(ev, total)
                for w in (*scored_at(ev, total, at), "nll", *(("denoise",) if ev.denoise_t else ()))]
    todo = list(dict.fromkeys(todo))  # a setting once per checkpoint, whatever it lacks
    fwd, both = per_image(cfg)
    sample = sum(ev.fid_samples * nfe(s.sampler, s.steps) for _, s in todo if s not in NOT_SETTINGS) * fwd
    passes = sum((ev.nll_strata or cfg.T) if s == "nll" else len(ev.denoise_t) if s == "denoise" else 0
                 for _, s in todo)
    return {"train": steps_left * cfg.batch * both, "sample": sample, "nll": passes * ev.nll_images * fwd}


def timed(fn, *, warmup: int = 2, steps: int = 5, sync=lambda: None) -> float:
    """The median seconds of one call of `fn` over `steps` calls after `warmup` untimed ones: a cold
    process's first calls (allocator, kernel selection, lazy imports) are not the rate a run trains at."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measured_rates(cfg, ev, device, *, warmup: int = 2, steps: int = 5) -> dict:
    """{train, sample} FLOP/s of cfg's U-Net here, each the median of warm calls (`timed`): a training
    step (eager forward, backward and the run's optimizer at its batch, at most 64) and a sampling batch (the
    no-grad forward at the eval's sample_batch, at most 256, which the NLL uses too)."""
    fwd, both = per_image(cfg)
    sync = (lambda: torch.cuda.synchronize(device)) if torch.device(device).type == "cuda" else (lambda: None)
    model = build_model(cfg).to(device).train()
    opt = OPTIMIZERS[cfg.optimizer](model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batch = min(cfg.batch, 64)
    x = torch.randn(batch, *SHAPES[cfg.dataset], device=device)
    t = torch.randint(0, cfg.T, (batch,), device=device)

    def train_step():
        opt.zero_grad(set_to_none=True)
        model(x, t).square().mean().backward()
        opt.step()

    train = batch * both / timed(train_step, warmup=warmup, steps=steps, sync=sync)
    n = min(ev.sample_batch, 256)
    xs = torch.randn(n, *SHAPES[cfg.dataset], device=device)
    ts = torch.randint(0, cfg.T, (n,), device=device)
    model.eval()
    with torch.no_grad():
        sample = n * fwd / timed(lambda: model(xs, ts), warmup=warmup, steps=steps, sync=sync)
    return {"train": train, "sample": sample}


def flops_rate(rate: float) -> str:
    """A FLOP/s rate with three significant digits in sensible units (never a rounded-away 0)."""
    for unit, scale in (("TFLOP/s", 1e12), ("GFLOP/s", 1e9), ("MFLOP/s", 1e6), ("kFLOP/s", 1e3)):
        if rate >= scale:
            return f"{rate / scale:.3g} {unit}"
    return f"{rate:.3g} FLOP/s"


def duration(seconds: float) -> str:
    """`45 s`, `13 min`, `2.4 h`."""
    if seconds < 90:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.2g} h"


def eta(work: list[dict], rates: dict) -> str:
    """One line: the total FLOPs of `work` (run_flops dicts), and the time at the measured `rates`
    (training FLOPs at the training rate, sampling and NLL at the sampling rate)."""
    total = sum(sum(w.values()) for w in work)
    parts = {k: sum(w[k] for w in work) for k in ("train", "sample", "nll")}
    if min(rates.values()) <= 0:
        raise ValueError(f"a measured rate is not positive: {rates}")
    seconds = parts["train"] / rates["train"] + (parts["sample"] + parts["nll"]) / rates["sample"]
    split = ", ".join(f"{k} {v / 1e12:.3g}" for k, v in parts.items())
    return (f"ETA ~{duration(seconds)}: {total / 1e12:.3g} TFLOP ({split}); training at {flops_rate(rates['train'])}, "
            f"sampling at {flops_rate(rates['sample'])}, each the median of warm eager steps here (compile "
            f"time, compile's speed-up and the FID pass not included)")
