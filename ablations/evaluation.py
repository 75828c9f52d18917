"""Evaluation of a trained model: samples per sampler setting, bits/dim on test images, throughput.

Image i (generated, or a test image in the NLL estimate) draws all its randomness from its own
generator, seeded by (sample_seed, i) (as EDM's generate.py does). The numbers therefore do not depend
on the batch size or on how many tasks share the work: task r takes batches r, r + tasks, ...
"""
import resource
import time

import torch

from ablations.data import SHAPES, to_model, to_uint8
from ablations.parallel import gather_objects, rank, world
from ablations.seeds import derive
from core.likelihood import nll_bpd
from core.samplers import sample


def batches(n: int, batch: int):
    """This task's (lo, hi) batches of n items."""
    return [(lo, min(lo + batch, n)) for lo in range(0, n, batch)][rank()::world()]


def generators(purpose: str, seed: int, lo: int, hi: int, device) -> list[torch.Generator]:
    """One generator per item lo..hi-1, seeded by (purpose, seed, item index)."""
    return [torch.Generator(device).manual_seed(derive(purpose, seed, i)) for i in range(lo, hi)]


def compiled(model, cfg, shape, device):
    """(forward, seconds): the forward that sampling and the NLL use, as the run trained it (bf16
    autocast with `cfg.bf16`, output in fp32). With `cfg.compile` it is compiled once and warmed on one
    batch of `shape` as the samplers and the NLL call it (no grad, contiguous x, LongTensor t), so
    every sampler setting and the NLL reuse one graph; seconds is that first call (0 when eager)."""
    fast = torch.compile(model) if cfg.compile else model
    if cfg.bf16:
        fast = _autocast(fast, torch.device(device).type)
    if not cfg.compile:
        return fast, 0.0
    t0 = time.perf_counter()
    with torch.no_grad():
        fast(torch.zeros(shape, device=device), torch.zeros(shape[0], dtype=torch.long, device=device))
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return fast, time.perf_counter() - t0


def _autocast(forward, device_type):
    def run(x, t):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return forward(x, t).float()
    return run


def generate(model, schedule, cfg, setting, n: int, *, batch: int, seed: int, device, progress=None):
    """n uint8 images (n, C, H, W) from `setting` (a Setting). Image i starts from the same x_T in every
    setting. Returns (images, seconds); every task gets all n images. `progress(k)` is called after
    each batch of k images."""
    device = torch.device(device)
    C, H, W = SHAPES[cfg.dataset]
    mine, t0 = [], time.perf_counter()
    for lo, hi in batches(n, batch):
        x = sample(model, schedule, (hi - lo, C, H, W), sampler=setting.sampler, steps=setting.steps,
                   eta=setting.eta, spacing=setting.spacing, prediction=cfg.prediction, variance=cfg.variance,
                   generator=generators("image", seed, lo, hi, device), clip_x0=setting.clip_x0, device=device)
        mine.append((lo, to_uint8(x).cpu()))
        if progress:
            progress(hi - lo)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    parts = sorted((p for task in gather_objects(mine) for p in task), key=lambda p: p[0])
    return torch.cat([x for _, x in parts]), max(gather_objects(seconds))


def nll(model, schedule, cfg, images_uint8, *, strata: int, seed: int, device, batch: int = 256, clip_x0: bool = True,
        progress=None):
    """Mean bits/dim over test images; `strata` = 0 means the exact sum over all T; `clip_x0` as in
    `core.likelihood.nll_bpd`. `progress(k)` is called after each batch of k images."""
    device = torch.device(device)
    total, t0 = 0.0, time.perf_counter()
    for lo, hi in batches(len(images_uint8), batch):
        x0 = to_model(images_uint8[lo:hi]).to(device)
        r = nll_bpd(model, schedule, x0, prediction=cfg.prediction, variance=cfg.variance, strata=strata,
                    generator=generators("nll", seed, lo, hi, device), clip_x0=clip_x0)
        total += r["bpd"].sum().item()
        if progress:
            progress(hi - lo)
    total = sum(gather_objects(total))
    return {"bpd": total / len(images_uint8), "strata": strata or schedule.T, "seconds": time.perf_counter() - t0}


def peak_memory_mb(device) -> float:
    """Peak allocated GPU memory on CUDA; the process's peak resident set size on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
