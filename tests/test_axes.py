"""The registry of axes (ablations/run/axes.py) is the one list of named choices: the spec's choices are
built from it; the row schema's setting columns and the README's Vocabulary are checked against it; the
training loop's and the evaluation's core keywords come through it; a sampler's properties are its registry
entry's; and a new sampler needs no edit outside core (tests/test_recipes.py follows the README's recipes)."""
import re
from pathlib import Path

import pytest
import torch

from ablations.grid import checks
from ablations.run.axes import AXES, PARAMETERS, SETTING_AXES, STANDARD, keywords
from ablations.run.config import TRAIN_FIELDS, Setting, TrainConfig
from ablations.grid.spec import SpecError, load_spec
from ablations.running import ledger
from ablations.running.evaluation import generate
from ablations.run.model import build_model, run_schedule
from ablations.reporting.legend import label
from ablations.store import schema
from core import samplers
from core.diffusion import denoiser, out_channels
from core.likelihood import nll_bpd
from core.losses import loss_terms, vb_from_denoised
from core.samplers import sample
from core.schedules import make_schedule
from core.unet import UNet

ROOT = Path(__file__).resolve().parent.parent
TOY = """
name = "toy"
seeds = [0]
[base]
T = 50
train_steps = 2
model_channels = 8
mults = [1, 2]
res_blocks = 1
groups = 8
batch = 4
{base}
[eval]
fid_samples = 4
grid_images = 4
[[eval.setting]]
sampler = "{sampler}"
steps = [3]
{setting}
"""


def _spec(tmp_path, sampler="ddim", base="", setting=""):
    path = tmp_path / "spec.toml"
    path.write_text(TOY.format(sampler=sampler, base=base, setting=setting))
    return load_spec(path, scales_path=None)


def test_the_spec_choices_are_the_registry():
    assert checks.CHOICES.keys() == AXES.keys()
    assert all(checks.CHOICES[name] is axis.choices for name, axis in AXES.items())


def test_the_schema_axes_and_setting_columns_are_registry_fields():
    assert schema.SETTING == Setting._fields
    assert set(SETTING_AXES) <= set(Setting._fields)
    assert {AXES[a].field for a in SETTING_AXES} <= set(schema.SETTING)
    assert all(AXES[a].field in TRAIN_FIELDS for a in AXES if a not in SETTING_AXES)
    assert set(STANDARD) <= set(AXES) - set(SETTING_AXES)
    assert not hasattr(schema, "AXES")  # the store keeps no copy of the registry


def _vocabulary() -> dict:
    """{axis: its values cell} of the README's Vocabulary table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Vocabulary\n", 1)[1].split("\n## ", 1)[0]
    cells = [line.split(" | ") for line in section.splitlines() if line.startswith("| `")]
    return {name.strip("| `"): values for name, values, *_ in cells}


@pytest.mark.parametrize("name", list(AXES))
def test_every_registry_axis_is_in_the_readme_vocabulary_with_its_choices(name):
    table = _vocabulary()
    assert name in table, f"README's Vocabulary has no row for axis {name!r}"
    named = set(re.findall(r"`([^`]+)`", table[name]))
    assert not set(AXES[name].choices) - named, f"{name}: {sorted(set(AXES[name].choices) - named)} not listed"


def test_keywords_give_what_the_hand_written_calls_gave():
    cfg = TrainConfig(schedule="cosine", T=50, zero_terminal_snr=True, prediction="v", weighting="p2", p2_k=2.0,
                      norm="layer", conditioning="scale_shift", model_channels=8, mults=(1, 2), res_blocks=1)
    assert keywords(cfg, make_schedule) == {"name": "cosine", "T": 50, "zero_terminal_snr": True}
    assert keywords(cfg, loss_terms) == {"prediction": "v", "variance": "fixed_small", "loss": "simple",
                                         "vlb_weight": 0.001, "weighting": "p2", "p2_gamma": 1.0, "p2_k": 2.0}
    assert "snr_gamma" not in keywords(cfg, loss_terms)  # only the fields the run's weighting reads
    assert keywords(cfg, sample) == keywords(cfg, nll_bpd) == {"prediction": "v", "variance": "fixed_small"}
    assert keywords(cfg, denoiser) == {"prediction": "v", "variance": "fixed_small"}  # the evaluation's denoising
    assert keywords(cfg, vb_from_denoised) == {"variance": "fixed_small"}
    assert torch.equal(run_schedule(cfg).alphas_cumprod, make_schedule("cosine", 50, True).alphas_cumprod)
    torch.manual_seed(0)
    ours = build_model(cfg)
    torch.manual_seed(0)
    theirs = UNet(channels=1, model_channels=8, mults=(1, 2), res_blocks=1, attention=(), heads=1, dropout=0.0,
                  norm="layer", groups=32, conditioning="scale_shift", out_channels=out_channels(1, "fixed_small"),
                  resolution=28)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    assert all(p in TRAIN_FIELDS for fields in PARAMETERS.values() for p in fields)


def toy(model, x, *rest, **kw):
    """A sampler that returns its start, clipped: enough to flow through validation, rows and evaluation."""
    return x.clamp(-1, 1)


def test_a_new_sampler_needs_only_its_function_and_registry_entry(tmp_path, monkeypatch):
    with pytest.raises(SpecError, match=r"unknown sampler 'toy'; valid choices: 'ddpm'"):
        _spec(tmp_path, "toy")
    monkeypatch.setitem(samplers.SAMPLERS, "toy", samplers.Sampler(toy))  # the registry entry: the one edit
    s = _spec(tmp_path, "toy")
    assert s.eval.settings == (Setting("toy", 3, 0.0, True),)
    assert "'toy'" in str(pytest.raises(SpecError, _spec, tmp_path, "warp").value)  # listed among the choices
    run, setting = s.runs[0], s.eval.settings[0]
    r = schema.row(run.run_id, "fid", 1.0, phase="eval", **setting._asdict(), nfe=samplers.nfe("toy", 3))
    assert schema.problem(r) is None and r["sampler"] == "toy" and r["nfe"] == 3
    assert label(*setting) == "toy · 3 steps"
    assert {what for what in ledger.wanted(s, run).values()} >= {(2, setting)}
    torch.manual_seed(0)
    model = build_model(run.config).eval()
    images, _ = generate(model, run_schedule(run.config), run.config, setting, 4, batch=4, seed=0, device="cpu")
    assert images.shape == (4, 1, 28, 28) and images.dtype == torch.uint8


def test_a_cross_field_rule_of_core_is_the_spec_error(tmp_path):
    zero = 'zero_terminal_snr = true\nprediction = "v"'
    assert _spec(tmp_path, "heun", zero, 'spacing = ["leading"]').eval.settings[0].spacing == "leading"
    with pytest.raises(SpecError, match=r"spec.toml: key 'eval.setting\[0\].spacing': sampler 'heun' cannot start "
                                        r"at alpha_bar = 0 .*valid samplers with it: 'ddpm', 'ddim', 'dpmpp_2m' "
                                        r"\(spacing 'trailing'"):
        _spec(tmp_path, "heun", zero, 'spacing = ["leading", "trailing"]')
    with pytest.raises(SpecError, match=r"key 'base.zero_terminal_snr': prediction 'eps' cannot be used with a zero"):
        _spec(tmp_path, "ddim", 'zero_terminal_snr = true\nprediction = "eps"')
    with pytest.raises(SpecError, match=r"key 'base.variance': variance 'learned_range' needs loss 'hybrid' or "
                                        r"'vlb', got loss 'simple'.*valid losses for it: 'hybrid', 'vlb'"):
        _spec(tmp_path, base='variance = "learned_range"')


def test_the_spec_calls_cores_rules_not_its_own(tmp_path, monkeypatch):
    """A rule changed in core changes the spec's verdict: the spec holds no copy of it."""
    monkeypatch.setitem(samplers.SAMPLERS, "ddim", samplers.SAMPLERS["ddim"]._replace(in_sigma=True))
    with pytest.raises(SpecError, match=r"sampler 'ddim' cannot start at alpha_bar = 0"):
        _spec(tmp_path, "ddim", 'zero_terminal_snr = true\nprediction = "v"', 'spacing = ["trailing"]')
