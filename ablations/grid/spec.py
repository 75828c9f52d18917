"""Ablation specs: TOML -> validated runs and eval settings. Everything is checked before anything runs.

A spec holds `name`, optional `description`, `seeds`, a `base` run config, an optional `grid` of axes
to cross, an `eval` block with `[[eval.setting]]` tables (`sampler`, `steps`, `eta`, `clip_x0`; each
a value or a list), an optional `default_scale`, and optional `scale.<name>` tables.

Scales (smoke, cpu, paper) are defined once in `ablations/scales.toml`. A spec run at a scale takes,
field by field, the last of: the config defaults, the spec's `base`/`eval`/`seeds`, the shared scale,
the spec's own `scale.<name>` table (which may override anything). A grid axis is a list of values of
the config field it names, or a list of tables that set several fields together
(e.g. `loss = [{loss = "simple", ...}, ...]`).

Overrides (`ablate run SPEC --set base.lr=1e-3`) are `key=value` pairs, the value a TOML value (a bare
word is a string). `base.*`, `eval.*` and `seeds` form the topmost layer (above the spec's own scale
table); any other key (`scale.cpu.base.batch`, `grid.lr`, `name`) replaces that key of the file's
table. Either way each is validated by the same code as the key in the file, and an error names the
override.

The eval block is checked in ablations/grid/settings.py, the checks every part shares are
ablations/grid/checks.py.
"""
import functools
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import tomllib
import torch

from ablations.grid import findings
from ablations.grid.checks import SpecError, check_value, errors, maker, rule, typed
from ablations.run.axes import STANDARD
from ablations.run.tables import known
from ablations.run.config import EVAL_FIELDS, TRAIN_FIELDS, EvalConfig, TrainConfig
from ablations.grid.settings import check_tables, eval_config
from ablations.run.shapes import SHAPES
from ablations.run.model import ARCHITECTURE, architecture, build_model
from core.losses import PARAMS, check_variance, check_weighting
from core.schedules import check_prediction, make_schedule
from core.unet import feature_sides

__all__ = ["SpecError", "Run", "Spec", "load_spec", "load_scales", "parse_override"]

SCALES = Path(__file__).resolve().parent.parent / "scales.toml"
TOP_KEYS = {"name", "description", "seeds", "base", "grid", "eval", "scale", "default_scale", *findings.KEYS}
SCALE_KEYS = {"base", "eval", "seeds"}
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
NAME_PART = re.compile(r"[A-Za-z0-9_-]+")  # one part of an override's dotted key
BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_.+-]*")  # an override value taken as a string


@dataclass(frozen=True)
class Run:
    config: TrainConfig
    axes: dict  # grid axis -> value label

    @functools.cached_property
    def run_id(self) -> str:
        return self.config.run_id()


@dataclass(frozen=True)
class Spec:
    name: str  # "<name>" or "<name>-<scale>": the results folder
    path: Path
    scale: str | None
    axes: tuple  # grid axes; empty when the spec compares eval settings on one config
    runs: tuple
    eval: EvalConfig
    overrides: tuple = ()  # the --set pairs, as given ("base.lr=1e-3")
    findings: dict | None = None  # its published findings and notes (ablations/grid/findings.py), as collected


def parse_override(text: str) -> tuple[list[str], object]:
    """`base.lr=1e-3` -> (["base", "lr"], 0.001): the value parsed as a TOML value, a bare word as a
    string."""
    k, eq, v = text.partition("=")
    parts = k.strip().split(".")
    if not eq or not all(NAME_PART.fullmatch(p) for p in parts):
        raise SpecError(f"--set {text}: expected KEY=VALUE with a dotted key, e.g. base.lr=1e-3 or "
                        "scale.cpu.base.batch=64")
    try:
        return parts, tomllib.loads(f"v = {v.strip()}")["v"]
    except tomllib.TOMLDecodeError as e:
        if BARE.fullmatch(v.strip()):
            return parts, v.strip()
        raise SpecError(f"--set {text}: value {v.strip()!r} is not a TOML value ({e}); valid: a number, "
                        'true/false, a "string", a [list], an {inline = "table"} or a bare word') from None


def _apply(raw, overrides, path) -> tuple[dict, object, object]:
    """Split the overrides: `base.*`, `eval.*` and `seeds` into a top layer table; the rest set into
    the file's table `raw` (changed in place). Returns (top layer, its error factory, the file's)."""
    top, seen = {}, {}
    for text in overrides:  # one key, one value: a key given twice is an error that names both
        k = text.split("=", 1)[0].strip()
        if k in seen:
            raise SpecError(f"{path}: --set {seen[k]} and --set {text}: key '{k}' is given twice; give it once")
        seen[k] = text
    ours = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] in SCALE_KEYS]
    err = errors(path, [o for o in overrides if o not in ours])
    for text in overrides:
        parts, value = parse_override(text)
        table = top if parts[0] in SCALE_KEYS else raw
        for i, p in enumerate(parts[:-1]):
            table = table.setdefault(p, {})
            if not isinstance(table, dict):
                raise err(".".join(parts[:i + 1]), f"is {type(table).__name__}, not a table, so it has no key "
                                                   f"{parts[i + 1]!r}")
        table[parts[-1]] = value
    return top, errors(path, ours), err


def _read(path) -> dict:
    path = Path(path)
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8-sig"))  # a leading byte-order mark is allowed
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except OSError as e:  # a path under a file, a symlink loop, a folder, no permission
        raise SpecError(f"{path}: cannot read the spec file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text (byte {e.start}); a spec is a TOML text file") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML: {e}") from None


def load_scales(path=SCALES) -> dict:
    """{scale: {"base": {...}, "eval": {...}, "seeds": [...]}} from the shared scale file, validated."""
    raw, err = _read(path), errors(path)
    out = {}
    for scale, table in raw.items():
        typed(table, dict, scale, err)
        known(table, SCALE_KEYS, f"{scale}.", err)
        out[scale] = _scale_block(table, scale, path, err)
    return out


def _scale_block(table, prefix, path, err) -> dict:
    """A validated {base, eval, seeds} block; each value remembers the file and key it came from."""
    p = f"{prefix}." if prefix else ""
    base = _section(table.get("base", {}), f"{p}base", err)
    ev = typed(table.get("eval", {}), dict, f"{p}eval", err)
    known(ev, set(EVAL_FIELDS) | {"setting"}, f"{p}eval.", err)
    block = {"base": {k: (v, path, f"{p}base.{k}") for k, v in base.items()},
             "eval": {k: (v, path, f"{p}eval.{k}") for k, v in ev.items()}}
    if "seeds" in table:
        block["seeds"] = (_seeds(table["seeds"], f"{p}seeds", err), path, f"{p}seeds")
    return block


def load_spec(path, scale: str | None = None, scales_path=SCALES, overrides=()) -> Spec:
    """The validated spec at `path`, run at `scale` (or its default_scale), with `overrides` (--set)."""
    path, overrides = Path(path), tuple(overrides)
    raw = _read(path)
    top, top_err, err = _apply(raw, overrides, path)
    known(raw, TOP_KEYS, "", err)
    name = _name(raw, err)
    own = typed(raw.get("scale", {}), dict, "scale", err)
    shared = load_scales(scales_path) if scales_path else {}
    scale = _pick_scale(raw, own, shared, scale, overrides, err)
    layers = _layers(raw, own, shared, scale, top, top_err, err)
    base = {k: v for layer in layers for k, v in layer["base"].items()}
    evals = {k: v for layer in layers for k, v in layer["eval"].items()}
    seeds = next((layer["seeds"] for layer in reversed(layers) if "seeds" in layer), ([0], err, "seeds"))
    grid = typed(raw.get("grid", {}), dict, "grid", err)
    runs = _runs(grid, base, seeds, top, top_err, err)
    ev = eval_config(evals, runs)
    check_every_table(raw, own, shared, ev, err)
    return Spec(name if scale is None else f"{name}-{scale}", path, scale, tuple(grid), tuple(runs), ev, overrides,
                findings.parse(raw, err, (*grid, *STANDARD)))


def check_every_table(raw, own, shared, ev, err):
    """Every table of the spec and of every scale, also those the scale run does not use or replaces: each
    value checked as a value (type, choices, range), each [[eval.setting]] table as a table (keys, types,
    samplers, spacings, eta). A typo is an error at any scale. What the scale run uses is also checked
    against its runs (`eval_config`)."""
    blocks = [_scale_block({k: raw[k] for k in SCALE_KEYS if k in raw}, "", err, err)]
    for name, table in own.items():
        typed(table, dict, f"scale.{name}", err)
        known(table, SCALE_KEYS, f"scale.{name}.", err)
        blocks.append(_scale_block(table, f"scale.{name}", err, err))
    for block in [*blocks, *shared.values()]:
        for field, (value, path, key) in block["eval"].items():
            if field == "setting":
                check_tables(value, key, maker(path), ev)
            else:
                check_value(key, field, value, EVAL_FIELDS[field].default, maker(path))


def _name(raw, err) -> str:
    name = typed(raw.get("name"), str, "name", err)
    if not NAME.fullmatch(name):
        raise err("name", f"{name!r} is not a plain name: use letters, digits, '-', '_' and '.', "
                          "not starting with '.', with no path separators")
    return name


def _pick_scale(raw, own, shared, scale, overrides, err) -> str | None:
    """The scale run: the one asked for, else the spec's default_scale; one of the shared or its own."""
    scale = raw.get("default_scale") if scale is None else scale
    valid = [*shared, *(s for s in own if s not in shared)]
    if scale is not None and scale not in valid:
        key = "default_scale" if scale == raw.get("default_scale") else "scale"
        raise err(key, f"unknown scale {scale!r}; valid choices: {', '.join(map(repr, valid)) or 'none'}")
    for text in overrides:  # a scale's table that is not run would change nothing
        parts = text.split("=", 1)[0].strip().split(".")
        if parts[0] == "scale" and len(parts) > 1 and parts[1] != scale:
            raise err(".".join(parts[:2]), f"scale {parts[1]!r} is not the scale run ({scale!r}), so this "
                                           f"override would change nothing; valid: scale.{scale}.<key> or base.<key>")
    return scale


def _layers(raw, own, shared, scale, top, top_err, err) -> list:
    """The {base, eval, seeds} blocks, lowest precedence first: the spec, the shared scale, the spec's own
    table for that scale, the --set overrides."""
    layers = [_scale_block({k: raw[k] for k in SCALE_KEYS if k in raw}, "", err, err)]
    if scale in shared:
        layers.append(shared[scale])
    if scale in own:
        typed(own[scale], dict, f"scale.{scale}", err)
        known(own[scale], SCALE_KEYS, f"scale.{scale}.", err)
        layers.append(_scale_block(own[scale], f"scale.{scale}", err, err))
    if top:
        layers.append(_scale_block(top, "", top_err, top_err))
    return layers


def _runs(grid, base, seeds, top, top_err, err) -> list[Run]:
    """The grid's cross product over `base`, once per seed; two points that resolve to one run are an error."""
    points = [_axis(axis, values, err) for axis, values in grid.items()]
    for k in top.get("base", {}):  # the grid sets its fields over base: such an override would change nothing
        axis = next((a for a, p in zip(grid, points) if any(k in sets for _, sets in p)), None)
        if axis is not None:
            raise top_err(f"base.{k}", f"grid axis {axis!r} sets {k!r} in every run, so this override would "
                                       f"change nothing; valid: --set grid.{axis}=[...] to change the axis")
    runs, seen = [], {}
    for combo in itertools.product(*points):
        values, labels = dict(base), {}
        for axis, (label, sets) in zip(grid, combo):
            values.update(sets)
            labels[axis] = label
        for seed in seeds[0]:
            run = Run(_resolve({**values, "seed": (seed, *seeds[1:])}), labels)
            if run.run_id in seen:
                raise err("grid", f"duplicate runs: {seen[run.run_id]} and {labels} (seed {seed}) resolve to the "
                                  f"same config (run {run.run_id})")
            seen[run.run_id] = f"{labels} (seed {seed})"
            runs.append(run)
    return runs


def _seeds(seeds, key, err):
    typed(seeds, list, key, err)
    if not seeds or len(set(seeds)) != len(seeds) or not all(type(s) is int and s >= 0 for s in seeds):
        raise err(key, f"must be a non-empty list of distinct integers >= 0, got {seeds!r}")
    return seeds


def _section(table, prefix, err):
    typed(table, dict, prefix, err)
    if "seed" in table:
        raise err(f"{prefix}.seed", "set seeds with the top-level `seeds` list (or a scale's), not per config")
    known(table, TRAIN_FIELDS, prefix + ".", err)
    return {k: check_value(f"{prefix}.{k}", k, v, TRAIN_FIELDS[k].default, err) for k, v in table.items()}


def _axis(axis, values, err):
    """[(label, {field: (value, file, key)})] for one grid axis."""
    key = f"grid.{axis}"
    if axis == "seed":
        raise err(key, "use the top-level `seeds` list instead of a seed axis")
    typed(values, list, key, err)
    if not values:
        raise err(key, "empty grid axis; give at least one value")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, dict):
            sets = _section(v, f"{key}[{i}]", err)
            label = str(sets.get(axis, "+".join(f"{k}={x}" for k, x in sets.items())))
        else:
            if axis not in TRAIN_FIELDS:
                raise err(key, f"unknown key {axis!r}; valid keys: {', '.join(sorted(TRAIN_FIELDS))} "
                               "(or give a list of tables to name an axis that sets several fields)")
            sets = {axis: check_value(f"{key}[{i}]", axis, v, TRAIN_FIELDS[axis].default, err)}
            label = str(sets[axis])
        out.append((label, {k: (x, err, f"{key}[{i}].{k}" if isinstance(v, dict) else f"{key}[{i}]")
                            for k, x in sets.items()}))
    return out


def _resolve(values) -> TrainConfig:
    """A TrainConfig from {field: (value, file or error factory, key)}; cross-field errors name the key
    that set the offending field, in the file that set it."""
    cfg = TrainConfig(**{k: v[0] for k, v in values.items()})

    def err(field, msg):
        _, where, key = values.get(field, (None, None, None))
        if where is None:
            return SpecError(f"default of '{field}': {msg}")
        return maker(where)(key, msg)

    rule(err, "variance", check_variance, cfg.variance, cfg.loss)
    rule(err, "weighting", check_weighting, cfg.weighting, cfg.loss)
    for name, params in PARAMS.items():
        for p in params:
            if p not in PARAMS[cfg.weighting] and getattr(cfg, p) != TRAIN_FIELDS[p].default:
                raise err(p, f"{getattr(cfg, p)!r} is read only by weighting {name!r}, but the run's weighting is "
                             f"{cfg.weighting!r}: it would rename the run and change nothing; remove it or set "
                             f"weighting = {name!r}")
    sides = feature_sides(SHAPES[cfg.dataset][1], cfg.mults)
    if not set(cfg.attention) <= set(sides):
        raise err("attention", f"{list(cfg.attention)} names feature-map sides the model does not have; valid "
                               f"sides for {cfg.dataset} with mults {list(cfg.mults)}: {sides}")
    rule(err, "zero_terminal_snr" if "zero_terminal_snr" in values else "prediction", check_prediction,
          cfg.zero_terminal_snr, cfg.prediction)
    problem = _schedule_error(cfg.schedule, cfg.T, cfg.zero_terminal_snr)
    if problem:
        raise err("T" if "T" in values else "schedule", problem)
    problem = _model_error(architecture(cfg))
    if problem:
        raise err("heads" if "heads" in problem else "model_channels", problem)
    return cfg


@functools.cache  # a grid of thousands of runs has a few schedules
def _schedule_error(schedule, T, zero_terminal_snr) -> str | None:
    try:
        make_schedule(schedule, T, zero_terminal_snr=zero_terminal_snr)
    except ValueError as e:
        return str(e)
    return None


@functools.cache  # ... and a few architectures: each is built once per process, on the meta device
def _model_error(arch: tuple) -> str | None:
    try:
        with torch.device("meta"):
            build_model(TrainConfig(**dict(zip(ARCHITECTURE, arch))))
    except ValueError as e:
        return str(e)
    return None
