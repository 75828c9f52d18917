"""Shared benchmark models, and the ratios computed side by side from one run's benchmarks.

Every benchmark records what it timed in pytest-benchmark's `extra_info` (implementation, sampler,
model, steps, batch, threads, torch), and the ratios are computed from those columns:
- loop_over_forward: our S-step loop / (NFE x the model's forward), per model and S (NFE = S, or 2S-1 for
  heun), both means over the same rounds: the forward is timed inside the loop (`forward_s`), so the
  machine's drift between benchmarks (+-10% on a shared 2-core VM) does not enter the ratio;
  forward_over_floor puts that in-loop forward next to the separately timed one;
- ours_over_diffusers: our loop / diffusers' scheduler loop on the identical model, per S;
- per_image_over_per_batch: a loop with one generator per image / one generator per batch;
- train_over_matmul, train_over_conv: a training step's FLOP/s / the fp32 matmul's or 1x1 conv's;
- train_over_bf16_matmul, infer_over_bf16_matmul: a bf16 (autocast) variant's FLOP/s / the bf16 matmul's,
  measured only on CPUs with AVX512-BF16 or AMX-BF16 (bench/cpu.py);
- infer_over_matmul, infer_over_conv: the same for the sampling forward (no grad, batch 250);
- fid_cold_over_cached: FID with the reference statistics computed / read from the cache;
- large_over_small: an `ablate` command on the 2,000-run grid / on the 100-run grid (runs in `batch`).
Every row also carries the machine's rooflines (matmul_gflops, conv_gflops, bf16_matmul_gflops) from the
same run, and every benchmark the CPU's model and bf16 flags (cpu_model, avx512f, avx512_bf16, amx_bf16).
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.cpu import cpu_info
from core.schedules import make_schedule
from core.unet import UNet

BATCH = 64
ROOT = Path(__file__).resolve().parent.parent


def ablate(*args) -> str:
    """`ablate ARGS` as a user runs it, in its own process from the repository root: its stdout."""
    r = subprocess.run([sys.executable, "-m", "ablations.commands.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


class Stub(torch.nn.Module):
    """A model that costs almost nothing, to expose the sampler's own overhead."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.1))

    def forward(self, x, t):
        return x * self.scale


def small_unet():
    """The demo's U-Net (ablations/demo.toml)."""
    torch.manual_seed(0)
    return UNet(channels=1, model_channels=32, mults=(1, 2, 2), res_blocks=1, groups=8, resolution=28).eval()


MODELS = {"stub": Stub, "unet": small_unet}


def describe(benchmark, **info):
    """Record what a benchmark times as columns (with the thread count, torch version and the CPU)."""
    benchmark.extra_info.update(threads=torch.get_num_threads(), torch=torch.__version__, **cpu_info(), **info)


@pytest.fixture(scope="session")
def schedule():
    return make_schedule("linear", 1000)


@pytest.fixture(scope="session", params=list(MODELS))
def model(request):
    return request.param, MODELS[request.param]().eval().requires_grad_(False)


def ratios(benchmarks: list[dict]) -> list[dict]:
    """One row per comparison, one column per quantity (see the module docstring)."""
    med = {}
    for b in benchmarks:
        e = b.get("extra_info", {})
        med[(e.get("kind"), e.get("implementation"), e.get("sampler"), e.get("model"), e.get("steps"),
             e.get("batch"), e.get("variant"))] = (
            b["stats"]["median"], {**e, "mean_s": b["stats"]["mean"]})
    get = lambda *k: med.get(k, (None, None))[0]  # noqa: E731
    rate = lambda kind: (lambda m: m and m[1]["flop"] / m[0])(med.get((kind, "torch", None, None, None, None, None)))  # noqa: E731
    matmul, conv, bf16 = rate("matmul"), rate("conv"), rate("matmul_bf16")
    machine = {"matmul_gflops": matmul and matmul / 1e9, "conv_gflops": conv and conv / 1e9,
               "bf16_matmul_gflops": bf16 and bf16 / 1e9}
    over_bf16 = lambda flops, variant: bf16 and variant == "bf16" and flops / bf16 or None  # noqa: E731
    out = []
    for (kind, impl, sampler, model, steps, batch, variant), (t, e) in med.items():
        if kind == "loop" and impl == "ours":
            fwd = get("forward", "ours", None, model, None, batch, None)
            diff = get("loop", "diffusers", sampler, model, steps, batch, None)
            n, inside = e.get("nfe", steps), e.get("forward_s")
            out.append({"kind": "sampler_loop", "sampler": sampler, "model": model, "steps": steps, "nfe": n,
                        "batch": batch, "loop_over_forward": inside and e["mean_s"] / inside,
                        "forward_over_floor": inside and fwd and inside / (n * fwd),
                        "ours_over_diffusers": diff and t / diff})
        elif kind == "noise" and variant == "per_image":
            base = get("noise", "ours", sampler, model, steps, batch, "per_batch")
            out.append({"kind": "per_image_noise", "sampler": sampler, "model": model, "steps": steps,
                        "batch": batch, "per_image_over_per_batch": base and t / base})
        elif kind == "train":
            flops = e["flop"] / t
            out.append({"kind": "train_step", "model": model, "variant": variant, "batch": batch,
                        "train_gflops": flops / 1e9, "train_img_per_s": batch / t,
                        "train_over_matmul": matmul and flops / matmul, "train_over_conv": conv and flops / conv,
                        "train_over_bf16_matmul": over_bf16(flops, variant)})
        elif kind == "infer":
            flops = e["flop"] / t
            out.append({"kind": "sample_forward", "model": model, "variant": variant, "batch": batch,
                        "infer_gflops": flops / 1e9, "infer_img_per_s": batch / t,
                        "infer_over_matmul": matmul and flops / matmul, "infer_over_conv": conv and flops / conv,
                        "infer_over_bf16_matmul": over_bf16(flops, variant)})
        elif kind == "command":
            sizes = sorted(k[5] for k in med if k[0] == "command" and k[6] == variant)
            if len(sizes) > 1 and batch == sizes[-1]:
                base = get("command", "ours", None, None, None, sizes[0], variant)
                out.append({"kind": "command", "variant": variant, "runs": batch, "small_runs": sizes[0],
                            "seconds": t, "large_over_small": base and t / base})
        elif kind == "fid" and variant == "cold":
            cached = get("fid", "ours", None, model, None, batch, "cached")
            out.append({"kind": "fid", "batch": batch, "fid_cold_over_cached": cached and t / cached})
    return [{**r, **machine} for r in out]


def pytest_benchmark_update_json(config, benchmarks, output_json):
    from bench.cpu import bf16_skip_reason
    output_json["ratios"] = ratios(output_json["benchmarks"])
    info = cpu_info()
    output_json["cpu"] = {**info, "bf16_skipped": bf16_skip_reason(info)}  # recorded even when bf16 is skipped


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    found = ratios([b.as_dict(include_data=False) for b in session.benchmarks if b.stats])
    if found:
        terminalreporter.write_sep("-", "ratios (side by side, this run)")
        for r in found:
            terminalreporter.write_line("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in r.items() if v is not None))
