"""Scoring against training, from the rows of a real run through `ablate run`: the split of one checkpoint's
scoring (the eval compile, sampling, FID/KID, precision/recall, NLL and the denoising rows, each its own
`*_wall_s` row) and the ratio a curve run pays, its checkpoints' scoring over its training:

    ratio = checkpoints x (one checkpoint's scoring s) / (train_steps x one training step's s)

with one training step's seconds from the run's `train_img_per_s` (compile excluded). The run trains a few
steps of the scale's model and scores its last step with the scale's eval block; every checkpoint costs the
same work, so four of them are four times one. `make bench` runs the curve scale (about 3 min here); the
test suite's quick round only the smoke one."""
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ablations.commands.cli import main
from ablations.run.config import eval_steps
from ablations.grid.spec import load_spec
from ablations.run.shapes import SIZES
from ablations.run.config import total_steps
from ablations.store.schema import read_rows
from bench.conftest import describe

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("compile_s", "sample_wall_s", "fid_wall_s", "prc_wall_s", "nll_wall_s", "denoise_wall_s")
STEPS = {"smoke": 3, "curve": 40}  # trained before the one scored checkpoint
SPECS = {"smoke": "demo", "curve": "prediction"}  # the curve scale's run is the training questions' baseline


def matmul_gflops(n=1024, reps=20) -> float:
    """The machine's fp32 GEMM roofline at this process's threads: the best of `reps` n x n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def split(rows, step) -> dict:
    """{part: seconds} of the eval rows at checkpoint `step`, summed over settings and extractors."""
    out = dict.fromkeys(PARTS, 0.0)
    for r in rows:
        if r["phase"] == "eval" and r["train_step"] == step and r["metric"] in PARTS:
            out[r["metric"]] += r["value"]
    return out


@pytest.mark.parametrize("scale, batch", [("smoke", None), ("curve", None), ("curve", 500), ("curve", 100),
                                          ("curve", 50)])
def test_scoring_over_training(benchmark, tmp_path, scale, batch):
    """batch: the sampling batch (`sample_batch`; None: the scale's), the shape the compiled forward serves."""
    path = ROOT / "ablations" / f"{SPECS[scale]}.toml"
    full = load_spec(path, scale)
    run, steps = full.runs[0], STEPS[scale]
    runs = tmp_path / "runs"
    args = ["run", str(path), "--scale", scale, "--only", run.run_id, "--runs-root", str(runs), "--no-progress",
            "--set", f"base.train_steps={steps}", "--set", "eval.eval_at=[]",
            *(["--set", f"eval.sample_batch={batch}"] if batch else [])]
    took = {}

    def go():
        t0 = time.perf_counter()
        out = CliRunner().invoke(main, args)
        took["s"] = time.perf_counter() - t0
        assert out.exit_code == 0, out.output

    roofline = matmul_gflops()
    benchmark.pedantic(go, rounds=1, iterations=1)
    rows, bad = read_rows(runs / run.run_id / "rows.jsonl")
    assert bad == 0
    parts = split(rows, steps)
    scoring = sum(parts.values())
    rate = next(r["value"] for r in rows if r["metric"] == "train_img_per_s" and r["train_step"] == steps)
    step_s = run.config.batch / rate
    total = total_steps(run.config, SIZES[run.config.dataset]["train"])
    checkpoints = len(eval_steps(full.eval, total))
    ratio = checkpoints * scoring / (total * step_s)
    assert scoring > 0 and parts["sample_wall_s"] > 0 and parts["nll_wall_s"] > 0
    describe(benchmark, kind="scoring", scale=scale, batch=batch or full.eval.sample_batch, train_step_s=step_s,
             train_steps=total, checkpoints=checkpoints, scoring_s=scoring, run_s=took["s"],
             scoring_over_training=ratio, matmul_gflops=roofline, **parts)
    said = ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
    print(f"\n{scale}, sample_batch {batch or full.eval.sample_batch}: one checkpoint's scoring {scoring:.1f} s "
          f"({said}); a training step {step_s:.3f} s; {checkpoints} checkpoints over {total} steps: ratio {ratio:.2f}; "
          f"fp32 GEMM {roofline:.0f} GFLOP/s at {torch.get_num_threads()} thread(s)")
