"""bf16 = true is refused, before any training, on a CPU that would only emulate it (no avx512_bf16 or
amx_bf16): a grid made on a bf16 machine and resumed on another would otherwise crawl without a word."""
import json

from click.testing import CliRunner

from ablations.commands.cli import main
from ablations.grid.spec import load_spec
from ablations.running import hardware, runner
from ablations.store.layout import FAILED, run_folder
from conftest import tiny_spec

AVX2 = {"cpu_model": "AMD EPYC", "avx512f": False, "avx512_bf16": False, "amx_bf16": False}
ZEN4 = {**AVX2, "avx512f": True, "avx512_bf16": True}
UNKNOWN = dict.fromkeys(AVX2)


def test_bf16_is_refused_only_on_a_cpu_without_native_bf16():
    why = hardware.bf16_refusal(True, "cpu", AVX2)
    assert "AMD EPYC" in why and "avx512_bf16=no" in why and "amx_bf16=no" in why and "base.bf16=false" in why
    assert hardware.bf16_refusal(True, "cpu", ZEN4) is None
    assert hardware.bf16_refusal(True, "cpu", {**AVX2, "amx_bf16": True}) is None
    assert hardware.bf16_refusal(False, "cpu", AVX2) is None
    assert hardware.bf16_refusal(True, "cuda", AVX2) is None  # GPUs have bf16; the CPU's flags do not matter
    assert hardware.bf16_refusal(True, "cpu", UNKNOWN) is None  # no /proc/cpuinfo: nothing to go on


def _spec(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(tiny_spec())
    return path


def test_ablate_run_refuses_before_anything_trains(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_info", lambda path="/proc/cpuinfo": AVX2)
    path, runs = _spec(tmp_path), tmp_path / "runs"
    run_id = load_spec(path, overrides=["base.bf16=true"]).runs[0].run_id
    result = CliRunner().invoke(main, ["run", str(path), "--runs-root", str(runs), "--device", "cpu",
                                       "--no-progress", "--set", "base.bf16=true"])
    assert result.exit_code != 0
    for words in (str(path), "key 'bf16'", run_id, "AMD EPYC", "avx512_bf16=no", "--set base.bf16=false"):
        assert words in result.output, (words, result.output)
    assert not run_folder(runs, run_id).exists()


def test_a_worker_the_cli_did_not_check_records_the_refusal_and_trains_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_info", lambda path="/proc/cpuinfo": AVX2)
    spec = load_spec(_spec(tmp_path), overrides=["base.bf16=true"])
    runs = tmp_path / "runs"
    states = runner.run_all(spec, spec.runs, runs, device="cpu", progress=False)
    folder = run_folder(runs, spec.runs[0].run_id)
    assert states == {spec.runs[0].run_id: FAILED}
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == FAILED and "no native bf16" in status["reason"]
    assert not list(folder.glob("ckpt*")) and not (folder / "rows.jsonl").exists()


def test_the_same_grid_runs_where_bf16_is_native(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_info", lambda path="/proc/cpuinfo": ZEN4)
    spec = load_spec(_spec(tmp_path), overrides=["base.bf16=true"])
    assert runner.run_all(spec, spec.runs, tmp_path / "runs", device="cpu", progress=False) \
        == {spec.runs[0].run_id: "done"}
