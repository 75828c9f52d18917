from dataclasses import replace
from pathlib import Path

import tomllib

import pytest
import torch
from click.testing import CliRunner

from ablations.commands.cli import main
from ablations.grid.spec import SpecError, load_scales, load_spec

ROOT = Path(__file__).resolve().parent.parent
GOOD = """
name = "t"
seeds = [0]
[base]
T = 100
train_steps = 2
model_channels = 8
mults = [1, 2]
res_blocks = 1
batch = 4
[grid]
schedule = ["linear", "cosine"]
[[eval.setting]]
sampler = "ddim"
steps = [5, 10]
eta = [0.0, 1.0]
"""


def _write(tmp_path, text):
    p = tmp_path / "spec.toml"
    p.write_text(text)
    return p


def test_good_spec_expands_the_grid_with_stable_ids(tmp_path):
    spec = load_spec(_write(tmp_path, GOOD))
    assert [r.axes for r in spec.runs] == [{"schedule": "linear"}, {"schedule": "cosine"}]
    assert len({r.run_id for r in spec.runs}) == 2
    assert [r.run_id for r in spec.runs] == [r.run_id for r in load_spec(_write(tmp_path, GOOD)).runs]
    assert [(s.steps, s.eta) for s in spec.eval.settings] == [(5, 0.0), (5, 1.0), (10, 0.0), (10, 1.0)]
    assert spec.runs[0].config.T == 100 and spec.runs[0].config.mults == (1, 2)


def test_table_valued_axis_sets_fields_together(tmp_path):
    text = GOOD.replace('schedule = ["linear", "cosine"]', 'loss = [{loss = "simple", variance = "fixed_small"},'
                        ' {loss = "hybrid", variance = "learned_range"}]')
    spec = load_spec(_write(tmp_path, text))
    assert [(r.axes["loss"], r.config.variance) for r in spec.runs] == [("simple", "fixed_small"),
                                                                         ("hybrid", "learned_range")]


BAD = [
    ("unknown key", ("[base]\n", "[base]\nlr_rate = 0.1\n"), r"key 'base.lr_rate': unknown key 'lr_rate'; valid keys: .*lr"),
    ("unknown top key", ('name = "t"', 'name = "t"\ngirds = 1'), r"key 'girds': unknown key 'girds'; valid keys: .*grid"),
    ("wrong type", ("train_steps = 2", 'train_steps = "two"'), r"key 'base.train_steps': expected int, got str 'two'"),
    ("wrong list type", ("mults = [1, 2]", 'mults = [1, "2"]'), r"key 'base.mults': expected a list of integers"),
    ("unknown schedule", ('"linear", "cosine"]', '"linear", "quadratic"]'),
     r"key 'grid.schedule\[1\]': unknown schedule 'quadratic'; valid choices: 'linear', 'cosine'"),
    ("unknown prediction", ("[base]\n", '[base]\nprediction = "score"\n'),
     r"key 'base.prediction': unknown prediction 'score'; valid choices: 'eps', 'x0', 'v'"),
    ("unknown loss", ("[base]\n", '[base]\nloss = "l1"\n'),
     r"key 'base.loss': unknown loss 'l1'; valid choices: 'simple', 'hybrid', 'vlb'"),
    ("unknown norm", ('schedule = ["linear", "cosine"]', 'norm = ["group", "rms"]'),
     r"key 'grid.norm\[1\]': unknown norm 'rms'; valid choices: 'group', 'batch', 'layer', 'instance'"),
    ("unknown sampler", ('sampler = "ddim"', 'sampler = "no_such_sampler"'),
     r"key 'eval.setting\[0\].sampler': unknown sampler 'no_such_sampler'; valid choices: 'ddpm', 'ddim'"),
    ("steps > T", ("steps = [5, 10]", "steps = [5, 101]"),
     r"key 'eval.setting\[0\].steps': steps 101 is outside 1..T=100 .*valid choices: 1..100"),
    ("empty axis", ('schedule = ["linear", "cosine"]', "schedule = []"), r"key 'grid.schedule': empty grid axis"),
    ("duplicate runs", ('"linear", "cosine"]', '"linear", "linear"]'), r"key 'grid': duplicate runs"),
    ("learned_range without hybrid", ("[base]\n", '[base]\nvariance = "learned_range"\n'),
     r"variance 'learned_range' needs loss 'hybrid' or 'vlb', got loss 'simple'"),
    ("bad eta", ("eta = [0.0, 1.0]", "eta = [0.0, 2.0]"), r"key 'eval.setting\[0\].eta': eta 2.0 is invalid"),
    ("duplicate seeds", ("seeds = [0]", "seeds = [0, 0]"), r"key 'seeds': must be a non-empty list of distinct"),
    ("unknown conditioning", ("[base]\n", '[base]\nconditioning = "film"\n'),
     r"key 'base.conditioning': unknown conditioning 'film'; valid choices: 'add', 'scale_shift'"),
    ("bn_stats_batches < 0", ("[base]\n", "[base]\nbn_stats_batches = -1\n"),
     r"key 'base.bn_stats_batches': -1 is out of range; valid: an integer >= 0"),
    ("ema_warmup not a bool", ("[base]\n", "[base]\nema_warmup = 1\n"), r"key 'base.ema_warmup': expected bool"),
    ("karras with zero terminal SNR", ("[base]\n", '[base]\nzero_terminal_snr = true\nprediction = "v"\n'),
     r"key 'eval.setting\[0\].spacing': spacing 'karras' needs alpha_bar\[T-1\] > 0.*valid choices with it: "
     r"'leading', 'trailing', 'linspace'"),
]


@pytest.mark.parametrize("case, edit, message", BAD, ids=[b[0] for b in BAD])
def test_malformed_spec_is_rejected_before_any_run_starts(tmp_path, case, edit, message):
    old, new = edit
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    if case.startswith("karras"):
        text = text.replace("eta = [0.0, 1.0]", 'eta = [0.0, 1.0]\nspacing = ["leading", "karras"]')
    path = _write(tmp_path, text)
    with pytest.raises(SpecError, match=message) as e:
        load_spec(path)
    assert str(e.value).startswith(f"{path}: key ")
    runs = tmp_path / "runs"
    result = CliRunner().invoke(main, ["run", str(path), "--runs-root", str(runs)])
    assert result.exit_code != 0 and str(path) in result.output
    assert not runs.exists()  # nothing was started or written


def test_unknown_scale_lists_the_choices():
    with pytest.raises(SpecError, match=r"unknown scale 'huge'; valid choices: 'smoke', 'cpu', 'curve', 'paper'"):
        load_spec(ROOT / "ablations" / "norm.toml", "huge")


SPECS = sorted(p for p in (ROOT / "ablations").glob("*.toml") if p.name != "scales.toml")


@pytest.fixture
def inception_standin(tmp_path, monkeypatch):
    """The paper scale asks for Inception, whose weights must load before anything runs; offline machines
    have none, so a loadable stand-in sits where torch-fidelity looks (only its loading is checked here)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save({}, tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth")


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_every_shipped_spec_and_scale_is_valid(path, inception_standin):
    scales = [None] if path.stem == "demo" else list(load_scales())
    for scale in scales:
        spec = load_spec(path, scale)
        assert spec.runs and spec.eval.settings


# What each question's paper trained on CIFAR-10 (Ho et al. 2020, App. B; Nichol & Dhariwal 2021, Table 2 and
# improved-diffusion's README): the paper scale must match it field by field.
DDPM = dict(T=1000, model_channels=128, mults=(1, 2, 2, 2), res_blocks=2, attention=(16,), heads=1, dropout=0.1,
            optimizer="adam", lr=2e-4, warmup=5000, grad_clip=1.0, batch=128, flip=True, train_steps=800_000,
            ema_decay=0.9999, conditioning="add")
IMPROVED = {**DDPM, "conditioning": "scale_shift", "T": 4000, "res_blocks": 3, "attention": (16, 8), "heads": 4, "dropout": 0.3,
            "optimizer": "adamw", "lr": 1e-4, "warmup": 0, "grad_clip": 0.0, "flip": False, "train_steps": 500_000}


@pytest.mark.parametrize("stem, paper", [("prediction", DDPM), ("sampler", DDPM), ("norm", DDPM),
                                         ("loss", IMPROVED), ("schedule", IMPROVED)])
def test_paper_scale_trains_as_the_cited_paper(stem, paper, inception_standin):
    spec = load_spec(ROOT / "ablations" / f"{stem}.toml", "paper")
    paper = {k: v for k, v in paper.items() if k not in spec.axes}  # the question's own axes vary
    for run in spec.runs:
        got = {k: getattr(run.config, k) for k in paper}
        assert got == paper, stem
        assert run.config.dataset == "cifar10"
    assert [(s.sampler, s.steps) for s in spec.eval.settings if s.sampler == "ddpm"][-1] == ("ddpm", paper["T"])


def test_specs_hold_only_their_question_and_share_the_baseline_run():
    """Scale blocks live in scales.toml, except eval settings, the sampler's cpu scale (it trains longer) and
    the paper scale of the questions whose paper trained otherwise. The four training questions share one
    baseline run id at cpu scale; prediction's v run is zero_snr's run without rescaling."""
    baselines, v_runs = set(), []
    for path in SPECS:
        own = tomllib.loads(path.read_text()).get("scale", {})
        for scale, table in own.items():
            assert set(table) <= {"eval"} or (path.stem, scale) in {("sampler", "cpu"), ("loss", "paper"),
                                                                     ("schedule", "paper")}, (path, scale)
        if path.stem in ("schedule", "prediction", "loss", "norm"):
            baselines |= {r.run_id for r in load_spec(path, "cpu").runs if r.config.seed == 0 and (
                r.config.schedule, r.config.prediction, r.config.loss, r.config.norm, r.config.conditioning) == (
                "linear", "eps", "simple", "group", "add")}
        if path.stem in ("prediction", "zero_snr"):
            v_runs.append({r.run_id for r in load_spec(path, "cpu").runs
                           if r.config.prediction == "v" and not r.config.zero_terminal_snr})
    assert len(baselines) == 1
    assert v_runs[0] == v_runs[1] and len(v_runs[0]) == 3


def test_scale_file_values_are_inherited_and_a_spec_overrides_them(tmp_path):
    spec = load_spec(ROOT / "ablations" / "norm.toml", "smoke")
    assert spec.runs[0].config.train_steps == load_scales()["smoke"]["base"]["train_steps"][0]
    text = GOOD + "[scale.smoke.base]\ntrain_steps = 5\n"
    assert load_spec(_write(tmp_path, text), "smoke").runs[0].config.train_steps == 5


@pytest.mark.parametrize("bad, message", [
    ('[smoke.base]\nT = "x"\n', r"scales.toml: key 'smoke.base.T': expected int, got str 'x'"),
    ('[smoke]\nsedes = [0]\n', r"scales.toml: key 'smoke.sedes': unknown key 'sedes'; valid keys: base, eval, seeds"),
    ('[smoke.eval]\nfid_samplez = 3\n', r"scales.toml: key 'smoke.eval.fid_samplez': unknown key"),
    ('[smoke.base]\nnorm = "rms"\n', r"scales.toml: key 'smoke.base.norm': unknown norm 'rms'; valid choices: 'group'"),
])
def test_malformed_scale_file_is_rejected_like_a_spec(tmp_path, bad, message):
    scales = tmp_path / "scales.toml"
    scales.write_text(bad)
    with pytest.raises(SpecError, match=message):
        load_spec(ROOT / "ablations" / "norm.toml", "smoke", scales_path=scales)


def test_karras_spacing_and_the_new_fields_are_accepted(tmp_path):
    text = GOOD.replace("eta = [0.0, 1.0]", 'eta = [0.0]\nspacing = ["leading", "karras"]').replace(
        "[base]\n", '[base]\nconditioning = "scale_shift"\nema_warmup = true\nbn_stats_batches = 4\n')
    spec = load_spec(_write(tmp_path, text))
    assert [(s.steps, s.spacing) for s in spec.eval.settings] == [(5, "leading"), (5, "karras"), (10, "leading"),
                                                                   (10, "karras")]
    cfg = spec.runs[0].config
    assert (cfg.conditioning, cfg.ema_warmup, cfg.bn_stats_batches) == ("scale_shift", True, 4)
    sampler = load_spec(ROOT / "ablations" / "sampler.toml", "cpu")
    assert {(s.sampler, s.steps) for s in sampler.eval.settings if s.spacing == "karras"} == {
        ("dpmpp_2m", 5), ("dpmpp_2m", 10), ("dpmpp_2m", 20), ("heun", 3), ("heun", 5), ("heun", 10)}


def test_a_spec_without_a_grid_compares_eval_settings_on_one_config():
    spec = load_spec(ROOT / "ablations" / "demo.toml")
    assert spec.axes == () and [r.config.seed for r in spec.runs] == [0, 1, 2]  # one config, once per seed
    assert all(r.axes == {} and replace(r.config, seed=0) == spec.runs[0].config for r in spec.runs)
    assert {s.sampler for s in spec.eval.settings} == {"ddpm", "ddim"}


def test_dry_run_lists_runs_and_nothing_else(tmp_path):
    runs = tmp_path / "runs"
    result = CliRunner().invoke(main, ["run", str(ROOT / "ablations" / "norm.toml"), "--scale", "smoke",
                                       "--dry-run", "--runs-root", str(runs)])
    assert result.exit_code == 0, result.output
    spec = load_spec(ROOT / "ablations" / "norm.toml", "smoke")
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["run_id", "norm", "conditioning", "seed"]
    assert [line.split()[:3] for line in lines[1:]] == [[r.run_id, r.axes["norm"], r.axes["conditioning"]]
                                                        for r in spec.runs]
    blind = [r.run_id for r in spec.runs if (r.config.norm, r.config.conditioning) == ("instance", "add")]
    assert len(blind) == 1 and f"norm 'instance' with conditioning 'add' in run(s) {blind[0]}" in result.stderr
    assert "IN(h + emb) = IN(h): the model cannot see the timestep" in result.stderr
    assert not runs.exists()


def test_help_is_complete_with_examples():
    out = CliRunner().invoke(main, ["run", "--help"]).output
    for flag in ("--scale", "--runs-root", "--dry-run", "--only", "--data-root", "--workers", "Examples"):
        assert flag in out
