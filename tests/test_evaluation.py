"""Per-image seeds: image i's x_T and sampler noise come from (sample_seed, i), so generated images and
NLL estimates do not depend on the batch size or on how many tasks share the work."""
import os
import socket
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ablations.run.config import Setting, TrainConfig
from ablations.running.evaluation import generate, nll, sampling_forward
from ablations.run.model import build_model
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
    forward, seconds = sampling_forward(model, cfg, (8, 1, 28, 28), "cpu")
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


def test_solver_rms_is_zero_for_the_reference_and_falls_with_steps():
    """Image i starts from the same x_T in every setting, so DDIM (eta 0) over all T steps reproduces the
    reference endpoints exactly, and coarser DDIM discretisations sit further from them."""
    from ablations.running.evaluation import solver_reference, solver_rms
    cfg = replace(CFG, T=1000)
    model, schedule = _model(), make_schedule("linear", cfg.T)
    ref_setting = solver_reference(cfg.T, True)
    assert ref_setting == Setting("ddim", 1000, 0.0, True, "leading")
    ref, _ = generate(model, schedule, cfg, ref_setting, 6, batch=6, seed=3, device="cpu")
    again, _ = generate(model, schedule, cfg, ref_setting, 6, batch=4, seed=3, device="cpu")
    assert solver_rms(again, ref) == 0.0
    errors = [solver_rms(generate(model, schedule, cfg, Setting("ddim", steps, 0.0, True), 6, batch=6, seed=3,
                                  device="cpu")[0], ref) for steps in (5, 20, 100)]
    assert errors[0] > errors[1] > errors[2] > 0, errors
    other_x_T, _ = generate(model, schedule, cfg, Setting("ddim", 100, 0.0, True), 6, batch=6, seed=4, device="cpu")
    assert solver_rms(other_x_T, ref) > 3 * errors[2]  # the same x_T is what makes the distance small


def test_solver_rms_is_the_mean_per_image_rms_in_pixel_units():
    from ablations.running.evaluation import solver_rms
    ref = torch.full((2, 1, 2, 2), 127, dtype=torch.uint8)
    x = ref.clone()
    x[0, 0, 0, 0] += 255 - 127  # one pixel of image 0 off by 128 levels = 128 / 127.5 in [-1, 1] units
    assert solver_rms(x, ref) == pytest.approx((128 / 127.5 / 2) / 2)  # sqrt(d^2 / 4) for image 0, 0 for image 1
    with pytest.raises(ValueError, match="differ"):
        solver_rms(x[:1], ref)


@pytest.mark.parametrize("setting, expected", [
    (Setting("ddim", 10, 0.0, True), True), (Setting("ddim", 10, 0.5, True), False),
    (Setting("ddpm", 10, 0.0, True), False), (Setting("dpmpp_2m", 10, 0.0, True, "trailing"), True),
    (Setting("heun", 5, 0.0, False), True)])
def test_deterministic_settings_are_the_ode_solvers(setting, expected):
    from ablations.running.evaluation import deterministic
    assert deterministic(setting) is expected


def test_kept_images_round_trip_and_a_short_file_is_not_enough(tmp_path):
    from functools import partial

    from ablations.running.evaluation import load_images, write_images
    from ablations.store.io import atomic_write
    x = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    atomic_write(tmp_path / "s.npz", partial(write_images, images_uint8=x))
    assert torch.equal(load_images(tmp_path / "s.npz", 5), x) and torch.equal(load_images(tmp_path / "s.npz", 3), x[:3])
    assert load_images(tmp_path / "s.npz", 6) is None and load_images(tmp_path / "none.npz", 1) is None
    (tmp_path / "torn.npz").write_bytes((tmp_path / "s.npz").read_bytes()[:100])
    assert load_images(tmp_path / "torn.npz", 1) is None  # unreadable: sampled again, never a crash
    with pytest.raises(ValueError, match="uint8"):
        write_images(tmp_path / "f.npz", x.float())
