"""The ETA: rates from warm steps (a cold first call excluded), printed in units that never round to 0."""
import time

import pytest
from torch import nn

from ablations.running import budget
from ablations.run.config import EvalConfig, TrainConfig

TINY = TrainConfig(T=100, model_channels=8, mults=(1, 2), res_blocks=1, groups=4, batch=8)
COLD_S = 2.0  # a cold process's first call: far slower than a warm step of the tiny net (0.3 s at a load of 8 on 2 cores)


def test_timed_is_the_median_of_the_calls_after_the_warm_up():
    calls = []

    def fn():
        calls.append(None)
        time.sleep(COLD_S if len(calls) == 1 else 0.01)

    assert budget.timed(fn, warmup=1, steps=5) < COLD_S / 5
    assert len(calls) == 6
    calls.clear()
    assert budget.timed(fn, warmup=0, steps=1) >= COLD_S  # the same call timed cold: what the old ETA measured


class ColdFirstCall(nn.Module):
    """The U-Net, with a first call in each mode (training, sampling) that stalls like a cold process's."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, set()

    def forward(self, x, t):
        if self.training not in self.seen:
            self.seen.add(self.training)
            time.sleep(COLD_S)
        return self.model(x, t)


def test_the_training_and_sampling_rates_come_from_warm_steps(monkeypatch):
    real = budget.build_model
    monkeypatch.setattr(budget, "build_model", lambda cfg: ColdFirstCall(real(cfg)))
    ev = EvalConfig(sample_batch=16)
    rates = budget.measured_rates(TINY, ev, "cpu")
    fwd, both = budget.per_image(TINY)
    # a cold call among the timed steps would be their median only if it were there: the median step is warm
    assert rates["train"] > TINY.batch * both / (COLD_S / 2)
    assert rates["sample"] > 16 * fwd / (COLD_S / 2)
    cold = budget.measured_rates(TINY, ev, "cpu", warmup=0, steps=1)  # a fresh model, timed cold
    assert cold["train"] < rates["train"] / 2


@pytest.mark.parametrize("rate, text", [(3.4e8, "340 MFLOP/s"), (1.25e11, "125 GFLOP/s"), (2e12, "2 TFLOP/s"),
                                        (5e2, "500 FLOP/s")])
def test_a_rate_is_printed_in_units_that_keep_its_digits(rate, text):
    assert budget.flops_rate(rate) == text


def test_the_eta_times_training_at_the_training_rate_and_sampling_at_the_sampling_rate():
    work = [{"train": 1e12, "sample": 6e11, "nll": 4e11}]
    line = budget.eta(work, {"train": 1e9, "sample": 1e10})  # 1,000 s + 100 s
    assert line.startswith("ETA ~18 min: 2 TFLOP") and "training at 1 GFLOP/s" in line
    small = budget.eta([{"train": 2e9, "sample": 0.0, "nll": 0.0}], {"train": 3e8, "sample": 3e8})
    assert small.startswith("ETA ~6.7 s") and "300 MFLOP/s" in small  # the smoke scale's rates, not "0 GFLOP/s"
    with pytest.raises(ValueError, match="not positive"):
        budget.eta(work, {"train": 0.0, "sample": 1e9})
