"""What runs cost in FLOPs, and an ETA from one quick measured step on this machine.

FLOPs are counted by torch.utils.flop_counter (convolutions, matmuls, attention) per image:
- training: steps x batch x (forward + backward);
- sampling: per setting, fid_samples x NFE x forward;
- NLL: nll_images x (strata, or T when exact) x forward.
The FID pass and elementwise work are left out; they are a few percent at the scales here.
"""
import functools
import time

import torch

from ablations.data import SHAPES, SIZES
from ablations.config import TrainConfig, eval_steps, scored_at
from ablations.training import ARCHITECTURE, architecture, build_model, total_steps
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
    evaluations `todo`: (train_step, setting or "nll") pairs, as `runner.missing` gives them (default:
    every setting and the NLL at every checkpoint the spec scores, `config.eval_steps`)."""
    if todo is None:
        total = total_steps(cfg, SIZES[cfg.dataset]["train"])
        todo = [(at, w) for at in eval_steps(ev, total) for w in (*scored_at(ev, total, at), "nll")]
    todo = list(dict.fromkeys(todo))  # a setting once per checkpoint, whatever it lacks
    fwd, both = per_image(cfg)
    sample = sum(ev.fid_samples * nfe(s.sampler, s.steps) for _, s in todo if s not in ("nll", "cost")) * fwd
    nll_passes = sum(1 for _, s in todo if s == "nll")
    return {"train": steps_left * cfg.batch * both, "sample": sample,
            "nll": nll_passes * ev.nll_images * (ev.nll_strata or cfg.T) * fwd}


def measured_flops_per_s(cfg, device, steps: int = 3) -> float:
    """FLOP/s of a few eager forward + backward passes of cfg's U-Net at its batch size (at most 64),
    after one warm-up pass."""
    batch = min(cfg.batch, 64)
    model = build_model(cfg).to(device).train()
    x = torch.randn(batch, *SHAPES[cfg.dataset], device=device)
    t = torch.randint(0, cfg.T, (batch,), device=device)
    model(x, t).square().mean().backward()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        model(x, t).square().mean().backward()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch * per_image(cfg)[1] / (time.perf_counter() - t0)


def eta(work: list[dict], rate: float) -> str:
    """One line: the total FLOPs of `work` (run_flops dicts), and the time at `rate` FLOP/s."""
    total = sum(sum(w.values()) for w in work)
    parts = {k: sum(w[k] for w in work) for k in ("train", "sample", "nll")}
    split = ", ".join(f"{k} {v / 1e12:.3g}" for k, v in parts.items())
    return (f"ETA ~{total / rate / 60:.0f} min: {total / 1e12:.3g} TFLOP ({split}) at {rate / 1e9:.0f} GFLOP/s, "
            f"measured on a quick training step here (compile time and the FID pass not included)")
