"""Evaluation of a trained model: samples per sampler setting, bits/dim on test images, throughput.

Work is split into batches, each with its own generator seeded by (seed, batch index), so results do
not depend on how many tasks share the work: task r takes batches r, r + tasks, ...
"""
import resource
import time

import torch

from core.data import SHAPES, to_model, to_uint8
from core.likelihood import nll_bpd
from core.parallel import gather_objects, rank, world
from core.samplers import sample


def _batches(n: int, batch: int):
    """This task's (index, lo, hi) sampling batches."""
    return [(i, lo, min(lo + batch, n)) for i, lo in enumerate(range(0, n, batch))][rank()::world()]


def _generator(device, seed: int, index: int):
    return torch.Generator(device).manual_seed(seed * 1_000_003 + index)


def generate(model, schedule, cfg, setting, n: int, *, batch: int, seed: int, device, clip_x0: bool):
    """n uint8 images (n, C, H, W) from `setting` = {sampler, steps, eta}. x_T and the sampler noise of
    batch i come from a generator seeded by (seed, i), so every setting starts from the same x_T.
    Returns (images, seconds); every task gets all n images."""
    device = torch.device(device)
    C, H, W = SHAPES[cfg.dataset]
    mine, t0 = [], time.perf_counter()
    for i, lo, hi in _batches(n, batch):
        x = sample(model, schedule, (hi - lo, C, H, W), sampler=setting["sampler"], steps=setting["steps"],
                   eta=setting["eta"], prediction=cfg.prediction, variance=cfg.variance,
                   generator=_generator(device, seed, i), clip_x0=clip_x0, device=device)
        mine.append((i, to_uint8(x).cpu()))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    parts = sorted((p for task in gather_objects(mine) for p in task), key=lambda p: p[0])
    return torch.cat([x for _, x in parts]), max(gather_objects(seconds))


def nll(model, schedule, cfg, images_uint8, *, timesteps: int, seed: int, device, batch: int = 256):
    """Mean bits/dim over test images; `timesteps` = 0 means the exact sum over all T."""
    device = torch.device(device)
    total, t0 = 0.0, time.perf_counter()
    for i, lo, hi in _batches(len(images_uint8), batch):
        x0 = to_model(images_uint8[lo:hi]).to(device)
        r = nll_bpd(model, schedule, x0, prediction=cfg.prediction, variance=cfg.variance,
                    timesteps=timesteps or None, generator=_generator(device, seed, i))
        total += r["bpd"].sum().item()
    total = sum(gather_objects(total))
    return {"bpd": total / len(images_uint8), "method": "exact" if not timesteps else "stratified",
            "timesteps": timesteps or schedule.T, "seconds": time.perf_counter() - t0}


def peak_memory_mb(device) -> float:
    """Peak allocated GPU memory on CUDA; the process's peak resident set size on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
