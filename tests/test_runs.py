import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ablations.run import data
from ablations.commands.cli import main
from ablations.run.config import TrainConfig
from ablations.store.io import read_jsonl
from ablations.store.layout import checkpoints, read_status, run_folder
from ablations.store.schema import RUN_COLUMNS
from ablations.grid.spec import load_spec
from ablations.running.training import train

ROOT = Path(__file__).resolve().parent.parent
TINY = TrainConfig(T=100, model_channels=8, mults=(1, 2), res_blocks=1, batch=8, train_steps=7, checkpoint_every=2, lr=1e-3,
                   warmup=3, dropout=0.1, norm="batch", ema_decay=0.9)


@pytest.fixture(scope="module")
def images():
    return data.load("fashion_mnist", "train")[0][:512]


def test_smoke_grid_produces_finite_rows(smoke):
    spec, runs, result = smoke
    assert result.exit_code == 0, result.output
    from ablations.running.budget import run_flops
    total = sum(sum(run_flops(r.config, spec.eval, r.config.train_steps).values()) for r in spec.runs)
    assert "ETA ~" in result.output and f"{total / 1e12:.3g} TFLOP" in result.output  # printed before training
    for run in spec.runs:
        folder = run_folder(runs, run.run_id)
        assert read_status(folder)["state"] == "done"
        rows, bad = read_jsonl(folder / "rows.jsonl")
        assert bad == 0
        by = {}
        for r in rows:
            by.setdefault(r["metric"], []).append(r)
        for metric in ("fid", "nll_bpd", "train_img_per_s", "sample_img_per_s", "nfe_per_s", "peak_mem_mb",
                       "train_loss", "train_wall_s", "sample_wall_s"):
            assert metric in by, metric
            assert all(math.isfinite(r["value"]) for r in by[metric])
        for extractor in ("fmnist-classifier", "fmnist-classifier-seed1"):  # the smoke scale's extractor check
            for m in ("fid", "kid", "precision", "recall"):
                assert len([r for r in by[m] if r["extractor"] == extractor]) == len(spec.eval.settings), (m, extractor)
        fid = by["fid"][0]
        assert fid["extractor"] == "fmnist-classifier" and fid["n"] == spec.eval.fid_samples and fid["value"] > 0
        assert fid["run_id"] == run.run_id and fid["reference"] == "fashion_mnist:test:2000"
        assert [(r["sampler"], r["n"]) for r in by["solver_rms"]] == [("ddim", 16)]  # DDIM eta 0, not DDPM
        assert set(fid) == set(RUN_COLUMNS)  # rows describe the run; spec, scale and axes come at collect
        nll = by["nll_bpd"][0]
        assert nll["strata"] == spec.eval.nll_strata and nll["n"] == spec.eval.nll_images
        assert json.loads((folder / "config.json").read_text())["run_id"] == run.run_id
        assert len(checkpoints(folder)) == 2 and (folder / "log.txt").exists()
        assert list(folder.glob("samples-*.png"))


def test_rerun_skips_complete_runs(smoke):
    spec, runs, _ = smoke
    before = {r.run_id: (run_folder(runs, r.run_id) / "rows.jsonl").read_text() for r in spec.runs}
    result = CliRunner().invoke(main, ["run", str(spec.path), "--scale", "smoke", "--runs-root", str(runs)])
    assert result.exit_code == 0 and f"{len(spec.runs)} complete, 0 to run" in result.output
    assert before == {r.run_id: (run_folder(runs, r.run_id) / "rows.jsonl").read_text() for r in spec.runs}
    listing = CliRunner().invoke(main, ["list", str(spec.path), "--scale", "smoke", "--runs-root", str(runs)])
    assert listing.output.count(" done") == len(spec.runs)


def _state(result):
    return {k: v.clone() for part in ("model", "ema") for k, v in
            ((f"{part}.{n}", t) for n, t in result[part].state_dict().items())}


PATHS = {"eager": {}, "compiled": {"compile": True, "channels_last": True}}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("device,path", [("cpu", "eager"), ("cpu", "compiled"),
                                         pytest.param("cuda", "compiled", marks=CUDA)])
def test_resume_is_bitwise_identical(tmp_path, images, device, path):
    """Also under torch.compile + channels_last (inductor's kernels), and on CUDA, where the
    generator state comes back from a checkpoint loaded onto the GPU."""
    cfg = replace(TINY, **PATHS[path])
    full = train(cfg, tmp_path / "a", images, device=device, progress=False)
    first = train(cfg, tmp_path / "b", images, device=device, progress=False, stop_at=3)  # last checkpoint: 2
    assert first["step"] == 3 and [p.name for p in checkpoints(tmp_path / "b")] == ["ckpt-00000002.pt"]
    resumed = train(cfg, tmp_path / "b", images, device=device, progress=False)
    assert resumed["step"] == full["step"] == 7
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if path == "compiled":
        eager = train(replace(cfg, compile=False, channels_last=False), tmp_path / "e", images, device=device,
                      progress=False)
        e = _state(eager)
        assert any(not torch.equal(a[k], e[k]) for k in a)  # the compiled path really ran (other rounding)
        return
    other = train(replace(cfg, seed=1), tmp_path / "c", images, device=device, progress=False)
    assert not torch.equal(other["model"].conv_in.weight, full["model"].conv_in.weight)
    assert [p.name for p in checkpoints(tmp_path / "a")] == ["ckpt-00000006.pt", "ckpt-00000007.pt"]


def test_non_finite_loss_fails_the_run_and_the_grid_goes_on(tmp_path):
    text = (ROOT / "ablations" / "norm.toml").read_text().split("[[finding]]")[0].replace(  # its findings name norm
        'norm = ["group", "batch", "layer", "instance"]\nconditioning = ["add", "scale_shift"]',
        "lr = [1e30, 1e-3]").replace(
        "[base]\n", "[base]\ngrad_clip = 0.0\n", 1)
    spec_path = tmp_path / "blowup.toml"
    spec_path.write_text(text)
    runs = tmp_path / "runs"
    result = CliRunner().invoke(main, ["run", str(spec_path), "--scale", "smoke", "--runs-root", str(runs),
                                       "--no-progress"])
    assert result.exit_code == 1
    spec = load_spec(spec_path, "smoke")
    bad, good = (read_status(run_folder(runs, r.run_id)) for r in spec.runs)
    assert bad["state"] == "failed" and "non-finite loss" in bad["reason"] and bad["step"] >= 1
    assert good["state"] == "done"


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FMNIST", tmp_path / "nowhere")
    monkeypatch.delenv("DDPM_DATA_ROOT", raising=False)
    with pytest.raises(data.DatasetMissing, match=r"(?s)Looked for:.*nowhere.*dataset-fashion-mnist.*--data-root"):
        data.load("fashion_mnist", "train", root=tmp_path / "empty")


def test_flips_change_the_data_deterministically_and_resume_bitwise(tmp_path, images):
    flipped = replace(TINY, flip=True)
    a = train(flipped, tmp_path / "a", images, device="cpu", progress=False)
    train(flipped, tmp_path / "b", images, device="cpu", progress=False, stop_at=3)
    b = train(flipped, tmp_path / "b", images, device="cpu", progress=False)
    plain = train(TINY, tmp_path / "c", images, device="cpu", progress=False)
    sa, sb = _state(a), _state(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(a["model"].conv_in.weight, plain["model"].conv_in.weight)
    assert flipped.run_id() != TINY.run_id()


def _idx(path, array):
    """An uint8 IDX file (magic 0 0 8 ndim, big-endian dims, then the bytes), gzipped."""
    import gzip
    import struct
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes())


def test_a_split_is_decoded_once_per_file_version_and_each_load_owns_its_tensor(tmp_path):
    import numpy as np
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([3, 7], dtype=np.uint8))
    x, y = data.load("fashion_mnist", "test", root=tmp_path)
    assert x.shape == (2, 1, 28, 28) and torch.equal(x[:, 0], torch.from_numpy(images)) and y.tolist() == [3, 7]
    x.zero_()  # a caller's in-place change never reaches the next load
    assert torch.equal(data.load("fashion_mnist", "test", root=tmp_path)[0][:, 0], torch.from_numpy(images))
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", images[::-1].copy())  # a new version of the file is read anew
    os.utime(tmp_path / "t10k-images-idx3-ubyte.gz", ns=(1, 1))
    assert torch.equal(data.load("fashion_mnist", "test", root=tmp_path)[0][:, 0], torch.from_numpy(images[::-1].copy()))
