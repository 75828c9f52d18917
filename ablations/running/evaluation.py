"""Evaluation of a trained model: samples per sampler setting, bits/dim on test images, throughput,
the solver error of deterministic samplers, and the x0 estimate's error by timestep.

Image i (generated, or a test image in the NLL estimate) draws all its randomness from its own
generator, seeded by (sample_seed, i) (as EDM's generate.py does). The numbers therefore do not depend
on the batch size or on how many tasks share the work: task r takes batches r, r + tasks, ... Image i
starts from the same x_T in every setting, so a deterministic sampler's image i can be held against
a reference solver's image i (`solver_rms`).
"""
import resource
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from ablations.run.axes import keywords
from ablations.run.config import Setting
from ablations.run.data import to_model, to_uint8
from ablations.run.seeds import derive
from ablations.run.shapes import SHAPES
from ablations.running.parallel import gather_objects, rank, world
from core.diffusion import coefs, denoiser, q_sample
from core.distributions import randn
from core.likelihood import nll_bpd
from core.losses import vb_from_denoised
from core.samplers import deterministic as core_deterministic, sample


def batches(n: int, batch: int):
    """This task's (lo, hi) batches of n items."""
    return [(lo, min(lo + batch, n)) for lo in range(0, n, batch)][rank()::world()]


def generators(purpose: str, seed: int, lo: int, hi: int, device) -> list[torch.Generator]:
    """One generator per item lo..hi-1, seeded by (purpose, seed, item index)."""
    return [torch.Generator(device).manual_seed(derive(purpose, seed, i)) for i in range(lo, hi)]


def sampling_forward(model, cfg, shape, device):
    """(forward, seconds): the forward that sampling and the NLL use, as the run trained it: eager, or
    with `cfg.compile` compiled; bf16 autocast with `cfg.bf16` (output in fp32). Compiled, it is compiled once and warmed on one
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
        x = sample(model, schedule, (hi - lo, C, H, W), **setting._asdict(), **keywords(cfg, sample),
                   generator=generators("image", seed, lo, hi, device), device=device)
        mine.append((lo, to_uint8(x).cpu()))
        if progress:
            progress(hi - lo)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    parts = sorted((p for task in gather_objects(mine) for p in task), key=lambda p: p[0])
    return torch.cat([x for _, x in parts]), max(gather_objects(seconds))


def deterministic(setting: Setting) -> bool:
    """Whether a setting maps x_T to x0 by an ODE solver (its sampler's registry entry, at eta = 0): DDIM with
    eta = 0 (Song et al. 2021, Eq. 12 with sigma = 0), DPM-Solver++(2M) or Heun."""
    return core_deterministic(setting.sampler, setting.eta)


def solver_reference(T: int, clip_x0: bool) -> Setting:
    """The setting solver_rms is measured against: DDIM (eta = 0) over all T timesteps (1,000 at the cpu
    and paper scales), the finest discretisation of the probability-flow ODE the schedule has."""
    return Setting("ddim", T, 0.0, clip_x0, "leading")


def solver_rms(images_uint8, reference_uint8) -> float:
    """Mean over images of the per-image RMS distance, in [-1, 1] pixel units, between samples and the
    reference endpoints from the same x_T: the solver's discretisation error, which FID can hide.
    Both are uint8, so two equal float images read 0 and rounding adds at most 1/255 per pixel."""
    if images_uint8.shape != reference_uint8.shape:
        raise ValueError(f"samples {tuple(images_uint8.shape)} and reference {tuple(reference_uint8.shape)} differ")
    d = (images_uint8.double() - reference_uint8.double()) / 127.5  # (N, C, H, W)
    return d.pow(2).flatten(1).mean(1).sqrt().mean().item()


def write_images(path, images_uint8):
    """Write generated uint8 images (N, C, H, W) as `images` in a compressed .npz at `path` (a temporary
    name: wrap this in `ablations.store.io.atomic_write`)."""
    if images_uint8.dtype != torch.uint8:
        raise ValueError(f"kept samples must be uint8, got {images_uint8.dtype}")
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a path
        np.savez_compressed(f, images=images_uint8.numpy())


def load_images(path, n: int):
    """The first n kept images of `path` as a uint8 tensor, or None if the file is missing, unreadable
    or holds fewer than n."""
    try:
        with np.load(Path(path)) as f:
            images = f["images"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    if images.dtype != np.uint8 or len(images) < n:
        return None
    return torch.from_numpy(images[:n].copy())


def nll(model, schedule, cfg, images_uint8, *, strata: int, seed: int, device, batch: int = 256, clip_x0: bool = True,
        progress=None):
    """Mean bits/dim over test images; `strata` = 0 means the exact sum over all T; `clip_x0` as in
    `core.likelihood.nll_bpd`. `progress(k)` is called after each batch of k images."""
    device = torch.device(device)
    total, t0 = 0.0, time.perf_counter()
    for lo, hi in batches(len(images_uint8), batch):
        x0 = to_model(images_uint8[lo:hi]).to(device)
        r = nll_bpd(model, schedule, x0, **keywords(cfg, nll_bpd), strata=strata,
                    generator=generators("nll", seed, lo, hi, device), clip_x0=clip_x0)
        total += r["bpd"].sum().item()
        if progress:
            progress(hi - lo)
    total = sum(gather_objects(total))
    return {"bpd": total / len(images_uint8), "strata": strata or schedule.T, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def denoising(model, schedule, cfg, images_uint8, ts, *, seed: int, device, batch: int = 256,
              clip_x0: bool = True) -> dict:
    """{t: {"x0_rms", "nll_term_bpd"}} on test images, from x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    (Ho et al. 2020, Eq. 4): the mean over images of the per-image RMS error ([-1, 1] units) of the network's
    x0 estimate, clipped to [-1, 1] with `clip_x0` as the samplers use it, and the bound's term at t in
    bits/dim (Eq. 5: the decoder's NLL at t = 0, the KL of the step to t - 1 above; `nll_bpd` sums them
    over all T). The denoising error by noise level, where the bound and the samples' global shape are
    decided. Image i's noise comes from its own generator, seeded by ("denoise", seed, i), the same eps
    at every t."""
    device = torch.device(device)
    D = denoiser(model, **keywords(cfg, denoiser), clip_x0=clip_x0)
    rms, term = dict.fromkeys(ts, 0.0), dict.fromkeys(ts, 0.0)
    for lo, hi in batches(len(images_uint8), batch):
        x0 = to_model(images_uint8[lo:hi]).to(device)
        noise = randn(x0.shape, generators("denoise", seed, lo, hi, device), device=device, dtype=x0.dtype)
        for t in ts:
            tt = torch.full((hi - lo,), t, dtype=torch.long, device=device)
            c, xt = coefs(schedule, tt, like=x0), q_sample(schedule, x0, tt, noise)
            d = D(xt, tt, c)
            rms[t] += (d.x0 - x0).double().pow(2).flatten(1).mean(1).sqrt().sum().item()
            term[t] += vb_from_denoised(c, d, x0, xt, tt, **keywords(cfg, vb_from_denoised)).double().sum().item()
    n, tasks = len(images_uint8), gather_objects((rms, term))  # every task's sums, gathered once
    return {t: {"x0_rms": sum(r[t] for r, _ in tasks) / n, "nll_term_bpd": sum(b[t] for _, b in tasks) / n}
            for t in ts}


def peak_memory_mb(device) -> float:
    """Peak allocated GPU memory on CUDA; the process's peak resident set size on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
