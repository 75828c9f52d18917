"""Run configuration: plain values with documented defaults. A spec sets any of them."""
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import NamedTuple


class Setting(NamedTuple):
    """One sampler setting: an `[[eval.setting]]` entry after its lists are expanded."""

    sampler: str  # a name in core.samplers.SAMPLERS (the registry: ablations/run/axes.py)
    steps: int  # sampling steps S
    eta: float  # the eta of a sampler in core.samplers.TAKES_ETA (DDIM's); 0 for the others
    clip_x0: bool  # clip the predicted x0 to [-1, 1]
    spacing: str = "leading"  # a name in core.schedules.SPACINGS: which S of the T timesteps are kept


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model. Its hash is the run id."""

    dataset: str = "fashion_mnist"  # "fashion_mnist" | "cifar10"
    schedule: str = "linear"  # "linear" | "cosine"
    zero_terminal_snr: bool = False  # rescale alpha_bar so alpha_bar[T-1] = 0 (Lin et al. 2023, Alg. 1)
    T: int = 1000  # diffusion steps
    prediction: str = "eps"  # "eps" | "x0" | "v"
    variance: str = "fixed_small"  # "fixed_small" | "fixed_large" | "learned_range"
    loss: str = "simple"  # "simple" | "hybrid" | "vlb"
    vlb_weight: float = 0.001  # lambda in hybrid = mse + lambda * T * vb
    weighting: str = "uniform"  # "uniform" | "min_snr" | "p2": the mse term's weight over t (core/losses.py)
    snr_gamma: float = 5.0  # min_snr's gamma: the x0 MSE weighted by min(SNR, gamma) (Hang et al. 2023)
    p2_gamma: float = 1.0  # p2's gamma: the eps MSE weighted by 1 / (k + SNR)^gamma (Choi et al. 2022)
    p2_k: float = 1.0  # p2's k
    norm: str = "group"  # "group" | "batch" | "layer" | "instance"
    conditioning: str = "add"  # "add" | "scale_shift": how a ResBlock takes the time embedding (core/unet.py)
    model_channels: int = 32  # U-Net width of the first level
    mults: tuple = (1, 2, 2)  # channel multiplier per level
    res_blocks: int = 2  # residual blocks per level
    attention: tuple = ()  # resolutions (feature-map sides) with self-attention
    heads: int = 1  # attention heads
    dropout: float = 0.0
    groups: int = 32  # GroupNorm groups (gcd with the channel count is used)
    optimizer: str = "adamw"  # "adam" | "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int = 0  # linear lr warm-up steps
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    ema_decay: float = 0.999  # EMA decay of weights (buffers are copied)
    ema_warmup: bool = False  # decay_t = min(ema_decay, (1 + t) / (10 + t)) at the t-th update (training.py)
    bn_stats_batches: int = 0  # > 0: BatchNorm statistics of the EMA weights from this many fixed batches
    batch: int = 128
    flip: bool = False  # random horizontal flips of training images (Ho et al. 2020, App. B)
    train_steps: int = 1000  # optimizer steps (ignored when epochs > 0)
    epochs: int = 0  # if > 0: train_steps = epochs * (train images // batch)
    checkpoint_every: int = 500  # steps between checkpoints (plus one at the end)
    bf16: bool = False  # bf16 autocast (GPU runs, or CPUs with AVX512-BF16/AMX); changes the numbers
    compile: bool = False  # torch.compile (inductor) the training forward, and the sampling and NLL forward
    channels_last: bool = False  # NHWC memory format for the model and its inputs
    seed: int = 0

    def run_id(self) -> str:
        """A short stable hash of the resolved config: every field of ALWAYS_HASHED but the ones that
        only say where training stops (UNTIL), and each later field only where it differs from its
        default, so adding a field renames no run. Nothing in training depends on where it stops (the
        LR warm-up ends at a fixed step, then the LR is constant; the EMA warm-up counts updates), so
        a run trained to 2,800 steps is, for its first 700, the 700-step run: one run serves both."""
        return _hash(self, ALWAYS_HASHED - UNTIL)

    def legacy_run_id(self) -> str:
        """The id before runs were shared across train_steps (train_steps and epochs hashed): the name
        of run folders written before, which `ablations.store.migrate` moves to run_id()."""
        return _hash(self, ALWAYS_HASHED)

    @classmethod
    def from_record(cls, record: dict) -> "TrainConfig":
        """The config a config.json record's `train` table holds (ablations/store/layout.py); JSON's lists
        are the tuples they were. An unknown field is a TypeError."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record["train"].items()})


def _hash(cfg, always) -> str:
    values = {f.name: getattr(cfg, f.name) for f in fields(cfg)}  # asdict's JSON, without its deep copy
    values = {k: v for k, v in values.items()
              if k in always or (k not in ALWAYS_HASHED and v != TRAIN_FIELDS[k].default)}
    blob = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


# The fields of the run store as first committed (b90d786): always in the hash, as then. A field added
# since is hashed only when it is not at its default; do not add a new field here.
ALWAYS_HASHED = frozenset((
    "dataset", "schedule", "zero_terminal_snr", "T", "prediction", "variance", "loss", "vlb_weight", "norm",
    "model_channels", "mults", "res_blocks", "attention", "heads", "dropout", "groups", "optimizer", "lr",
    "weight_decay", "warmup", "grad_clip", "ema_decay", "batch", "flip", "train_steps", "epochs",
    "checkpoint_every", "bf16", "compile", "channels_last", "seed"))
UNTIL = frozenset(("train_steps", "epochs"))  # where training stops: not part of the run's identity


@dataclass(frozen=True)
class EvalConfig:
    """How every trained model of a spec is evaluated, without retraining."""

    settings: tuple = field(default_factory=lambda: (Setting("ddim", 50, 0.0, True),))  # [[eval.setting]]
    fid_samples: int = 1000  # generated images per sampler setting
    fid_extractor: str = "fmnist-classifier"  # "fmnist-classifier" | "fmnist-classifier-seed1" | "inception-v3-compat"
    extra_extractors: tuple = ()  # more extractors scoring the same samples (fid, kid and PRC rows each)
    fid_reference: str = "train"  # dataset split the reference statistics come from
    fid_reference_n: int = 0  # reference images; 0 = the whole split
    inception_weights: str = ""  # path to torch-fidelity's Inception weights, for offline nodes
    clip_x0: bool = True  # clip predicted x0 to [-1, 1] while sampling
    sample_batch: int = 500  # images per sampling batch
    sample_seed: int = 0  # seed of x_T and sampler noise, per image; shared by all settings (paired)
    nll_images: int = 256  # test images for bits/dim
    nll_strata: int = 16  # K: one timestep per stratum, per image; 0 = exact sum over all T
    grid_images: int = 64  # images in each sample-grid PNG
    solver_images: int = 0  # solver_rms over the first this many images of each deterministic setting; 0: none
    denoise_t: tuple = ()  # timesteps t whose x0_rms rows score the x0 estimate from x_t (nll_images test images)
    eval_at: tuple = ()  # training steps whose checkpoints are scored (kept whatever the pruning); the last always is
    last_only: tuple = ()  # settings scored at the last checkpoint only (`curve = false` in [[eval.setting]])


NOT_SETTINGS = ("nll", "denoise", "cost")  # the evaluations of a checkpoint that are not a sampler setting's


def total_steps(cfg: TrainConfig, n_train: int) -> int:
    """The optimizer steps a run trains on `n_train` images: epochs * (n_train // batch), or train_steps."""
    return cfg.epochs * (n_train // cfg.batch) if cfg.epochs > 0 else cfg.train_steps


def eval_steps(ev: EvalConfig, total: int) -> tuple:
    """The checkpoints a spec scores, ascending: eval_at and the last training step."""
    return tuple(sorted({*ev.eval_at, total}))


def scored_at(ev: EvalConfig, total: int, step: int) -> tuple:
    """The settings scored at checkpoint `step`: all at the last, those not last_only before it."""
    return ev.settings if step == total else tuple(s for s in ev.settings if s not in ev.last_only)


TRAIN_FIELDS = {f.name: f for f in fields(TrainConfig)}
EVAL_FIELDS = {f.name: f for f in fields(EvalConfig) if f.name not in ("settings", "last_only")}
SETTING_KEYS = set(Setting._fields) | {"curve"}  # curve: scored at every checkpoint of eval_at (default), or last

# Valid values, checked (with the key as the user wrote it) before anything runs: field -> (test, text).
# The largest value of an integer field a run could reach (steps, channels, batch, images); any other integer
# field stops at checks.INT_MAX. Past them a value is a typo, and training would overflow or never start.
LIMITS = {"T": 100_000, "model_channels": 4096, "res_blocks": 64, "heads": 1024, "groups": 4096, "batch": 65_536,
          "train_steps": 100_000_000, "epochs": 1_000_000, "checkpoint_every": 100_000_000, "warmup": 100_000_000,
          "bn_stats_batches": 10_000, "mults": 64, "attention": 65_536, "fid_samples": 10_000_000,
          "fid_reference_n": 10_000_000, "sample_batch": 65_536, "nll_images": 10_000_000, "grid_images": 10_000,
          "solver_images": 10_000_000, "eval_at": 100_000_000, "denoise_t": 100_000}

RANGES = {
    "T": (lambda v: v >= 2, "an integer >= 2"),
    "vlb_weight": (lambda v: v >= 0, "a number >= 0"),
    "snr_gamma": (lambda v: v > 0, "a number > 0"),
    "p2_gamma": (lambda v: v >= 0, "a number >= 0 (0: uniform)"),
    "p2_k": (lambda v: v > 0, "a number > 0 (it bounds the weight where SNR -> 0)"),
    "model_channels": (lambda v: v >= 1, "an integer >= 1"),
    "mults": (lambda v: len(v) >= 1 and min(v) >= 1, "a non-empty list of integers >= 1"),
    "res_blocks": (lambda v: v >= 1, "an integer >= 1"),
    "attention": (lambda v: all(x >= 1 for x in v), "a list of feature-map sides >= 1"),
    "heads": (lambda v: v >= 1, "an integer >= 1"),
    "dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "groups": (lambda v: v >= 1, "an integer >= 1"),
    "lr": (lambda v: v > 0, "a number > 0"),
    "weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "warmup": (lambda v: v >= 0, "an integer >= 0"),
    "grad_clip": (lambda v: v >= 0, "a number >= 0 (0 disables)"),
    "ema_decay": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "bn_stats_batches": (lambda v: v >= 0, "an integer >= 0 (0: copy the live model's statistics)"),
    "batch": (lambda v: v >= 1, "an integer >= 1"),
    "train_steps": (lambda v: v >= 1, "an integer >= 1"),
    "epochs": (lambda v: v >= 0, "an integer >= 0 (0: use train_steps)"),
    "checkpoint_every": (lambda v: v >= 1, "an integer >= 1"),
    "fid_samples": (lambda v: v >= 2, "an integer >= 2"),
    "fid_reference": (lambda v: v in ("train", "test"), "'train' or 'test'"),
    "fid_reference_n": (lambda v: v >= 0, "an integer >= 0 (0: the whole split)"),
    "sample_batch": (lambda v: v >= 1, "an integer >= 1"),
    "sample_seed": (lambda v: v >= 0, "an integer >= 0"),
    "nll_images": (lambda v: v >= 1, "an integer >= 1"),
    "nll_strata": (lambda v: v >= 0, "an integer >= 0 (0: exact, all T)"),
    "grid_images": (lambda v: v >= 1, "an integer >= 1"),
    "solver_images": (lambda v: v >= 0, "an integer >= 0 (0: no solver_rms rows)"),
}
