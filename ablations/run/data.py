"""Datasets as uint8 tensors (N, C, H, W), and their scaling to [-1, 1].

`fashion_mnist` is read offline from the idx files of Debian's `dataset-fashion-mnist` package, or
from a given root; torchvision's download is the fallback when online. `cifar10` comes through
torchvision (a given root, or a download on a cluster with network).
"""
import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch

from ablations.run.seeds import derive
from core.registry import lookup

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
SPLITS = {"train": "train", "test": "t10k"}


class DatasetMissing(FileNotFoundError):
    pass


def _read_idx(path: Path) -> np.ndarray:
    """The IDX format (LeCun et al.): magic (2 zero bytes, dtype code, ndim), big-endian dims, then data.
    Read-only; decompressed once per process and file version (a run loads its split about ten times)."""
    st = path.stat()
    return _decoded(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _decoded(path: str, mtime_ns: int, size: int) -> np.ndarray:
    path = Path(path)
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an uint8 IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fmnist_candidates(root):
    roots = [Path(root)] if root else []
    if os.environ.get("DDPM_DATA_ROOT"):
        roots.append(Path(os.environ["DDPM_DATA_ROOT"]))
    roots.append(DEBIAN_FMNIST)
    return [r for base in roots for r in (base, base / "fashion-mnist", base / "FashionMNIST" / "raw")]


def fashion_mnist(split: str, root=None, download: bool = False):
    """(images uint8 (N, 1, 28, 28), labels int64 (N,)) of Fashion-MNIST's `split`."""
    stem = SPLITS[split]
    tried = []
    for folder in _fmnist_candidates(root):
        for ext in (".gz", ""):
            img, lab = folder / f"{stem}-images-idx3-ubyte{ext}", folder / f"{stem}-labels-idx1-ubyte{ext}"
            tried.append(str(img))
            if img.exists() and lab.exists():
                x = torch.from_numpy(_read_idx(img).copy()).unsqueeze(1)
                return x, torch.from_numpy(_read_idx(lab).astype(np.int64))
    if download:
        from torchvision.datasets import FashionMNIST
        ds = FashionMNIST(root or "data", train=split == "train", download=True)
        return ds.data.unsqueeze(1).clone(), ds.targets.clone()
    raise DatasetMissing(
        "Fashion-MNIST not found. Looked for:\n  " + "\n  ".join(tried)
        + "\nSupply it with `apt-get install dataset-fashion-mnist` (Debian), with --data-root DIR holding "
        "the four idx files, or with --download on a machine that has network.")


def cifar10(split: str, root=None, download: bool = False):
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of CIFAR-10's `split`, through torchvision."""
    from torchvision.datasets import CIFAR10
    root = root or os.environ.get("DDPM_DATA_ROOT") or "data"
    try:
        ds = CIFAR10(root, train=split == "train", download=download)
    except RuntimeError as e:
        raise DatasetMissing(f"CIFAR-10 not found under {Path(root).resolve()} ({e}). Supply it with "
                             "--data-root DIR (torchvision's cifar-10-batches-py layout) or --download.") from None
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)


DATASETS = {"fashion_mnist": fashion_mnist, "cifar10": cifar10}


def load(name: str, split: str, root=None, download: bool = False):
    """(images uint8 (N, C, H, W), labels) of dataset `name`, split "train" or "test"."""
    fn = lookup(DATASETS, name, "dataset")
    lookup(SPLITS, split, "split")
    return fn(split, root, download)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order of the n training images in epoch `epoch`: a permutation seeded by (seed, epoch) alone, so a
    resumed run, and a retrained classifier, sees the same batches. The one epoch permutation."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(derive("data_order", seed, epoch)))


def to_model(x_uint8):
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return x_uint8.float() / 127.5 - 1


def to_uint8(x):
    """float [-1, 1] -> uint8 [0, 255], rounding to the nearest level."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
