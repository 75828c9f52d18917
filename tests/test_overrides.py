"""`--set KEY=VALUE`: validated as the same key in the file, recorded in config.json and the results folder,
run ids from the resolved config."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ablations.commands.cli import main
from ablations.store.layout import run_folder
from ablations.running.ledger import config_id
from ablations.grid.spec import SpecError, load_spec, parse_override
from conftest import tiny_spec

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "ablations" / "demo.toml"


@pytest.mark.parametrize("text, value", [
    ("base.lr=1e-3", 1e-3), ("base.compile=true", True), ('base.schedule="cosine"', "cosine"),
    ("base.mults=[1, 2]", [1, 2]), ("base.schedule=cosine", "cosine"), ("eval.fid_samples=2000", 2000),
])
def test_values_parse_as_toml_and_bare_words_as_strings(text, value):
    parts, got = parse_override(text)
    assert parts == text.split("=")[0].split(".") and got == value and type(got) is type(value)


def test_an_override_gives_the_run_id_of_the_same_key_in_the_file(tmp_path):
    edited = tmp_path / "t.toml"
    edited.write_text(tiny_spec().replace("[base]\n", "[base]\nlr = 1e-3\n"))
    plain = tmp_path / "p.toml"
    plain.write_text(tiny_spec())
    by_file = load_spec(edited).runs[0]
    by_set = load_spec(plain, overrides=["base.lr=1e-3"]).runs[0]
    assert by_set.config == by_file.config and by_set.run_id == by_file.run_id
    assert by_set.run_id != load_spec(plain).runs[0].run_id


def test_base_overrides_win_over_the_scale_and_scale_keys_reach_the_scale_table():
    cpu = load_spec(DEMO, "cpu").runs[0].config
    assert cpu.lr != 1e-3  # the cpu scale sets lr, above the spec's base
    spec = load_spec(DEMO, "cpu", overrides=["base.lr=1e-3", "scale.cpu.base.batch=64", "eval.fid_samples=2000"])
    assert {(r.config.lr, r.config.batch) for r in spec.runs} == {(1e-3, 64)}
    assert spec.eval.fid_samples == 2000 and spec.overrides == ("base.lr=1e-3", "scale.cpu.base.batch=64",
                                                                "eval.fid_samples=2000")


def test_a_grid_axis_is_overridden_as_a_grid_key():
    spec = load_spec(ROOT / "ablations" / "norm.toml", "smoke", overrides=['grid.norm=["group"]'])
    assert {r.config.norm for r in spec.runs} == {"group"}


@pytest.mark.parametrize("text, words", [
    ("base.lr=-1", ["--set base.lr=-1", "key 'base.lr'", "-1.0", "a number > 0"]),
    ("base.schedule=cosin", ["--set base.schedule=cosin", "key 'base.schedule'", "'cosin'", "'linear', 'cosine'"]),
    ("base.lrr=1", ["--set base.lrr=1", "key 'base.lrr'", "unknown key 'lrr'", "valid keys"]),
    ('eval.fid_samples="many"', ["--set eval.fid_samples", "key 'eval.fid_samples'", "'many'", "expected int"]),
    ("scale.cpu.base.batch=0", ["--set scale.cpu.base.batch=0", "key 'scale.cpu.base.batch'", "0", "valid"]),
    ("scale.paper.base.batch=64", ["--set scale.paper.base.batch=64", "'paper'", "valid: scale.cpu."]),
    ("grid.norm=[\"nope\"]", ["--set grid.norm", "key 'grid.norm[0]'", "'nope'", "'group'"]),
    ("bogus.x=1", ["--set bogus.x=1", "key 'bogus'", "valid keys"]),
])
def test_a_bad_override_names_itself_the_file_the_key_the_value_and_the_choices(text, words):
    spec = ROOT / "ablations" / ("norm.toml" if text.startswith("grid") else "demo.toml")
    with pytest.raises(SpecError) as e:
        load_spec(spec, "cpu", overrides=[text])
    assert str(e.value).startswith(str(spec)), e.value
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_an_override_the_grid_would_hide_is_an_error():
    with pytest.raises(SpecError, match=r"--set base.norm=group.*grid axis 'norm'.*--set grid.norm"):
        load_spec(ROOT / "ablations" / "norm.toml", "smoke", overrides=["base.norm=group"])


def test_a_value_that_is_not_toml_is_an_error_before_anything_runs(tmp_path):
    spec = tmp_path / "t.toml"
    spec.write_text(tiny_spec())
    result = CliRunner().invoke(main, ["run", str(spec), "--runs-root", str(tmp_path / "runs"),
                                       "--set", "base.mults=[1,"])
    assert result.exit_code != 0 and "--set base.mults=[1," in result.output and "not a TOML value" in result.output
    assert not (tmp_path / "runs").exists()


def test_dry_run_shows_the_resolved_runs(tmp_path):
    spec = tmp_path / "t.toml"
    spec.write_text(tiny_spec())
    result = CliRunner().invoke(main, ["run", str(spec), "--dry-run", "--set", "base.lr=1e-3"])
    assert result.exit_code == 0, result.output
    run_id = load_spec(spec, overrides=["base.lr=1e-3"]).runs[0].run_id
    assert "overrides: base.lr=1e-3" in result.output and run_id in result.output and "0.001" in result.output


@pytest.fixture(scope="module")
def overridden(tmp_path_factory):
    """A tiny spec run and collected with two overrides: (spec, runs root, results root, outputs)."""
    tmp = tmp_path_factory.mktemp("set")
    path = tmp / "t.toml"
    path.write_text(tiny_spec(name="set"))
    sets = ["--set", "base.train_steps=2", "--set", "eval.fid_samples=16"]
    roots = ["--runs-root", str(tmp / "runs")]
    ran = CliRunner().invoke(main, ["run", str(path), *roots, "--no-progress", *sets])
    collected = CliRunner().invoke(main, ["collect", str(path), *roots, "--results-root", str(tmp / "results"), *sets])
    spec = load_spec(path, overrides=["base.train_steps=2", "eval.fid_samples=16"])
    return spec, tmp / "runs", tmp / "results", ran, collected


@pytest.mark.slow
def test_overrides_are_recorded_in_config_json_and_the_results_folder(overridden):
    spec, runs, results, ran, collected = overridden
    assert ran.exit_code == 0, ran.output
    assert collected.exit_code == 0, collected.output
    run = spec.runs[0]
    record = json.loads((run_folder(runs, run.run_id) / "config.json").read_text())
    assert record["overrides"] == ["base.train_steps=2", "eval.fid_samples=16"]
    assert record["train"]["train_steps"] == 2 and config_id(record) == run.run_id  # the id reads only `train`
    note = json.loads((results / "set" / "overrides.json").read_text())
    assert note["overrides"] == ["base.train_steps=2", "eval.fid_samples=16"]
    rows = (results / "set" / "rows.csv").read_text()
    assert run.run_id in rows
    listed = CliRunner().invoke(main, ["list", str(spec.path), "--runs-root", str(runs),
                                       "--set", "base.train_steps=2", "--set", "eval.fid_samples=16"])
    assert listed.exit_code == 0 and run.run_id in listed.output and "done" in listed.output, listed.output
    again = CliRunner().invoke(main, ["collect", str(spec.path), "--runs-root", str(runs), "--results-root",
                                      str(results)])
    assert not (results / "set" / "overrides.json").exists(), again.output  # collected without: no stale note


@pytest.mark.parametrize("text, words", [
    ("base.lr=inf", ["base.lr", "inf", "not a finite number"]),
    ("base.lr=1e400", ["base.lr", "inf", "not a finite number"]),
    ("base.ema_decay=nan", ["base.ema_decay", "nan", "not a finite number"]),
    ("base.train_steps=99999999999999999999", ["base.train_steps", "out of range", "at most 100,000,000"]),
    ("base.model_channels=100000000", ["base.model_channels", "out of range", "at most 4,096"]),
    ("eval.fid_samples=100000000000", ["eval.fid_samples", "out of range", "at most 10,000,000"]),
    ("base.mults=[1, 100000]", ["base.mults", "out of range", "at most 64"]),
])
def test_non_finite_and_overflowing_values_are_refused_at_dry_run(text, words):
    """The fault: `--set base.lr=inf` passed --dry-run, trained a step and failed with a non-finite loss;
    train_steps past int64 and 10^8 channels were accepted."""
    out = CliRunner().invoke(main, ["run", str(DEMO), "--dry-run", "--set", text])
    assert out.exit_code != 0 and "Traceback" not in out.output, out.output
    line = next(line for line in out.output.splitlines() if "Error" in line)
    assert str(DEMO) in line and f"--set {text}" in line and all(w in line for w in words), line


def test_a_key_given_twice_on_the_command_line_names_both():
    out = CliRunner().invoke(main, ["run", str(DEMO), "--dry-run", "--set", "base.lr=1e-3", "--set", "base.lr=2e-3"])
    assert out.exit_code != 0, out.output
    assert "--set base.lr=1e-3 and --set base.lr=2e-3" in out.output and "given twice" in out.output


@pytest.mark.parametrize("typo, words", [
    ('sampler = "ddim"\nstpes = 50', ["eval.setting[0]", "unknown key 'stpes'"]),
    ('sampler = "ddimm"\nsteps = 50', ["eval.setting[0].sampler", "ddimm"]),
])
def test_a_typo_in_an_eval_setting_the_scale_replaces_is_an_error_at_that_scale(tmp_path, typo, words):
    """The fault: the cpu scale replaces a spec's own [[eval.setting]] tables, so their typo passed --dry-run
    there and failed only at the smoke scale. Every table is checked at every scale."""
    text = (ROOT / "ablations" / "prediction.toml").read_text()
    assert text.count('[[eval.setting]]\nsampler = "ddim"\nsteps = 50\n') == 1
    path = tmp_path / "prediction.toml"
    path.write_text(text.replace('[[eval.setting]]\nsampler = "ddim"\nsteps = 50\n', f"[[eval.setting]]\n{typo}\n"))
    for scale in ("cpu", "curve", "smoke"):
        out = CliRunner().invoke(main, ["run", str(path), "--scale", scale, "--dry-run"])
        assert out.exit_code != 0 and "Traceback" not in out.output, (scale, out.output)
        assert all(w in out.output for w in [str(path), *words]), (scale, out.output)
