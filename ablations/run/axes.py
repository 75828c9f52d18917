"""The registry of axes: every named choice of a run or of a sampler setting, once.

An axis is its choices (the core registry dict its value is looked up in), the config field that holds
it (a `TrainConfig` field, or a `Setting` field for the sampler setting), and the core keywords it feeds; a
numeric axis (a config field without named choices) is the core keyword of the same name it feeds
(`PARAMETERS`). The spec's `CHOICES` (ablations/grid/checks.py) are built from it, `tests/test_axes.py` checks
the row schema's setting columns and the README's Vocabulary against it, and the training loop and the
evaluation pass a config's values to `make_schedule`, `UNet`, `loss_terms`, `denoiser`, `vb_from_denoised`,
`sample` and `nll_bpd` through `keywords` (not one hand-written keyword per field).

Adding a value to an axis is a function and an entry in its core registry; adding an axis is an entry
here, its config field, a test and a spec (README, "Adding an axis"; tests/test_recipes.py follows it).
"""
from typing import NamedTuple

import torch

from ablations.run.data import DATASETS
from core.diffusion import VARIANCES, denoiser
from core.losses import LOSSES, PARAMS, WEIGHTINGS, loss_terms, vb_from_denoised
from core.parameterizations import PREDICTIONS
from core.likelihood import nll_bpd
from core.samplers import SAMPLERS, sample
from core.schedules import SCHEDULES, SPACINGS, make_schedule
from core.unet import CONDITIONINGS, NORMS, UNet

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


class Axis(NamedTuple):
    choices: dict  # name -> implementation: the registry a value is looked up in
    field: str  # the TrainConfig (or Setting) field that holds the value
    feeds: tuple = ()  # (core callable, its keyword) the value is passed to
    params: dict | None = None  # value -> the config fields it reads, passed by their own names (PARAMS)


AXES = {
    "dataset": Axis(DATASETS, "dataset"),
    "schedule": Axis(SCHEDULES, "schedule", ((make_schedule, "name"),)),
    "prediction": Axis(PREDICTIONS, "prediction", ((loss_terms, "prediction"), (sample, "prediction"),
                                                   (nll_bpd, "prediction"), (denoiser, "prediction"))),
    "variance": Axis(VARIANCES, "variance", ((loss_terms, "variance"), (sample, "variance"), (nll_bpd, "variance"),
                                             (denoiser, "variance"), (vb_from_denoised, "variance"))),
    "loss": Axis(LOSSES, "loss", ((loss_terms, "loss"),)),
    "weighting": Axis(WEIGHTINGS, "weighting", ((loss_terms, "weighting"),), PARAMS),
    "norm": Axis(NORMS, "norm", ((UNet, "norm"),)),
    "conditioning": Axis(CONDITIONINGS, "conditioning", ((UNet, "conditioning"),)),
    "optimizer": Axis(OPTIMIZERS, "optimizer"),
    "sampler": Axis(SAMPLERS, "sampler"),  # a Setting field: evaluation passes the whole setting
    "spacing": Axis(SPACINGS, "spacing"),  # a Setting field
}
SETTING_AXES = ("sampler", "spacing")  # the axes of a sampler setting; the others are TrainConfig fields
# The axes every table holds, grid axis or not, in this order (`ablate collect`'s columns after the grid's axes;
# a finding's or note's cell may name them). Another axis is a column where a spec's grid varies it.
STANDARD = ("schedule", "prediction", "loss", "variance", "norm")

# The config fields without named choices that feed a core keyword of the same name.
PARAMETERS = {
    make_schedule: ("T", "zero_terminal_snr"),
    loss_terms: ("vlb_weight",),
    UNet: ("model_channels", "mults", "res_blocks", "attention", "heads", "dropout", "groups"),
}


def keywords(cfg, fn) -> dict:
    """The keyword arguments of core callable `fn` that `cfg`'s axes and parameters give, e.g.
    keywords(cfg, make_schedule) = {"name": cfg.schedule, "T": cfg.T, "zero_terminal_snr": ...}. An axis
    with `params` also passes the fields its value reads (weighting "p2": p2_gamma, p2_k)."""
    out = {}
    for axis in AXES.values():
        for target, keyword in axis.feeds:
            if target is fn:
                value = getattr(cfg, axis.field)
                out[keyword] = value
                out.update({p: getattr(cfg, p) for p in (axis.params or {}).get(value, ())})
    out.update({p: getattr(cfg, p) for p in PARAMETERS.get(fn, ())})
    return out
