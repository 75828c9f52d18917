"""pytest-benchmark JSON -> a tidy table (bench.csv), the side-by-side ratios (ratios.csv) and a plot.

bench.csv has one row per benchmark with what it timed as columns (the `extra_info` that every
benchmark records: implementation, sampler, model, steps, batch, threads, torch); ratios.csv has one
row per comparison and one column per quantity (bench/conftest.py defines them). The CPU's model and bf16
flags (cpu_model, avx512f, avx512_bf16, amx_bf16; bench/cpu.py) are columns of every bench.csv row, and
bf16_skipped says why the bf16 benchmarks did not run, where they did not.
"""
import json
from pathlib import Path

import pandas as pd

from ablations.reporting.plots import save_figure
from ablations.reporting.table import write_csv


def bench_table(json_path) -> tuple[pd.DataFrame, pd.DataFrame]:
    raw = json.loads(Path(json_path).read_text())
    machine = raw.get("machine_info", {})
    cpu = raw.get("cpu", {})  # the machine's CPU flags, recorded by bench/conftest.py
    rows = [{"benchmark": b["name"], **cpu, **b.get("extra_info", {}), "median_s": b["stats"]["median"],
             "mean_s": b["stats"]["mean"], "stddev_s": b["stats"]["stddev"], "rounds": b["stats"]["rounds"],
             "cpu": machine.get("cpu", {}).get("brand_raw"), "python": machine.get("python_version"),
             "datetime": raw.get("datetime")} for b in raw["benchmarks"]]
    return pd.DataFrame(rows), pd.DataFrame(raw.get("ratios", []))


def write_bench(json_path, out_dir) -> list[Path]:
    import matplotlib.pyplot as plt
    import seaborn as sns

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, ratios = bench_table(json_path)
    write_csv(table, out_dir / "bench.csv")
    write_csv(ratios, out_dir / "ratios.csv")
    paths = [out_dir / "bench.csv", out_dir / "ratios.csv"]
    loops = table[table.get("kind", pd.Series(dtype=object)) == "loop"] if "kind" in table else table.iloc[:0]
    if not loops.empty:
        g = sns.catplot(data=loops, kind="bar", x="steps", y="median_s", hue="implementation", col="model",
                        row="sampler", sharey=False, height=2.8, aspect=1.3)
        g.set(ylabel="seconds per loop (median)")
        paths += save_figure(g.figure, out_dir, "sampler_loops")
        plt.close("all")
    return paths
