"""Sampler micro-benchmarks: single steps, and full loops vs the model's forward and vs diffusers."""
import pytest
import torch

from bench.conftest import BATCH
from core.samplers import SAMPLERS, plan, sample

STEPS = [10, 50, 100]


def _x(seed=0):
    return torch.randn(BATCH, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_forward(benchmark, model):
    """The physical floor: one model call on the sampling batch."""
    name, net = model
    x, t = _x(), torch.full((BATCH,), 500)
    with torch.no_grad():
        benchmark(net, x, t)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_one_step(benchmark, schedule, sampler):
    """One sampler step with a stub model: the per-step cost of our update."""
    from bench.conftest import Stub
    net, x = Stub().eval(), _x()
    step = plan(schedule, 10, BATCH, "cpu")[3:4]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        benchmark(SAMPLERS[sampler], net, x, step, prediction="eps", variance="fixed_small", eta=0.0,
                  clip_x0=True, generator=g, callback=None)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_loop_ours(benchmark, schedule, model, sampler, steps):
    name, net = model
    benchmark.name = f"test_loop[ours-{sampler}-{name}-{steps}]"
    x = _x()
    benchmark.pedantic(sample, args=(net, schedule, x.shape),
                       kwargs=dict(sampler=sampler, steps=steps, prediction="eps", variance="fixed_small",
                                   x_T=x, generator=torch.Generator().manual_seed(0), clip_x0=True, device="cpu"),
                       rounds=3 if name == "unet" else 20, warmup_rounds=1)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_loop_diffusers(benchmark, model, sampler, steps):
    """The same loop with diffusers' scheduler on the identical model, timesteps and settings."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers is the optional `bench` extra")
    name, net = model
    benchmark.name = f"test_loop[diffusers-{sampler}-{name}-{steps}]"
    cls = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler}[sampler]
    kw = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=True,
              timestep_spacing="leading")
    sched = cls(**kw, **({"variance_type": "fixed_small"} if sampler == "ddpm" else {"set_alpha_to_one": True}))
    x = _x()

    @torch.no_grad()
    def loop():
        g = torch.Generator().manual_seed(0)
        sched.set_timesteps(steps)
        y = x
        for t in sched.timesteps:
            eps = net(y, t.expand(BATCH))
            y = sched.step(eps, t, y, generator=g).prev_sample if sampler == "ddpm" else \
                sched.step(eps, t, y, eta=0.0).prev_sample
        return y

    benchmark.pedantic(loop, rounds=3 if name == "unet" else 20, warmup_rounds=1)
