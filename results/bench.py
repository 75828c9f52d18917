"""pytest-benchmark JSON -> a tidy table (bench.csv), the side-by-side ratios (ratios.csv) and a plot."""
import json
from pathlib import Path

import pandas as pd

from results.plots import save_figure


def bench_table(json_path) -> tuple[pd.DataFrame, pd.DataFrame]:
    raw = json.loads(Path(json_path).read_text())
    machine = raw.get("machine_info", {})
    rows = [{"benchmark": b["name"], "group": b.get("group"), "median_s": b["stats"]["median"],
             "mean_s": b["stats"]["mean"], "stddev_s": b["stats"]["stddev"], "rounds": b["stats"]["rounds"],
             "cpu": machine.get("cpu", {}).get("brand_raw"), "python": machine.get("python_version"),
             "datetime": raw.get("datetime"), **{f"extra_{k}": v for k, v in b.get("extra_info", {}).items()}}
            for b in raw["benchmarks"]]
    ratios = pd.DataFrame([{"ratio": k, "value": v} for k, v in raw.get("ratios", {}).items()])
    return pd.DataFrame(rows), ratios


def write_bench(json_path, out_dir) -> list[Path]:
    import matplotlib.pyplot as plt
    import seaborn as sns

    from results.table import write_csv
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, ratios = bench_table(json_path)
    write_csv(table, out_dir / "bench.csv")
    write_csv(ratios, out_dir / "ratios.csv")
    loops = table[table["benchmark"].str.startswith("test_loop[")].copy()
    paths = [out_dir / "bench.csv", out_dir / "ratios.csv"]
    if not loops.empty:
        parts = loops["benchmark"].str.slice(10, -1).str.split("-", expand=True)
        loops[["impl", "sampler", "model", "steps"]] = parts
        loops["steps"] = loops["steps"].astype(int)
        g = sns.catplot(data=loops, kind="bar", x="steps", y="median_s", hue="impl", col="model", row="sampler",
                        sharey=False, height=2.8, aspect=1.3)
        g.set(ylabel="seconds per loop (median)")
        paths += save_figure(g.figure, out_dir, "sampler_loops")
        plt.close("all")
    return paths
