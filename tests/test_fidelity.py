import shutil

import pytest
import torch
import torch.nn.functional as F

from ablations.metrics import classifier, fidelity
from ablations.run.data import load, to_model
from ablations.metrics.fidelity import InceptionWeightsMissing, fid


@pytest.fixture(scope="module")
def test_images():
    return load("fashion_mnist", "test")


def test_classifier_reaches_90_percent_on_test_images(test_images):
    x, y = test_images
    net = classifier.load_classifier()
    assert classifier.accuracy(net, x[:2000], y[:2000]) >= 0.90


def test_tampered_weights_fail_loudly(tmp_path):
    bad = tmp_path / "fmnist_classifier.pt"
    shutil.copy(classifier.DEFAULT_WEIGHTS, bad)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"sha256 mismatch for {bad}: expected {classifier.FMNIST_CLASSIFIER_SHA256}"):
        classifier.load_classifier(bad)


def test_fid_orders_real_blurred_and_noise_and_reuses_reference_stats(tmp_path, test_images, monkeypatch):
    reads = []

    class Counted(fidelity.Images):
        def __getitem__(self, i):
            reads.append(len(self))
            return super().__getitem__(i)

    monkeypatch.setattr(fidelity, "Images", Counted)
    x = test_images[0][:1000]
    kw = dict(dataset="fashion_mnist", extractor="fmnist-classifier", cache_root=tmp_path, reference_n=5000)
    real = fid(x, **kw)
    assert real["reference_cached"] is False and reads.count(5000) >= 5000  # every reference image read
    reads.clear()
    blurred = F.avg_pool2d(x.float(), 3, stride=1, padding=1).round().to(torch.uint8)
    noise = torch.randint(0, 256, x.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    b, n = fid(blurred, **kw), fid(noise, **kw)
    assert real["fid"] < b["fid"] < n["fid"]
    assert real["kid"] < b["kid"] < n["kid"] and all(r["kid_std"] > 0 for r in (real, b, n))  # same features
    assert real["fid"] < 0.2 * n["fid"]
    assert b["reference_cached"] and n["reference_cached"] and reads.count(5000) == 0  # only the samples read
    again = fid(x, **kw)
    assert again["fid"] == pytest.approx(real["fid"], rel=1e-9) and again["reference_key"] == real["reference_key"]
    assert again["extractor"] == "fmnist-classifier" and again["n"] == 1000
    assert again["reference"] == "fashion_mnist:train:5000"


def test_missing_inception_weights_name_the_file_and_the_option(tmp_path, monkeypatch, test_images):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(InceptionWeightsMissing, match=r"(?s)weights-inception-2015-12-05-6726825d\.pth.*inception_weights"):
        fid(test_images[0][:10], dataset="fashion_mnist", extractor="inception-v3-compat", cache_root=tmp_path)
    with pytest.raises(InceptionWeightsMissing, match=str(tmp_path / "nope.pth")):
        fid(test_images[0][:10], dataset="fashion_mnist", extractor="inception-v3-compat", cache_root=tmp_path,
            weights_path=tmp_path / "nope.pth")
    with pytest.raises(ValueError, match=r"unknown fid_extractor 'clip'.*'fmnist-classifier', 'fmnist-classifier-seed1', 'inception-v3-compat'"):
        fid(test_images[0][:10], dataset="fashion_mnist", extractor="clip", cache_root=tmp_path)


def test_precision_and_recall_tell_fidelity_from_coverage(tmp_path, test_images):
    """Kynkaenniemi et al. 2019: real images score high on both; copies of a few real images of one class
    are precise but cover nothing else (recall ~0); noise and blank images cover nothing either. Noise
    still reads precision 0.75 here (0.27 at 2,000 a side): a few real outliers have wide 3-NN balls
    that take in off-manifold points, the weakness Naeem et al. 2020 (density and coverage) point out."""
    x, y = test_images
    kw = dict(dataset="fashion_mnist", extractor="fmnist-classifier", cache_root=tmp_path, split="train",
              reference_n=600)
    real = fidelity.prc(x[:600], **kw)
    few = fidelity.prc(x[y == 0][:20].repeat(30, 1, 1, 1), **kw)  # one class, 20 distinct images
    noise = fidelity.prc(torch.randint(0, 256, (600, 1, 28, 28), dtype=torch.uint8,
                                       generator=torch.Generator().manual_seed(0)), **kw)
    blank = fidelity.prc(torch.zeros(600, 1, 28, 28, dtype=torch.uint8), **kw)
    assert real["precision"] > 0.8 and real["recall"] > 0.8
    assert few["precision"] > 0.8 and few["recall"] < 0.05
    assert noise["recall"] < 0.05 and noise["precision"] < real["precision"] - 0.1
    assert blank["precision"] < 0.05 and blank["recall"] < 0.05
    assert real["n"] == 600 and real["reference"] == "fashion_mnist:train:600" and real["extractor"] == "fmnist-classifier"
    short = fidelity.prc(x[:100], **kw)  # both sides hold the same count: the first 100 reference images
    assert short["n"] == 100 and short["reference"] == "fashion_mnist:train:100"


def test_kid_subsets_hold_half_the_samples(tmp_path, test_images, monkeypatch):
    """With subsets of all n images every subset holds every generated image; at n // 2 they differ."""
    seen = {}
    real = fidelity.torch_fidelity.calculate_metrics

    def spy(**kw):
        seen.update(kw)
        return real(**kw)

    monkeypatch.setattr(fidelity.torch_fidelity, "calculate_metrics", spy)
    r = fid(test_images[0][:300], dataset="fashion_mnist", extractor="fmnist-classifier", cache_root=tmp_path,
            reference_n=1000)
    assert seen["kid_subset_size"] == 150 and seen["kid_subsets"] == 100 and r["kid_std"] > 0
    assert fidelity.kid_subset_size(1000) == 500 and fidelity.kid_subset_size(3) == 2


def test_second_classifier_is_its_own_extractor(tmp_path, test_images):
    """The seed-1 classifier is accurate too, has other features, its own reference cache and its name
    in the rows."""
    x, y = test_images
    a = classifier.load_classifier(*classifier.WEIGHTS["fmnist-classifier"])
    b = classifier.load_classifier(*classifier.WEIGHTS["fmnist-classifier-seed1"])
    assert classifier.accuracy(b, x[:2000], y[:2000]) >= 0.90
    with torch.no_grad():
        fa, fb = a.features(to_model(x[:64])), b.features(to_model(x[:64]))
    assert not torch.allclose(fa, fb)
    kw = dict(dataset="fashion_mnist", cache_root=tmp_path, reference_n=1000)
    ra, rb = fid(x[:200], extractor="fmnist-classifier", **kw), fid(x[:200], extractor="fmnist-classifier-seed1", **kw)
    assert rb["extractor"] == "fmnist-classifier-seed1" and rb["reference_key"] != ra["reference_key"]
    assert rb["fid"] != ra["fid"] and not rb["reference_cached"]
