"""Ablation specs: TOML -> validated list of runs. Everything is checked before anything runs.

A spec holds `name`, optional `description`, `seeds`, a `base` run config, a `grid` of axes to cross,
an `eval` block of sampler settings (`[[eval.sampler]]` tables with `sampler`, `steps`, `eta`, each a
value or a list), and optional `scale.<name>` tables that override `base`, `eval` and `seeds`.
A grid axis is a list of values of the config field it names, or a list of tables that set several
fields together (e.g. `loss = [{loss = "simple", variance = "fixed_small"}, ...]`).
"""
import itertools
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ablations.config import EVAL_FIELDS, TRAIN_FIELDS, EvalConfig, TrainConfig
from core.data import DATASETS
from core.diffusion import LEARNED, VARIANCES
from core.losses import LOSSES
from core.parameterizations import PREDICTIONS
from core.registry import lookup
from core.samplers import SAMPLERS
from core.schedules import SCHEDULES, make_schedule
from core.training import OPTIMIZERS, build_model
from core.unet import NORMS

CHOICES = {"dataset": DATASETS, "schedule": SCHEDULES, "prediction": PREDICTIONS, "variance": VARIANCES,
           "loss": LOSSES, "norm": NORMS, "optimizer": OPTIMIZERS, "sampler": SAMPLERS}
AXES = ("schedule", "prediction", "loss", "variance", "norm")  # always reported in rows
TOP_KEYS = {"name", "description", "seeds", "base", "grid", "eval", "scale", "default_scale"}
SCALE_KEYS = {"base", "eval", "seeds"}
SAMPLER_KEYS = {"sampler", "steps", "eta"}


class SpecError(ValueError):
    """A malformed spec: names the file, the key, the bad value and the valid choices."""


@dataclass(frozen=True)
class Run:
    config: TrainConfig
    axes: dict  # grid axis -> value label

    @property
    def run_id(self) -> str:
        return self.config.run_id()


@dataclass(frozen=True)
class Spec:
    name: str  # "<name>" or "<name>-<scale>": the runs folder and results folder
    path: Path
    scale: str | None
    axes: tuple
    runs: tuple
    eval: EvalConfig


def load_spec(path, scale: str | None = None) -> Spec:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML: {e}") from None
    err = lambda key, msg: SpecError(f"{path}: key '{key}': {msg}")  # noqa: E731
    _known(raw, TOP_KEYS, "", err)
    name = _typed(raw.get("name"), str, "name", err)
    scales = raw.get("scale", {})
    _typed(scales, dict, "scale", err)
    scale = scale or raw.get("default_scale")
    if scales and scale is None:
        raise err("default_scale", f"spec has scales {sorted(scales)}; pick one with --scale")
    if scale is not None and scale not in scales:
        raise err("scale", f"unknown scale {scale!r}; valid choices: {', '.join(map(repr, scales)) or 'none'}")
    over = scales.get(scale, {}) if scale else {}
    _known(over, SCALE_KEYS, f"scale.{scale}.", err)

    base = {**_section(raw.get("base", {}), "base", err), **_section(over.get("base", {}), f"scale.{scale}.base", err)}
    seeds = over.get("seeds", raw.get("seeds", [base.get("seed", 0)]))
    _typed(seeds, list, "seeds", err)
    if not seeds or len(set(seeds)) != len(seeds) or not all(type(s) is int for s in seeds):
        raise err("seeds", f"must be a non-empty list of distinct integers, got {seeds!r}")
    grid = raw.get("grid", {})
    _typed(grid, dict, "grid", err)
    points = [_axis(axis, values, err) for axis, values in grid.items()]

    runs, seen = [], {}
    for combo in itertools.product(*points):
        values, labels = dict(base), {}
        for axis, (label, sets) in zip(grid, combo):
            values.update(sets)
            labels[axis] = label
        for seed in seeds:
            cfg = _resolve({**values, "seed": seed}, "grid" if grid else "base", err)
            run = Run(cfg, labels)
            if run.run_id in seen:
                raise err("grid", f"duplicate runs: {seen[run.run_id]} and {labels} (seed {seed}) resolve to the "
                                  f"same config (run {run.run_id})")
            seen[run.run_id] = f"{labels} (seed {seed})"
            runs.append(run)

    ev = _eval({**raw.get("eval", {}), **over.get("eval", {})}, err)
    for run in runs:
        for s in ev.samplers:
            if s["steps"] > run.config.T:
                raise err("eval.sampler.steps", f"steps {s['steps']} > T={run.config.T} of run {run.run_id}; "
                                                f"valid choices: 1..{run.config.T}")
    return Spec(name if scale is None else f"{name}-{scale}", path, scale, tuple(grid), tuple(runs), ev)


def _known(table, allowed, prefix, err):
    for key in table:
        if key not in allowed:
            raise err(prefix + key, f"unknown key {key!r}; valid keys: {', '.join(sorted(allowed))}")


def _typed(value, kind, key, err):
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if not ok:
        raise err(key, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _check_value(key, field_name, value, default, err):
    """Type-check one config value against its field's default, and check names against registries."""
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(type(v) is int for v in value):
            raise err(key, f"expected a list of integers, got {value!r}")
        return tuple(value)
    if isinstance(default, float) and type(value) is int:
        value = float(value)
    _typed(value, type(default), key, err)
    if field_name in CHOICES:
        try:
            lookup(CHOICES[field_name], value, field_name)
        except ValueError as e:
            raise err(key, str(e)) from None
    return value


def _section(table, prefix, err):
    _typed(table, dict, prefix, err)
    _known(table, TRAIN_FIELDS, prefix + ".", err)
    return {k: _check_value(f"{prefix}.{k}", k, v, TRAIN_FIELDS[k].default, err) for k, v in table.items()}


def _axis(axis, values, err):
    """[(label, {field: value})] for one grid axis."""
    key = f"grid.{axis}"
    if axis == "seed":
        raise err(key, "use the top-level `seeds` list instead of a seed axis")
    _typed(values, list, key, err)
    if not values:
        raise err(key, "empty grid axis; give at least one value")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, dict):
            sets = _section(v, f"{key}[{i}]", err)
            out.append((str(sets.get(axis, "+".join(f"{k}={x}" for k, x in sets.items()))), sets))
        else:
            if axis not in TRAIN_FIELDS:
                raise err(key, f"unknown key {axis!r}; valid keys: {', '.join(sorted(TRAIN_FIELDS))}")
            value = _check_value(f"{key}[{i}]", axis, v, TRAIN_FIELDS[axis].default, err)
            out.append((str(value), {axis: value}))
    return out


def _resolve(values, key, err) -> TrainConfig:
    cfg = TrainConfig(**values)
    if cfg.variance in LEARNED and cfg.loss == "simple":
        raise err(key, f"variance {cfg.variance!r} needs loss 'hybrid' or 'vlb', got loss 'simple'; "
                       "valid choices for that variance: 'hybrid', 'vlb'")
    for name in ("batch", "T", "res_blocks", "heads", "base", "checkpoint_every"):
        if getattr(cfg, name) < 1:
            raise err(f"{key}.{name}", f"must be >= 1, got {getattr(cfg, name)!r}")
    if cfg.steps < 1 and cfg.epochs < 1:
        raise err(f"{key}.steps", f"must be >= 1 (or set epochs), got {cfg.steps!r}")
    if not 0.0 <= cfg.ema < 1.0:
        raise err(f"{key}.ema", f"must lie in [0, 1), got {cfg.ema!r}")
    try:
        make_schedule(cfg.schedule, cfg.T)
        with torch.device("meta"):
            build_model(cfg)
    except ValueError as e:
        raise err(key, str(e)) from None
    return cfg


def _eval(table, err) -> EvalConfig:
    _typed(table, dict, "eval", err)
    _known(table, set(EVAL_FIELDS) | {"sampler"}, "eval.", err)
    values = {k: _check_value(f"eval.{k}", k, v, EVAL_FIELDS[k].default, err)
              for k, v in table.items() if k != "sampler"}
    from core.fidelity import EXTRACTORS
    if "fid_extractor" in values:
        try:
            lookup(EXTRACTORS, values["fid_extractor"], "fid_extractor")
        except ValueError as e:
            raise err("eval.fid_extractor", str(e)) from None
    settings = []
    for i, s in enumerate(table.get("sampler", [])):
        key = f"eval.sampler[{i}]"
        _typed(s, dict, key, err)
        _known(s, SAMPLER_KEYS, key + ".", err)
        name = _check_value(f"{key}.sampler", "sampler", s.get("sampler"), "", err)
        steps = s.get("steps", [50])
        etas = s.get("eta", [0.0])
        steps, etas = (steps if isinstance(steps, list) else [steps]), (etas if isinstance(etas, list) else [etas])
        for axis, vals, kind in (("steps", steps, int), ("eta", etas, float)):
            if not vals:
                raise err(f"{key}.{axis}", "empty list; give at least one value")
            for v in vals:
                _typed(float(v) if kind is float and type(v) is int else v, kind, f"{key}.{axis}", err)
        for st in steps:
            if st < 1:
                raise err(f"{key}.steps", f"steps must be >= 1, got {st}")
        for eta in etas:
            if not 0.0 <= eta <= 1.0 or (name == "ddpm" and eta != 0):
                raise err(f"{key}.eta", f"eta {eta!r} is invalid for sampler {name!r}; valid choices: "
                                        + ("0 (ddpm has no eta)" if name == "ddpm" else "a number in [0, 1]"))
        settings += [{"sampler": name, "steps": st, "eta": float(eta)} for st in steps for eta in etas]
    keys = [tuple(s.values()) for s in settings]
    if len(set(keys)) != len(keys):
        raise err("eval.sampler", f"duplicate sampler settings in {keys}")
    return replace(EvalConfig(**values), samplers=tuple(settings)) if settings else EvalConfig(**values)
