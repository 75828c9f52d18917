import shutil

import pytest
import torch
import torch.nn.functional as F

from ablations import classifier, fidelity
from ablations.data import load
from ablations.fidelity import InceptionWeightsMissing, fid


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
    with pytest.raises(ValueError, match=r"unknown fid_extractor 'clip'.*'fmnist-classifier', 'inception-v3-compat'"):
        fid(test_images[0][:10], dataset="fashion_mnist", extractor="clip", cache_root=tmp_path)
