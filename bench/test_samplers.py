"""Sampler micro-benchmarks: single steps, and full loops vs the model's forward and vs diffusers."""
import time

import pytest
import torch

from bench.conftest import BATCH, Stub, describe, small_unet
from core.diffusion import denoiser
from core.samplers import SAMPLERS, nfe, plan, sample
from core.schedules import spaced_timesteps

STEPS = [10, 50, 100]
SAMPLER_NAMES = ["ddpm", "ddim", "dpmpp_2m", "heun"]
UNET_STEPS = [10]  # loop / (NFE x forward) = 1 + (per-step overhead) / forward: the stub shows it over S
UNET_ROUNDS = 5


def _timed(name, steps):
    """Rounds for a loop of `name` at `steps`; the U-Net's long loops are skipped (minutes, same ratio)."""
    if name == "unet" and steps not in UNET_STEPS:
        pytest.skip(f"U-Net loops are timed at S = {UNET_STEPS}: the per-step overhead is the stub's to show")
    return UNET_ROUNDS if name == "unet" else 20


def _x(seed=0, batch=BATCH):
    return torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_forward(benchmark, model):
    """The physical floor: one model call on the sampling batch."""
    name, net = model
    describe(benchmark, kind="forward", implementation="ours", model=name, batch=BATCH)
    x, t = _x(), torch.full((BATCH,), 500)
    with torch.no_grad():
        benchmark(net, x, t)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_one_step(benchmark, schedule, sampler):
    """One sampler step with a stub model: the per-step cost of our update."""
    describe(benchmark, kind="step", implementation="ours", sampler=sampler, model="stub", batch=BATCH)
    net, x = Stub().eval(), _x()
    step = plan(schedule, 10, BATCH, "cpu")[3:4]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        benchmark(SAMPLERS[sampler].fn, denoiser(net, prediction="eps", variance="fixed_small", clip_x0=True), x, step,
                  prediction="eps", variance="fixed_small", eta=0.0,
                  clip_x0=True, generator=g, callback=None)


def _ours(net, schedule, sampler, steps, x, generator=None):
    return sample(net, schedule, x.shape, sampler=sampler, steps=steps, prediction="eps", variance="fixed_small",
                  x_T=x, generator=generator or torch.Generator().manual_seed(0), clip_x0=True, device="cpu")


def timed(net):
    """(forward, seconds): `net` with the seconds spent inside it summed per loop (a loop first appends
    0.0), so a loop's model time is measured in the same round as the loop, immune to the machine's drift."""
    seconds = []

    def forward(x, t):
        t0 = time.perf_counter()
        out = net(x, t)
        seconds[-1] += time.perf_counter() - t0
        return out
    return forward, seconds


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_loop_ours(benchmark, schedule, model, sampler, steps):
    """Our S-step loop; `forward_s` is its mean time inside the model (the NFE forwards of each loop)."""
    name, net = model
    rounds = _timed(name, steps)
    forward, seconds = timed(net)

    def loop():
        seconds.append(0.0)
        return _ours(forward, schedule, sampler, steps, _x())
    benchmark.pedantic(loop, rounds=rounds, warmup_rounds=1)
    timed_rounds = seconds[1:] or seconds  # without the warm-up round (absent with --benchmark-disable)
    describe(benchmark, kind="loop", implementation="ours", sampler=sampler, model=name, steps=steps, batch=BATCH,
             nfe=nfe(sampler, steps), forward_s=sum(timed_rounds) / len(timed_rounds))


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_loop_diffusers(benchmark, schedule, model, sampler, steps):
    """The same loop with diffusers' scheduler on the identical model, timesteps, settings and noise;
    before timing, both must give the same samples. DDIM re-derives eps from the clipped x0 in both
    (ours always; diffusers with use_clipped_model_output=True, as GLIDE and improved-diffusion do)."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers is the optional `bench` extra")
    name, net = model
    rounds = _timed(name, steps)
    describe(benchmark, kind="loop", implementation="diffusers", sampler=sampler, model=name, steps=steps,
             batch=BATCH, nfe=nfe(sampler, steps))
    loop = _diffusers_loop(diffusers, net, sampler, steps, _x())
    # diffusers keeps alpha_bar in float32 (1 - alpha_bar near t = 0 has ~3 digits), which moves heun's
    # samples by up to ~3e-4; tests/test_frontier.py holds every sampler to 1e-4 with float64 alpha_bar.
    tol = 1e-3 if sampler in ("heun", "dpmpp_2m") else 1e-4
    torch.testing.assert_close(loop(), _ours(net, schedule, sampler, steps, _x()), atol=tol, rtol=tol)
    benchmark.pedantic(loop, rounds=rounds, warmup_rounds=1)


def _diffusers_loop(diffusers, net, sampler, steps, x):
    """The pipeline loop of diffusers' scheduler for `sampler`, on our settings: linear betas, T = 1000,
    leading spacing (DPM-Solver gets our kept timesteps: its own "leading" is not Lin et al.'s), x0
    clipped (DDIM re-derives eps from the clipped x0, as ours does; DPM-Solver clips through
    thresholding at 1; Heun through clip_sample)."""
    kw = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    if sampler == "ddpm":
        sched = diffusers.DDPMScheduler(**kw, clip_sample=True, variance_type="fixed_small")
    elif sampler == "ddim":
        sched = diffusers.DDIMScheduler(**kw, clip_sample=True, set_alpha_to_one=True)
    elif sampler == "dpmpp_2m":
        sched = diffusers.DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++", solver_order=2,
                                                      lower_order_final=True, final_sigmas_type="zero",
                                                      thresholding=True, sample_max_value=1.0)
    else:
        sched = diffusers.HeunDiscreteScheduler(**kw, clip_sample=True, timestep_spacing="leading")
    kept = spaced_timesteps(1000, steps)[::-1]

    @torch.no_grad()
    def loop():
        g = torch.Generator().manual_seed(0)
        if sampler == "dpmpp_2m":
            sched.set_timesteps(timesteps=kept)
        else:
            sched.set_timesteps(steps)
        y = x * (1 + sched.sigmas[0] ** 2).sqrt() if sampler == "heun" else x
        for t in sched.timesteps:
            inp = sched.scale_model_input(y, t) if sampler == "heun" else y
            out = net(inp, t.long().expand(BATCH))
            if sampler == "ddpm":
                y = sched.step(out, t, y, generator=g).prev_sample
            elif sampler == "ddim":
                y = sched.step(out, t, y, eta=0.0, use_clipped_model_output=True).prev_sample
            else:
                y = sched.step(out, t, y).prev_sample
        return y

    return loop


@pytest.mark.parametrize("variant", ["per_batch", "per_image"])
def test_noise_per_image(benchmark, schedule, variant):
    """A 10-step DDPM loop at batch 250 with the demo U-Net: one generator per image (what evaluation
    uses, so samples do not depend on the batch) vs one per batch."""
    batch, steps = 250, 10
    describe(benchmark, kind="noise", implementation="ours", sampler="ddpm", model="unet", steps=steps,
             batch=batch, variant=variant)
    net, x = small_unet().requires_grad_(False), _x(batch=batch)

    def gens():
        if variant == "per_batch":
            return torch.Generator().manual_seed(0)
        return [torch.Generator().manual_seed(i) for i in range(batch)]

    benchmark.pedantic(lambda: _ours(net, schedule, "ddpm", steps, x, gens()), rounds=3, warmup_rounds=1)
