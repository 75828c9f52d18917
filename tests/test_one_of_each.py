"""One of each (issue 26): one atomic writer, one squeue wrapper, one epoch permutation, and the classifier
retrained through `ablate classifier`. (The one denoiser is tested in test_samplers.py.)"""
import ast
import os
import stat
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ablations.commands.cli import main
from ablations.run.seeds import derive
from ablations.metrics import classifier
from ablations.reporting.plots import save_figure
from ablations.run import data
from ablations.running import training
from ablations.store import claim
from slurm import dispatch

ROOT = Path(__file__).resolve().parent.parent


# --- one atomic writer -----------------------------------------------------------------------------------

def _renames_onto_a_target(path: Path) -> list[int]:
    """Lines that rename a temporary file onto its target (`os.replace(...)`, `tmp.replace(...)`)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "replace":
            owner = node.func.value
            if (isinstance(owner, ast.Name) and (owner.id == "os" or "tmp" in owner.id.lower())):
                lines.append(node.lineno)
    return lines


def test_only_store_io_writes_through_a_temporary_file_and_a_rename():
    io = ROOT / "ablations" / "store" / "io.py"
    assert _renames_onto_a_target(io), "the check must see io.py's own os.replace"
    others = {str(p.relative_to(ROOT)): lines for folder in ("ablations", "core", "slurm")
              for p in sorted((ROOT / folder).rglob("*.py")) if p != io and (lines := _renames_onto_a_target(p))}
    assert others == {}, f"atomic writes outside ablations/store/io.py (use its atomic_write): {others}"


def test_a_figure_that_fails_to_save_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    fig = plt.figure()
    fig.gca().plot([0, 1], [1, 0])
    png, _ = save_figure(fig, tmp_path, "curve")
    old = png.read_bytes()
    assert stat.S_IMODE(png.stat().st_mode) == 0o666 & ~_umask()  # io's umask, not mkstemp's 0600

    def broken(self, fname, **kw):
        Path(fname).write_bytes(b"half a png")
        raise OSError("disk went away")
    monkeypatch.setattr(type(fig), "savefig", broken)
    fig = plt.figure()
    with pytest.raises(OSError, match="disk went away"):
        save_figure(fig, tmp_path, "curve")
    assert png.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.pdf", "curve.png"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- one squeue wrapper ----------------------------------------------------------------------------------

@pytest.fixture
def fake_squeue(tmp_path, monkeypatch):
    """A `squeue` on PATH that logs its arguments and prints `tmp_path/queue` (lines "%i %T")."""
    (tmp_path / "queue").write_text("")
    script = tmp_path / "bin" / "squeue"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\nimport sys\nopen({str(tmp_path / 'calls')!r}, 'a').write("
                      f"' '.join(sys.argv[1:]) + '\\n')\nprint(open({str(tmp_path / 'queue')!r}).read(), end='')\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def test_claims_and_dispatch_ask_squeue_through_one_wrapper(fake_squeue):
    (fake_squeue / "queue").write_text("4242_3 RUNNING\n4242_4 PENDING\n77 COMPLETED\nnoise\n")
    assert dispatch.queue_states(["4242_3", "77", "4242_3"]) == {"4242_3": "RUNNING", "4242_4": "PENDING",
                                                                "77": "COMPLETED"}
    assert claim.job_alive("4242_3")
    (fake_squeue / "queue").write_text("77 COMPLETED\n")
    assert not claim.job_alive("77")
    (fake_squeue / "queue").write_text("")
    assert not claim.job_alive("4242_3")  # SLURM no longer knows it
    calls = (fake_squeue / "calls").read_text().splitlines()
    assert calls == ["-h -r -o %i %T -j 4242_3,77", "-h -r -o %i %T -j 4242_3", "-h -r -o %i %T -j 77",
                     "-h -r -o %i %T -j 4242_3"]
    assert dispatch.queue_states([]) == {} and claim.squeue([]) == {}  # an empty -j would list every job
    assert len((fake_squeue / "calls").read_text().splitlines()) == 4


def test_without_squeue_a_job_counts_as_alive_and_the_queue_as_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert claim.squeue(["1"]) is None
    assert claim.job_alive("1") and dispatch.queue_states(["1"]) == {}


# --- one epoch permutation -------------------------------------------------------------------------------

def test_training_and_the_classifier_draw_the_epoch_order_from_one_function():
    assert training.epoch_order is data.epoch_order and classifier.epoch_order is data.epoch_order
    for seed, epoch, n in ((0, 0, 12), (3, 2, 10), (7, 5, 60000)):
        old = torch.randperm(n, generator=torch.Generator().manual_seed(derive("data_order", seed, epoch)))
        assert torch.equal(data.epoch_order(seed, epoch, n), old)  # the order both used before
    assert data.epoch_order(3, 2, 10).tolist() == [4, 6, 9, 0, 8, 5, 1, 2, 3, 7]  # recorded from the old code
    assert not torch.equal(data.epoch_order(3, 2, 10), data.epoch_order(3, 3, 10))


# --- the classifier retrains through ablate --------------------------------------------------------------

def _idx(path: Path, array: np.ndarray):
    """Write `array` (uint8) in the IDX format that data.fashion_mnist reads."""
    head = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    path.write_bytes(head + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_fmnist(tmp_path):
    rng = np.random.default_rng(0)
    for stem, n in (("train", 256), ("t10k", 64)):
        _idx(tmp_path / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(tmp_path / f"{stem}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return tmp_path


def test_ablate_classifier_retrains_reproducibly_and_reports_the_sha256(tiny_fmnist, tmp_path):
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        runs = {}
        for name, seed in (("a", 0), ("b", 0), ("c", 1)):
            out = tmp_path / f"{name}.pt"
            r = CliRunner().invoke(main, ["classifier", "--seed", str(seed), "--epochs", "1",
                                          "--data-root", str(tiny_fmnist), "--out", str(out)])
            assert r.exit_code == 0, r.output
            assert f"1 epochs, seed {seed}" in r.output and f"sha256 {classifier.sha256(out)}  {out}" in r.output
            runs[name] = torch.load(out, weights_only=True)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


def test_ablate_classifier_offers_the_old_options():
    r = CliRunner().invoke(main, ["classifier", "--help"])
    assert r.exit_code == 0
    for option in ("--seed", "--epochs", "--data-root", "--out"):
        assert option in r.output
    assert not hasattr(classifier, "main")  # no second, argparse command line
