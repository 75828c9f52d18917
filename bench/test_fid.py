"""The FID pipeline: extractor features/s, and a second evaluation that reuses cached reference statistics."""
import pytest
import torch

from ablations.metrics.classifier import load_classifier
from ablations.run.data import load, to_model
from ablations.metrics.fidelity import fid
from bench.conftest import describe

N = 2000


@pytest.fixture(scope="module")
def images():
    return load("fashion_mnist", "test")[0][:N]


def test_features_per_second(benchmark, images):
    net = load_classifier()
    x = to_model(images)
    describe(benchmark, kind="features", implementation="ours", model="fmnist-classifier", batch=N)
    with torch.no_grad():
        benchmark(net.features, x)


@pytest.mark.parametrize("cache", ["cold", "cached"])
def test_fid(benchmark, images, tmp_path, cache):
    """cold: the reference statistics (10k train images) are computed; cached: they are read from disk."""
    describe(benchmark, kind="fid", implementation="ours", model="fmnist-classifier", batch=N, variant=cache)
    kw = dict(dataset="fashion_mnist", extractor="fmnist-classifier", reference_n=10000)
    if cache == "cached":
        fid(images, cache_root=tmp_path, **kw)
    roots = iter(tmp_path / str(i) for i in range(100))
    run = (lambda: fid(images, cache_root=tmp_path, **kw)) if cache == "cached" else \
        (lambda: fid(images, cache_root=next(roots), **kw))
    benchmark.pedantic(run, rounds=3, warmup_rounds=0)
