"""Shared benchmark models, and the ratios computed side by side from one run's benchmarks:

(a) overhead = our S-step loop / (S x the model's forward), per model and S;
(b) ours / diffusers' DDPMScheduler or DDIMScheduler loop on the identical model, per S;
training: achieved FLOP/s of a step / a fp32 matmul's FLOP/s, both measured in this run.
They are printed at the end and stored in the JSON under "ratios".
"""
import pytest
import torch

from core.schedules import make_schedule
from core.unet import UNet

BATCH = 64


class Stub(torch.nn.Module):
    """A model that costs almost nothing, to expose the sampler's own overhead."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.1))

    def forward(self, x, t):
        return x * self.scale


def small_unet():
    torch.manual_seed(0)
    return UNet(channels=1, base=32, mults=(1, 2, 2), res_blocks=1, groups=8, resolution=28).eval()


MODELS = {"stub": Stub, "unet": small_unet}


@pytest.fixture(scope="session")
def schedule():
    return make_schedule("linear", 1000)


@pytest.fixture(scope="session", params=list(MODELS))
def model(request):
    return request.param, MODELS[request.param]().eval().requires_grad_(False)


def _median(benchmarks, name):
    b = benchmarks.get(name)
    return b["stats"]["median"] if b else None


def ratios(benchmarks: dict) -> dict:
    """Ratios from benchmark medians, keyed by their meaning."""
    out = {}
    for name in benchmarks:
        if not name.startswith("test_loop[ours-"):
            continue
        _, sampler, model, steps = name[:-1].split("[")[1].split("-")
        ours = _median(benchmarks, name)
        fwd = _median(benchmarks, f"test_forward[{model}]")
        diff = _median(benchmarks, f"test_loop[diffusers-{sampler}-{model}-{steps}]")
        if fwd:
            out[f"(a) {sampler} {model} S={steps}: loop / (S x forward)"] = ours / (int(steps) * fwd)
        if diff:
            out[f"(b) {sampler} {model} S={steps}: ours / diffusers"] = ours / diff
    rate = lambda b: b["extra_info"]["flop"] / b["stats"]["median"] if b else None  # noqa: E731
    matmul, conv = rate(benchmarks.get("test_matmul_roofline")), rate(benchmarks.get("test_conv_roofline"))
    for fmt in ("contiguous", "channels_last"):
        step = benchmarks.get(f"test_train_step[{fmt}]")
        if not step:
            continue
        out[f"train step ({fmt}) GFLOP/s"] = rate(step) / 1e9
        out[f"train step ({fmt}) images/s"] = step["extra_info"]["batch"] / step["stats"]["median"]
        if matmul:
            out[f"train step ({fmt}) FLOP/s / fp32 matmul FLOP/s"] = rate(step) / matmul
        if conv:
            out[f"train step ({fmt}) FLOP/s / fp32 1x1-conv FLOP/s"] = rate(step) / conv
    if matmul:
        out["fp32 matmul GFLOP/s"] = matmul / 1e9
    if conv:
        out["fp32 1x1-conv GFLOP/s"] = conv / 1e9
    fid = [benchmarks.get(f"test_fid[{c}]") for c in ("cold", "cached")]
    if all(fid):
        out["FID: cold reference / cached reference (time)"] = fid[0]["stats"]["median"] / fid[1]["stats"]["median"]
    return out


def _by_name(benchmarks):
    return {b["name"]: b for b in benchmarks}


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["ratios"] = ratios(_by_name(output_json["benchmarks"]))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    found = ratios(_by_name([b.as_dict(include_data=False) for b in session.benchmarks if b.stats]))
    if found:
        terminalreporter.write_sep("-", "ratios (side by side, this run)")
        for k, v in found.items():
            terminalreporter.write_line(f"{k}: {v:.3f}")
