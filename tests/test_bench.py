import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


QUICK = "not 50 and not 100 and not paper and not curve"  # the curve scale's scoring bench takes minutes
# The quick round in parts, each a process of its own, so that no part takes minutes: part -> whether a
# benchmark (its node id) belongs to it.
ROUNDS = {"commands": lambda n: "test_commands.py" in n, "fid": lambda n: "test_fid.py" in n,
          "samplers": lambda n: "test_samplers.py" in n and "diffusers" not in n,
          "samplers-diffusers": lambda n: "test_samplers.py" in n and "diffusers" in n,
          "scoring": lambda n: "test_scoring.py" in n,
          "training": lambda n: "test_training.py::test_train_step" in n and "[compiled]" not in n,
          "training-compiled": lambda n: "test_training.py::test_train_step[compiled]" in n,  # inductor's compile
          "forward": lambda n: "test_training.py" in n and "::test_train_step" not in n,  # rooflines, forwards
          "reading": lambda n: "test_reading.py::test_store_command" in n,  # collect, list, run on a 30-run store
          "results": lambda n: "test_reading.py::test_results" in n}  # every committed figure and report redrawn


def _bench(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider"], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick():
    """The quick round's benchmarks (node ids), collected once."""
    r = _bench("bench", "--collect-only", "-q", "-k", QUICK)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return [line for line in r.stdout.splitlines() if "::" in line]


def test_the_quick_rounds_cover_every_quick_benchmark_once(quick):
    """Each benchmark of the quick round belongs to exactly one part below, and every part runs some."""
    assert len(quick) > 30
    assert all(sum(belongs(n) for belongs in ROUNDS.values()) == 1 for n in quick), quick
    assert all(any(belongs(n) for n in quick) for belongs in ROUNDS.values())
    # the paper-scale entries take minutes per step on a CPU: here they are only collected
    r = _bench("bench/test_paper.py", "--collect-only", "-q")
    assert r.returncode == 0, r.stdout[-2000:]
    assert "test_paper.py::test_paper_train_step" in r.stdout and "test_paper.py::test_paper_sampling_step" in r.stdout


@pytest.mark.parametrize("part", list(ROUNDS))
def test_bench_files_import_and_run_one_quick_round(quick, part):
    """Every benchmark runs once (pytest-benchmark disabled), short loops only, so bench/ cannot rot."""
    nodes = [n for n in quick if ROUNDS[part](n)]
    r = _bench(*nodes, "--benchmark-disable", "-q")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = r.stdout.strip().splitlines()[-1]  # warnings above may contain the word "failed"
    assert " passed" in summary and " failed" not in summary and f"{len(nodes)} passed" in summary, summary


def test_loop_ratios_use_the_forward_timed_inside_the_same_loop():
    from bench.conftest import ratios

    def bench(kind, impl, median, mean=None, **info):
        return {"stats": {"median": median, "mean": mean or median},
                "extra_info": {"kind": kind, "implementation": impl, "model": "unet", "batch": 64, **info}}
    found = ratios([bench("forward", "ours", 0.25),
                    bench("loop", "ours", 2.9, 3.0, sampler="heun", steps=10, nfe=19, forward_s=2.5),
                    bench("loop", "diffusers", 3.2, sampler="heun", steps=10, nfe=19)])
    [loop] = [r for r in found if r["kind"] == "sampler_loop"]
    assert loop["loop_over_forward"] == 3.0 / 2.5  # means over the same rounds
    assert loop["forward_over_floor"] == 2.5 / (19 * 0.25)
    assert loop["ours_over_diffusers"] == 2.9 / 3.2  # medians


SAPPHIRE = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu
"""
EPYC_AVX2 = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma
"""


def test_the_cpu_model_and_bf16_flags_are_read_from_cpuinfo():
    from bench.cpu import bf16_skip_reason, parse_cpuinfo
    spr = parse_cpuinfo(SAPPHIRE)
    assert spr == {"cpu_model": "Intel(R) Xeon(R) Platinum 8480+", "avx512f": True, "avx512_bf16": True,
                   "amx_bf16": True}  # the first processor's line
    assert bf16_skip_reason(spr) is None
    epyc = parse_cpuinfo(EPYC_AVX2)
    assert epyc == {"cpu_model": "AMD EPYC", "avx512f": False, "avx512_bf16": False, "amx_bf16": False}
    why = bf16_skip_reason(epyc)
    assert "AMD EPYC" in why and "avx512_bf16=no" in why and "amx_bf16=no" in why and "avx512f=no" in why
    assert bf16_skip_reason({**epyc, "avx512_bf16": True}) is None  # AVX512-BF16 without AMX (Zen 4) is native


def test_bf16_variants_are_held_to_the_bf16_matmul_roofline():
    from bench.conftest import ratios

    def bench(kind, impl, median, **info):
        return {"stats": {"median": median, "mean": median}, "extra_info": {"kind": kind, "implementation": impl,
                                                                             **info}}
    found = ratios([bench("matmul", "torch", 1.0, flop=200e9), bench("matmul_bf16", "torch", 1.0, flop=400e9),
                    bench("train", "ours", 2.0, model="unet", variant="bf16", batch=128, flop=300e9),
                    bench("train", "ours", 2.0, model="unet", variant="contiguous", batch=128, flop=300e9)])
    by = {r["variant"]: r for r in found if r["kind"] == "train_step"}
    assert by["bf16"]["train_over_bf16_matmul"] == 150e9 / 400e9 and by["bf16"]["bf16_matmul_gflops"] == 400
    assert by["contiguous"]["train_over_bf16_matmul"] is None  # fp32 is held to the fp32 rooflines
    assert by["bf16"]["train_over_matmul"] == 150e9 / 200e9
