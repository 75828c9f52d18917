"""Run ids: every field of the first run store is hashed as it was, but train_steps and epochs (where training
stops: one run serves every train_steps); a field added since is hashed only when it differs from its default,
so adding a field renames no run. The committed results were written under the legacy rule (train_steps
hashed), which `legacy_run_id` keeps and the migration moves from."""
import csv
from dataclasses import fields, replace
from pathlib import Path

import pytest

from ablations.run.config import ALWAYS_HASHED, TRAIN_FIELDS, TrainConfig
from ablations.grid.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
NEW = {k: f.default for k, f in TRAIN_FIELDS.items() if k not in ALWAYS_HASHED}  # fields added after b90d786
# computed at b90d786, before any field was added (the smoke scale's ids have changed since: it sets groups = 4)
PINNED = {("sampler", "cpu"): ["e352fc776d", "2dce979507", "d8d23806bd"],
          ("schedule", "cpu"): ["f108fe52ff", "7795afb246", "e8bddc3fb7", "1d8b9790f1", "3cbdfc3beb", "a0b7414e02"]}


# the same configs under the current rule (computed when train_steps left the hash)
CURRENT = {("sampler", "cpu"): ["8fad2882ed"],
           ("schedule", "cpu"): ["11e478b788"]}
# the specs' runs as they stand, in grid order: the curve grid's (issue 25), as its runs root holds them
AS_SPECIFIED = {("prediction", "curve"): ["fa01109050", "2c84c50a29", "ec4eada6aa", "3dc90e62b2", "e68b470fc4",
                                          "f0241033c5", "ca471022e3", "c54bd8e756", "696d07bade"],
                ("norm", "curve"): ["fa01109050", "2c84c50a29", "ec4eada6aa", "f4a1aad6ad", "5054d08e16", "179648dce5"],
                ("schedule", "curve"): ["fa01109050", "2c84c50a29", "ec4eada6aa", "87a06da578", "7361d0ce2e", "2f81bcc5b0"],
                ("loss", "curve"): ["fa01109050", "2c84c50a29", "ec4eada6aa", "7200fb9534", "72271e8888", "7be5779392"],
                ("sampler", "cpu"): ["8fad2882ed", "2ed2018459", "26050e6c79"],
                ("demo", None): ["22a66eb677", "43283aae18", "e52f73b62d"]}


def at_defaults(cfg):
    return replace(cfg, **NEW).legacy_run_id()


def test_the_default_config_keeps_its_id():
    assert TrainConfig().legacy_run_id() == "bc6c92a43b"
    assert TrainConfig(seed=3, norm="batch").legacy_run_id() == "65b73a2ba0"
    assert TrainConfig().run_id() == "5455bddd66"


@pytest.mark.parametrize("stem, scale", list(CURRENT))
def test_current_ids_are_pinned(stem, scale):
    runs = load_spec(ROOT / "ablations" / f"{stem}.toml", scale).runs
    ids = list(dict.fromkeys(replace(r.config, **NEW).run_id() for r in runs))
    assert ids[:len(CURRENT[(stem, scale)])] == CURRENT[(stem, scale)]


@pytest.mark.parametrize("stem, scale", list(AS_SPECIFIED))
def test_the_curve_grids_ids_are_pinned(stem, scale):
    runs = load_spec(ROOT / "ablations" / f"{stem}.toml", scale).runs
    ids = list(dict.fromkeys(r.run_id for r in runs))
    assert ids[:len(AS_SPECIFIED[(stem, scale)])] == AS_SPECIFIED[(stem, scale)]


@pytest.mark.parametrize("stem, scale", list(PINNED))
def test_pinned_ids_are_unchanged_with_new_fields_at_their_defaults(stem, scale):
    runs = load_spec(ROOT / "ablations" / f"{stem}.toml", scale).runs
    assert list(dict.fromkeys(at_defaults(r.config) for r in runs)) == PINNED[(stem, scale)]


SCALED = [p.parent for p in sorted((ROOT / "results").glob("*-*/rows.csv"))]  # results/<spec>-<scale>/


@pytest.mark.parametrize("folder", SCALED, ids=lambda p: p.name)
def test_committed_results_resolve_from_their_specs(folder):
    """Each committed rows.csv's run ids are its spec's cpu runs with every new field at its default, under the
    legacy rule (written before train_steps left the hash) or the current one (rerun since), or, for a folder
    made since (weighting-cpu, whose axis is a new field), the spec's runs as they stand."""
    with open(folder / "rows.csv", newline="") as f:
        committed = {r["run_id"] for r in csv.DictReader(f)}
    stem, scale = folder.name.rsplit("-", 1)
    spec = load_spec(ROOT / "ablations" / f"{stem}.toml", scale)
    legacy, current = ({getattr(replace(r.config, **NEW), rule)() for r in spec.runs}
                       for rule in ("legacy_run_id", "run_id"))
    assert committed in (legacy, current, {r.run_id for r in spec.runs})  # before the rule changed, after, or now


def test_a_new_field_at_its_default_changes_no_id_and_a_set_one_does():
    assert NEW, "no field was added since b90d786"
    base = TrainConfig(T=100, seed=2)
    others = {"conditioning": "scale_shift", "ema_warmup": True, "bn_stats_batches": 4}
    for name, default in NEW.items():
        assert replace(base, **{name: default}).run_id() == base.run_id()
        if name in others:
            assert replace(base, **{name: others[name]}).run_id() != base.run_id()
    assert replace(base, **others).run_id() != replace(base, conditioning="scale_shift").run_id()


def test_always_hashed_are_exactly_the_first_fields():
    """A field added since must not join ALWAYS_HASHED (that would rename every run); none may leave it."""
    names = [f.name for f in fields(TrainConfig)]
    assert ALWAYS_HASHED <= set(names)
    assert len(ALWAYS_HASHED) == 31
