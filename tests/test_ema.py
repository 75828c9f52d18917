"""The EMA of the weights: its warm-up, and BatchNorm statistics of the EMA weights (SWA's update_bn)."""
import copy
from dataclasses import replace

import pytest
import torch

from ablations.run import data
from ablations.run.config import TrainConfig
from ablations.store.layout import checkpoints
from ablations.running.training import batch_norms, bn_batches, ema_decay_at, recompute_bn_stats, train
from ablations.run.model import build_model
from core.schedules import make_schedule

TINY = TrainConfig(T=100, model_channels=8, mults=(1, 2), res_blocks=1, batch=8, train_steps=7, checkpoint_every=2,
                   lr=1e-3, warmup=3, dropout=0.1, norm="batch", ema_decay=0.9, ema_warmup=True, bn_stats_batches=3)


@pytest.fixture(scope="module")
def images():
    return data.load("fashion_mnist", "train")[0][:512]


def test_warmup_decay_is_min_of_decay_and_1_plus_t_over_10_plus_t():
    assert ema_decay_at(0.999, 0, True) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 1, True) == pytest.approx(2 / 11)
    assert ema_decay_at(0.999, 100, True) == pytest.approx(101 / 110)
    assert ema_decay_at(0.999, 10**6, True) == 0.999  # (1 + t) / (10 + t) reaches 0.999 at t = 8,990
    assert ema_decay_at(0.999, 8989, True) == pytest.approx(8990 / 8999) and 8990 / 8999 < 0.999
    assert ema_decay_at(0.999, 8991, True) == 0.999
    assert all(ema_decay_at(0.995, t, False) == 0.995 for t in (0, 1, 100, 10**6))


def test_bn_stats_are_the_ema_models_batch_statistics_over_the_fixed_batches(images):
    """After recompute_bn_stats, each BatchNorm's running mean and variance equal the mean over the
    batches of that layer's input batch mean and unbiased variance, taken from a train-mode forward."""
    cfg = replace(TINY, dropout=0.0, bn_stats_batches=4)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batches = bn_batches(cfg, images, make_schedule("linear", cfg.T), "cpu")
    assert len(batches) == 4 and batches[0][0].shape == (8, 1, 28, 28)

    direct = copy.deepcopy(model).train()
    inputs = {m: [] for m in batch_norms(direct)}
    hooks = [m.register_forward_hook(lambda m, args, out: inputs[m].append(args[0].double())) for m in inputs]
    with torch.no_grad():
        for xt, t in batches:
            direct(xt, t)
    for h in hooks:
        h.remove()

    recompute_bn_stats(model, batches)
    assert not model.training and all(not m.training and m.momentum == 0.1 for m in batch_norms(model))
    assert len(inputs) == len(batch_norms(model)) > 4
    for m, (d, xs) in zip(batch_norms(model), inputs.items()):
        mean = torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0)
        var = torch.stack([x.transpose(0, 1).flatten(1).var(1, unbiased=True) for x in xs]).mean(0)
        assert torch.allclose(m.running_mean.double(), mean, rtol=1e-4, atol=1e-5)
        assert torch.allclose(m.running_var.double(), var, rtol=1e-4, atol=1e-5)
        assert m.num_batches_tracked.item() == 4
    again = bn_batches(cfg, images, make_schedule("linear", cfg.T), "cpu")
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))  # seeded


def _state(result):
    return {f"{part}.{k}": v.clone() for part in ("model", "ema") for k, v in result[part].state_dict().items()}


def test_ema_warmup_and_bn_stats_resume_bitwise_and_the_checkpoint_holds_the_ema_statistics(tmp_path, images):
    full = train(TINY, tmp_path / "a", images, device="cpu", progress=False)
    train(TINY, tmp_path / "b", images, device="cpu", progress=False, stop_at=3)  # last checkpoint: 2
    resumed = train(TINY, tmp_path / "b", images, device="cpu", progress=False)
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    saved = torch.load(checkpoints(tmp_path / "a")[-1], weights_only=False)["ema"]
    assert all(torch.equal(saved[k], v) for k, v in full["ema"].state_dict().items())
    live = full["model"].state_dict()
    assert not torch.equal(saved["down.0.0.norm2.running_mean"], live["down.0.0.norm2.running_mean"])
    assert saved["down.0.0.norm2.num_batches_tracked"].item() == TINY.bn_stats_batches

    # the weights differ from a run without warm-up, and copying the live statistics is today's behaviour
    plain = train(replace(TINY, ema_warmup=False, bn_stats_batches=0), tmp_path / "c", images, device="cpu",
                  progress=False)
    assert not torch.equal(plain["ema"].conv_in.weight, full["ema"].conv_in.weight)
    assert torch.equal(plain["model"].conv_in.weight, full["model"].conv_in.weight)  # training is untouched
    assert torch.equal(plain["ema"].state_dict()["down.0.0.norm2.running_mean"],
                       plain["model"].state_dict()["down.0.0.norm2.running_mean"])
