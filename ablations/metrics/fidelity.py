"""FID (Heusel et al. 2017), KID (Binkowski et al. 2018) and precision/recall (Kynkaenniemi et al. 2019)
through torch-fidelity, with the feature extractor always named in results.

- "fmnist-classifier": the project's Fashion-MNIST classifier (ablations/metrics/classifier.py), penultimate layer.
- "fmnist-classifier-seed1": the same recipe trained with seed 1, to check the first one's rankings.
- "inception-v3-compat": torch-fidelity's standard Inception-v3 (2048-d pool features), used only when
  its weights are present; a missing file is an error, never a silent switch to another extractor.

Reference statistics for (dataset, split, n, extractor, its weights, resolution) are computed once
and cached under `cache_root`, keyed by a hash of those fields. The cache is written through
ablations/store/io.py (the user's umask, fsync, temp names that the orphan cleanup knows).
"""
import contextlib
import hashlib
import json
from pathlib import Path

import torch
import torch_fidelity
import torch_fidelity.utils
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from ablations.metrics import classifier
from ablations.run.data import load, to_model
from ablations.store.checkpoint import save_torch
from ablations.store.layout import orphans
from core.registry import lookup


class FMNISTFeatures(FeatureExtractorBase):
    """torch-fidelity wrapper of the Fashion-MNIST classifier: uint8 (N, 1 or 3, 28, 28) -> features."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        path, sha256 = classifier.WEIGHTS[name]
        self.net = classifier.load_classifier(feature_extractor_weights_path or path, sha256)

    @staticmethod
    def get_provided_features_list():
        return "penultimate", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits"}.get(metric, "penultimate")

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 28, 28, dtype=torch.uint8)

    def forward(self, x):
        if x.shape[1] == 3:
            x = x.float().mean(1, keepdim=True).round().to(torch.uint8)
        h = self.net.features(to_model(x))
        out = {"penultimate": h, "logits": self.net.head(h)}
        return tuple(out[f] for f in self.features_list)


for _name in classifier.WEIGHTS:
    if _name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(_name, FMNISTFeatures)

INCEPTION_FILE = URL_INCEPTION_V3.rsplit("/", 1)[1]
KID_SUBSETS = 100  # torch-fidelity's default
PRC_NEIGHBORHOOD = 3  # k of the k-NN balls (Kynkaenniemi et al. 2019, Sec. 2: k = 3)
EXTRACTORS = {"fmnist-classifier": "penultimate", "fmnist-classifier-seed1": "penultimate",
              "inception-v3-compat": "2048"}  # name -> feature layer (FID, KID and PRC)
FMNIST_ONLY = tuple(classifier.WEIGHTS)  # extractors whose features only fit fashion_mnist


ORPHAN_AGE_S = 3600  # a cache temp file this old has no live writer (a save takes seconds)


@contextlib.contextmanager
def _cache_writes_through_io():
    """torch-fidelity saves its cache through a NamedTemporaryFile: mode 0600 whatever the umask, no
    fsync, and a name (`tmp<random>`) no cleanup looked for. While this is open, it saves with
    ablations.store.io.atomic_write instead."""
    own = torch_fidelity.utils.torch_atomic_save
    torch_fidelity.utils.torch_atomic_save = lambda what, path: save_torch(path, what)
    try:
        yield
    finally:
        torch_fidelity.utils.torch_atomic_save = own


class InceptionWeightsMissing(FileNotFoundError):
    pass


def inception_weights(path=None) -> Path:
    """The Inception weights file: `path`, or torch-fidelity's download location if it is already there."""
    candidate = Path(path) if path else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not candidate.exists():
        raise InceptionWeightsMissing(
            f"Inception weights for 'inception-v3-compat' not found at {candidate}. Without network they cannot "
            f"be downloaded: copy {INCEPTION_FILE} (from {URL_INCEPTION_V3}) there, or pass its path with the "
            "`inception_weights` key of the spec's [eval] block (`--inception-weights` for `ablate bench`).")
    return candidate


class Images(torch.utils.data.Dataset):
    """uint8 images (N, C, H, W) for torch-fidelity; grayscale is repeated to RGB for Inception."""

    def __init__(self, images, rgb=False):
        self.images, self.rgb = images, rgb

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        return x.expand(3, *x.shape[1:]) if self.rgb and x.shape[0] == 1 else x


def reference_key(dataset, split, n, extractor, weights, resolution) -> str:
    ident = classifier.WEIGHTS[extractor][1] if extractor in classifier.WEIGHTS else weights.name
    blob = json.dumps([dataset, split, n, extractor, ident, resolution])
    return f"ref-{dataset}-{split}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def kid_subset_size(n: int) -> int:
    """Images per KID subset: n // 2 (at least 2), so that the subsets differ in the generated images
    too and kid_std reflects the sample set, not only the reference draws."""
    return min(n, max(2, n // 2))


def prc_count(n: int, reference_size: int) -> int:
    """Images on each side of precision/recall: equal counts, as Kynkaenniemi et al. compare them."""
    return min(n, reference_size)


def _metrics(samples_uint8, ref, *, dataset, split, extractor, cache_root, weights_path, batch_size, progress,
             **which) -> tuple[dict, dict]:
    """torch-fidelity's metrics `which` between samples and the reference images `ref`, from the
    extractor's one feature layer; (metrics, {reference, reference_key, reference_cached})."""
    layer = lookup(EXTRACTORS, extractor, "fid_extractor")
    inception = extractor == "inception-v3-compat"
    weights = inception_weights(weights_path) if inception else None
    key = reference_key(dataset, split, len(ref), extractor, weights, tuple(ref.shape[-2:]))
    cache_root = Path(cache_root)
    cached = (cache_root / f"{key}-{extractor}-stat-fid-{layer}.pt").exists() or \
        (cache_root / f"{key}-{extractor}-features-{layer}.pt").exists()
    layers = {f"feature_layer_{m}": layer for m in ("fid", "kid", "prc")}
    for tmp in orphans(cache_root, older_than_s=ORPHAN_AGE_S):  # left by a process killed mid-save
        tmp.unlink(missing_ok=True)
    with _cache_writes_through_io():
        metrics = torch_fidelity.calculate_metrics(
            input1=Images(samples_uint8, rgb=inception), input2=Images(ref, rgb=inception), input2_cache_name=key,
            cache=True, cache_root=str(cache_root), feature_extractor=extractor, **layers, **which,
            feature_extractor_weights_path=str(weights) if weights else None, batch_size=batch_size,
            cuda=torch.cuda.is_available(), verbose=progress, save_cpu_ram=True)
    return metrics, {"reference": f"{dataset}:{split}:{len(ref)}", "reference_key": key, "reference_cached": cached}


def _reference(dataset, split, data_root, reference_n):
    ref = load(dataset, split, data_root)[0]
    return ref[:reference_n] if reference_n else ref


def fid(samples_uint8, *, dataset: str, extractor: str, cache_root, split: str = "train", data_root=None,
        reference_n: int | None = None, weights_path=None, batch_size: int = 256, progress: bool = False) -> dict:
    """FID (Heusel et al. 2017) and KID (Binkowski et al. 2018: unbiased MMD^2 with a cubic polynomial
    kernel, mean and std over 100 subsets of n // 2 generated and as many reference images) between
    generated uint8 images (N, C, H, W) and `dataset`'s `split` (its first `reference_n` images, or all),
    from the same features. KID is unbiased at the 1-2k samples a CPU can afford, where FID is biased
    upward. Returns fid, kid, kid_std, extractor, n, reference, reference_key and reference_cached."""
    ref = _reference(dataset, split, data_root, reference_n)
    m, where = _metrics(samples_uint8, ref, dataset=dataset, split=split, extractor=extractor, cache_root=cache_root,
                        weights_path=weights_path, batch_size=batch_size, progress=progress, fid=True, kid=True,
                        kid_subsets=KID_SUBSETS, kid_subset_size=min(kid_subset_size(len(samples_uint8)), len(ref)))
    return {"fid": float(m["frechet_inception_distance"]), "kid": float(m["kernel_inception_distance_mean"]),
            "kid_std": float(m["kernel_inception_distance_std"]), "extractor": extractor, "n": len(samples_uint8),
            **where}


def prc(samples_uint8, *, dataset: str, extractor: str, cache_root, split: str = "train", data_root=None,
        reference_n: int | None = None, weights_path=None, batch_size: int = 256, progress: bool = False) -> dict:
    """Improved precision and recall (Kynkaenniemi et al. 2019, Eqs. 1-3): the share of generated images
    inside the k-NN balls (k = 3) of the real ones, and of real images inside those of the generated
    ones, in the features FID uses. Both sides hold the same count (`prc_count`): the first images of
    the samples and of the reference. Returns precision, recall, extractor, n, reference, reference_key
    and reference_cached."""
    ref = _reference(dataset, split, data_root, reference_n)
    k = prc_count(len(samples_uint8), len(ref))
    m, where = _metrics(samples_uint8[:k], ref[:k], dataset=dataset, split=split, extractor=extractor,
                        cache_root=cache_root, weights_path=weights_path, batch_size=batch_size, progress=progress,
                        prc=True, prc_neighborhood=PRC_NEIGHBORHOOD)
    return {"precision": float(m["precision"]), "recall": float(m["recall"]), "extractor": extractor, "n": k, **where}
