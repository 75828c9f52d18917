"""The paper-scale U-Net (Ho et al. 2020's CIFAR-10 model, 35.7M parameters, `scale.paper` in
ablations/scales.toml): one training step and one sampling step at batch 128, 32x32, on whatever device
is present. On CUDA it runs as the paper scale does (bf16 autocast, compile, channels_last); on CPU in fp32
(eager: one step, where compiling would take longer than the step).
Reports steps/s and what 800k training steps would take, beside the DDPM paper's 10.6 h on a TPU v3-8
(21 steps/s)."""
import pytest
import torch

from ablations.run.config import TrainConfig
from ablations.grid.spec import load_scales
from ablations.run.model import build_model
from bench.conftest import describe
from core.diffusion import q_sample
from core.losses import loss_terms
from core.samplers import sample
from core.schedules import make_schedule

BATCH = 128


@pytest.fixture(scope="module")
def paper():
    cfg = TrainConfig(**{k: v[0] for k, v in load_scales()["paper"]["base"].items()})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    assert 35.6e6 < sum(p.numel() for p in model.parameters()) < 35.8e6  # DDPM's 35.7M
    if device == "cuda":  # as the paper scale trains (compile, channels_last, bf16 autocast below)
        model = torch.compile(model.to(memory_format=torch.channels_last))
    return cfg, model, device


def test_paper_train_step(benchmark, paper):
    cfg, model, device = paper
    schedule = make_schedule(cfg.schedule, cfg.T)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = torch.Generator(device).manual_seed(0)
    x0 = torch.rand(BATCH, 3, 32, 32, generator=g, device=device) * 2 - 1

    def step():
        t = torch.randint(0, cfg.T, (BATCH,), generator=g, device=device)
        noise = torch.randn(x0.shape, generator=g, device=device)
        xt = q_sample(schedule, x0, t, noise)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=device == "cuda"):
            out = model(xt, t)
        loss = loss_terms(schedule, out.float(), x0, xt, t, noise, prediction="eps", variance="fixed_small",
                          loss="simple")["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    describe(benchmark, kind="paper_train", implementation="ours", model="paper-unet", batch=BATCH, device=device)
    benchmark.pedantic(step, rounds=3 if device == "cuda" else 1, warmup_rounds=1)
    seconds = benchmark.stats.stats.median if benchmark.stats else float("nan")
    benchmark.extra_info.update(steps_per_s=1 / seconds, hours_for_800k=800_000 * seconds / 3600,
                                paper_tpu_v3_8_steps_per_s=21.0)


def test_paper_sampling_step(benchmark, paper):
    cfg, model, device = paper
    schedule = make_schedule(cfg.schedule, cfg.T)
    x = torch.randn(BATCH, 3, 32, 32, device=device)
    describe(benchmark, kind="paper_sample_step", implementation="ours", model="paper-unet", batch=BATCH,
             device=device)

    @torch.inference_mode()
    def step():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=device == "cuda"):
            return sample(model.eval(), schedule, x.shape, sampler="ddim", steps=1, prediction="eps",
                          variance="fixed_small", x_T=x, device=device)

    benchmark.pedantic(step, rounds=3 if device == "cuda" else 1, warmup_rounds=1)
