"""Training-step and sampling-forward throughput, and their fractions of the machine's practical rooflines
(a fp32 matmul, and the same GEMM work as a 1x1 convolution); in bf16 autocast against a bf16 matmul, on
CPUs with native bf16 only (bench/cpu.py: skipped elsewhere, with the CPU's flags as the reason)."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.conftest import describe, small_unet
from bench.cpu import bf16_skip_reason, cpu_info
from core.diffusion import q_sample
from core.losses import loss_terms
from core.schedules import make_schedule

N, BATCH = 2048, 128
NO_BF16 = bf16_skip_reason(cpu_info())
needs_bf16 = pytest.mark.skipif(NO_BF16 is not None, reason=NO_BF16 or "")


def test_matmul_roofline(benchmark):
    a, b = torch.randn(N, N), torch.randn(N, N)
    describe(benchmark, kind="matmul", implementation="torch", flop=2 * N**3)
    benchmark(torch.mm, a, b)


def test_conv_roofline(benchmark):
    """The same GEMM work as a 1x1 convolution: on CPUs where oneDNN's convolutions outrun the BLAS
    behind torch.mm, this is the higher practical roofline."""
    x, w = torch.randn(16, 1024, 32, 32).contiguous(memory_format=torch.channels_last), torch.randn(1024, 1024, 1, 1)
    describe(benchmark, kind="conv", implementation="torch", flop=2 * 16 * 32 * 32 * 1024 * 1024)
    with torch.no_grad():
        benchmark(torch.nn.functional.conv2d, x, w)


@needs_bf16
def test_matmul_roofline_bf16(benchmark):
    """The bf16 roofline: a 2048x2048 bf16 matmul (AVX512-BF16 / AMX kernels)."""
    a, b = torch.randn(N, N, dtype=torch.bfloat16), torch.randn(N, N, dtype=torch.bfloat16)
    describe(benchmark, kind="matmul_bf16", implementation="torch", flop=2 * N**3)
    benchmark(torch.mm, a, b)


VARIANTS = {"contiguous": (torch.contiguous_format, False, False), "channels_last": (torch.channels_last, False, False),
            "compiled": (torch.channels_last, True, False),  # compiled = torch.compile (inductor) + channels_last
            "bf16": (torch.contiguous_format, False, True)}  # eager, bf16 autocast (as `bf16 = true` trains)
BF16_ONLY = {"bf16"}


def _variants(names):
    return [pytest.param(v, marks=needs_bf16) if v in BF16_ONLY else v for v in names]


@pytest.mark.parametrize("memory_format", _variants(VARIANTS))
def test_train_step(benchmark, memory_format):
    """One optimizer step of the demo's U-Net on a batch of 128 28x28 images (L_simple, eps)."""
    fmt, compile_, bf16 = VARIANTS[memory_format]
    model = small_unet().train().to(memory_format=fmt)
    forward = torch.compile(model) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    schedule = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(BATCH, 1, 28, 28, generator=g) * 2 - 1).contiguous(memory_format=fmt)

    def step():
        t = torch.randint(0, 1000, (BATCH,), generator=g)
        noise = torch.randn(x0.shape, generator=g).contiguous(memory_format=fmt)
        xt = q_sample(schedule, x0, t, noise)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = forward(xt, t)
        loss = loss_terms(schedule, out.float(), x0, xt, t, noise, prediction="eps", variance="fixed_small",
                          loss="simple")["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    describe(benchmark, kind="train", implementation="ours", model="unet", variant=memory_format, batch=BATCH,
             flop=_flops(lambda: model(x0, torch.zeros(BATCH, dtype=torch.long)).sum().backward()))
    benchmark.pedantic(step, rounds=5, warmup_rounds=2 if compile_ else 1)


@pytest.mark.parametrize("variant", _variants(["eager", "compiled", "bf16"]))
def test_sample_forward(benchmark, variant):
    """The sampling forward of the demo's U-Net: no grad, batch 250 (the demo's sample batch), eager,
    compiled (inductor, channels_last weights) or eager in bf16 autocast, as evaluation runs it."""
    model = small_unet().eval().requires_grad_(False)
    if variant == "compiled":
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if variant == "compiled" else model
    x, t = torch.randn(250, 1, 28, 28), torch.full((250,), 500)
    with torch.no_grad():
        flop = _flops(lambda: model(x, t))
        describe(benchmark, kind="infer", implementation="ours", model="unet", variant=variant, batch=250, flop=flop)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "bf16"):
            benchmark.pedantic(forward, args=(x, t), rounds=5, warmup_rounds=2 if variant == "compiled" else 1)


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
