"""Per-image seeds: image i's x_T and sampler noise come from (sample_seed, i), so generated images and
NLL estimates do not depend on the batch size or on how many tasks share the work."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ablations.config import Setting, TrainConfig
from ablations.evaluation import compiled, generate, nll
from ablations.training import build_model
from core.schedules import make_schedule

CFG = TrainConfig(T=50, model_channels=8, mults=(1, 2), res_blocks=1, groups=8)
SETTINGS = [Setting("ddpm", 4, 0.0, True), Setting("ddim", 3, 0.5, False)]
N = 11


def _model():
    torch.manual_seed(0)
    return build_model(CFG).eval()


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.sampler)
def test_samples_do_not_depend_on_the_batch_size(setting):
    model, schedule = _model(), make_schedule("linear", CFG.T)
    a, _ = generate(model, schedule, CFG, setting, N, batch=7, seed=3, device="cpu")
    b, _ = generate(model, schedule, CFG, setting, N, batch=64, seed=3, device="cpu")
    c, _ = generate(model, schedule, CFG, setting, N, batch=64, seed=4, device="cpu")
    assert a.shape == (N, 1, 28, 28) and torch.equal(a, b)
    assert not torch.equal(a, c)  # the seed matters


def test_one_compiled_forward_serves_every_setting_and_the_nll():
    """Evaluation compiles the model once (warmed on one sample batch) and every sampler setting and
    the NLL reuse that graph: no recompilation, and the same images as eager up to float rounding."""
    from dataclasses import replace

    from torch._dynamo.utils import counters
    cfg = replace(CFG, compile=True, channels_last=True)
    model, schedule = _model().to(memory_format=torch.channels_last), make_schedule("linear", CFG.T)
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    counters.clear()
    forward, seconds = compiled(model, cfg, (8, 1, 28, 28), "cpu")
    assert seconds > 0 and counters["stats"]["unique_graphs"] == 1
    for setting in SETTINGS:
        fast, _ = generate(forward, schedule, cfg, setting, 8, batch=8, seed=3, device="cpu")
        slow, _ = generate(model, schedule, cfg, setting, 8, batch=8, seed=3, device="cpu")
        assert (fast.int() - slow.int()).abs().max() <= 2  # uint8 levels
    a = nll(forward, schedule, cfg, images, strata=5, seed=0, device="cpu", batch=8)["bpd"]
    b = nll(model, schedule, cfg, images, strata=5, seed=0, device="cpu", batch=8)["bpd"]
    assert a == pytest.approx(b, rel=1e-4)
    assert counters["stats"]["unique_graphs"] == 1  # compiled once, reused


def test_nll_does_not_depend_on_the_batch_size():
    model, schedule = _model(), make_schedule("linear", CFG.T)
    images = torch.randint(0, 256, (N, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a = nll(model, schedule, CFG, images, strata=5, seed=0, device="cpu", batch=4)["bpd"]
    b = nll(model, schedule, CFG, images, strata=5, seed=0, device="cpu", batch=256)["bpd"]
    c = nll(model, schedule, CFG, images, strata=5, seed=1, device="cpu", batch=4)["bpd"]
    assert a == pytest.approx(b, rel=1e-6)  # same draws; float32 kernels round differently per batch size
    assert abs(a - c) > 1e3 * abs(a - b)  # other draws move the estimate far more than that


def _task(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, schedule = _model(), make_schedule("linear", CFG.T)
        images = [generate(model, schedule, CFG, s, N, batch=3, seed=3, device="cpu")[0] for s in SETTINGS]
        if rank == 0:
            torch.save(images, out)
    finally:
        dist.destroy_process_group()


def test_samples_do_not_depend_on_the_task_count(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_task, args=(2, port, tmp_path / "two.pt"), nprocs=2, join=True)
    two = torch.load(tmp_path / "two.pt")
    model, schedule = _model(), make_schedule("linear", CFG.T)
    # Same thread count as each task: on some CPUs (Intel Xeon here) the conv kernels' reduction order
    # depends on the thread count, which can move a pixel by one uint8 level; that is not the task count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for s, got in zip(SETTINGS, two):
            one, _ = generate(model, schedule, CFG, s, N, batch=64, seed=3, device="cpu")
            assert torch.equal(one, got), s
    finally:
        torch.set_num_threads(threads)
