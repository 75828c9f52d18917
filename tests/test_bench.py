import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_files_import_and_run_one_quick_round():
    """Every benchmark runs once (pytest-benchmark disabled), short loops only, so bench/ cannot rot."""
    r = subprocess.run([sys.executable, "-m", "pytest", "bench", "--benchmark-disable", "-q", "-p", "no:cacheprovider",
                        "-k", "not 50 and not 100 and not paper"], cwd=ROOT, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = r.stdout.strip().splitlines()[-1]  # warnings above may contain the word "failed"
    assert " passed" in summary and " failed" not in summary, summary
    # the paper-scale entries take minutes per step on a CPU: here they are only collected
    r = subprocess.run([sys.executable, "-m", "pytest", "bench", "--collect-only", "-q", "-p", "no:cacheprovider",
                        "-k", "paper"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "test_paper.py::test_paper_train_step" in r.stdout and "test_paper.py::test_paper_sampling_step" in r.stdout


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
