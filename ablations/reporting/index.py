"""results/README.md: the index of every answered question, generated from the committed rows alone.

One sentence of what it is, the verdict rule as five bullets (in full: results/METHODS.md), then one row per
finding (or per question without a published one): the question, the paper's claim with its source, our
paired difference with its CI (the level named), its Holm-adjusted p, the verdict at the last checkpoint,
whether it is settled, and the protocol; what needs more than a word (the legacy protocol, why a finding
awaits the rerun, a repeat counted once) is a footnote under the table. Then the index's forest plot, the
checks across questions and each scale's whole answer: its runs' time with a run shared by several questions
counted once. Each question's cells, raw p, trajectory, cost, machine and what would decide an inconclusive
verdict are in its report (ablations/reporting/report.py).
"""
from itertools import combinations
from pathlib import Path

import pandas as pd

from ablations.store.io import write_text
from ablations.store.schema import PROVENANCE, SETTING, STATUS_COLUMNS
from ablations.reporting import cost, verdicts, wording
from ablations.reporting.table import at_step, checkpointed, first_sample_set

MARKS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")  # footnote numbers as superscripts


def folders(results_root) -> list[Path]:
    """Result folders (those holding a rows.csv), in name order."""
    return sorted(p.parent for p in Path(results_root).glob("*/rows.csv"))


def write_index(results_root, assessed: verdicts.Assessed | None = None) -> Path:
    """results/README.md: every finding of every folder, Holm-adjusted over the whole index, its forest
    plot (results/forest.png), the extractor check where the rows hold two extractors, and the totals;
    from the rows and verdicts `assessed` (`verdicts.assessed`, once per command)."""
    from ablations.reporting.verdict_plots import forest
    root = Path(results_root)
    assessed = assessed or verdicts.assessed(root)
    found_tables = assessed.tables
    found_in = assessed.published  # each folder's findings.json
    curves = assessed.found
    family = verdicts.last(curves)
    over = {(c[-1]["folder"], id(c[-1]["finding"])): c for c in verdicts.trajectories(curves)}
    footnotes = {}  # text -> its number
    lines = ["# Results", "", wording.INDEX_INTRO, "", *(f"- {b}" for b in wording.RULE_BRIEF), "",
             wording.INDEX_MORE, "", *wording.family_lines(family), "",
             "| question | claim (source) | a − b ± CI | p (Holm) | verdict | settled | protocol |",
             "|---|---|---|---|---|---|---|"]
    for name, _, rows in found_tables:
        found = [v for v in family if v["folder"] == name]
        if not found:
            lines.append(f"| [{name}]({name}/report.md) | {found_in[name].no_paper or '-'} | see report | - | - | - "
                         "| - |")
        lines += [_row(v, over[(name, id(v["finding"]))], footnotes) for v in found]
    lines += ["", *(f"- {str(n).translate(MARKS)} {text}" for text, n in footnotes.items())] if footnotes else []
    if forest(family, root):
        lines += ["", "Each finding's paired difference with its CI, the paper's direction shaded:", "",
                  "![forest](forest.png)"]
    check = extractor_check(found_tables, curves) + sample_seed_check(found_tables)
    totals = cost.totals([rows for _, _, rows in found_tables])
    lines += ["", *check] if check else []
    lines += ["", *totals] if totals else []
    path = root / "README.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


def _row(v: dict, curve: list[dict], footnotes: dict) -> str:
    """A finding's index row (markdown); what needs more than a word becomes a footnote (`footnotes`: text ->
    number, numbered on first use) marked in its cell."""
    name = v["folder"]
    mark = lambda text: str(footnotes.setdefault(text, len(footnotes) + 1)).translate(MARKS)  # noqa: E731
    checked = f" ([what was checked]({name}/report.md#{wording.CHECKED_ANCHOR}))" if wording.checked(v) else ""
    verdict = (f"**{v['verdict']}**" + "".join(map(mark, wording.verdict_notes(v))) +
               (f" ({wording.deciding_p(v)})" if v["verdict"] == "disagrees" else "") + checked)
    protocol = f"legacy{mark('legacy protocol ' + wording.legacy_text(v))}" if v["legacy"] else "current"
    return (f"| [{name}]({name}/report.md) | {wording.claim_text(v['finding'])} | {wording.effect_text(v)} | "
            f"{wording.p_text(v['p_holm'])} | {verdict} | {wording.settled_word(curve)} | {protocol} |")


NOT_CELL = {"value", "extractor", "seed", "run_id", *STATUS_COLUMNS, *PROVENANCE}


def extractor_check(found_tables, found=()) -> list[str]:
    """Where rows hold FID for the same cells under two extractors: per checkpoint, the Spearman rank
    correlation of the cells' FIDs (mean over seeds; ranks, then Pearson) between them, each run's cell
    counted once though several folders hold it (a shared run); then, for every finding scored under both
    (`found`: verdicts.assess's entries), whether its per-seed sign of a − b is the same under both, which is
    what a verdict rests on. Ranking cells across checkpoints would rank training progress instead, and a
    second sample set of the same weights (the sample-set noise check) would count one model as two cells."""
    runs = []
    for name, _, rows in found_tables:
        d = first_sample_set(rows[(rows["metric"] == "fid") & rows["value"].notna()])
        if "extractor" in d and d["extractor"].nunique() >= 2:
            runs.append(d.assign(folder=name))
    if not runs:
        return []
    d = pd.concat(runs, ignore_index=True)
    d = checkpointed(d) if "train_step" in d else d.assign(train_step=float("nan"))
    setting = [c for c in (*SETTING, "sample_seed") if c in d]
    d = d.drop_duplicates(subset=["run_id", "train_step", "extractor", *setting])  # a shared run once
    axes = [c for c in d.columns if c not in NOT_CELL and c not in ("folder", "ablation", "scale", "train_step")]
    lines = []
    for step, at in d.groupby("train_step", dropna=False):
        table = at.groupby([*axes, "extractor"], dropna=False)["value"].mean().unstack("extractor")
        for x, y in combinations(sorted(table.columns), 2):
            both = table[[x, y]].dropna()
            if len(both) >= 2:
                rho = both[x].rank().corr(both[y].rank())
                where = "" if step != step else f" at {int(step):,} steps"
                folders = ", ".join(sorted(set(at["folder"])))
                lines.append(f"Extractor check{where}: the Spearman rank correlation of FID between `{x}` and `{y}` "
                             f"over the {len(both)} cells both scored, each run once ({folders}; mean over seeds) "
                             f"is {rho:.3f}.")
    return lines + _sign_agreement(found_tables, found)


def _sign_agreement(found_tables, found) -> list[str]:
    """For each FID finding at each checkpoint scored under two extractors: is a − b's sign the same under
    both on every seed? One line: how many (finding, checkpoint) pairs agree, and the first that does not."""
    rows_of = {name: checkpointed(rows) for name, _, rows in found_tables}
    same, differ = 0, []
    for v in found:
        rows = rows_of.get(v["folder"])
        if v["finding"].metric != "fid" or rows is None or "extractor" not in rows or v["seeds"] < 1:
            continue
        at = at_step(rows, v["train_step"])
        kinds = sorted(at.loc[at["metric"] == "fid", "extractor"].dropna().unique())
        if len(kinds) < 2:
            continue
        signs = [verdicts.paired(at[at["extractor"] == k], "fid", v["finding"].a, v["finding"].b) for k in kinds[:2]]
        seeds = sorted(set(signs[0].index) & set(signs[1].index))
        if seeds and all((signs[0][s] > 0) == (signs[1][s] > 0) for s in seeds):
            same += 1
        elif seeds:
            differ.append(f"{v['folder']} {v['a']} vs {v['b']} at {v['train_step']:,.0f} steps")
    if not same and not differ:
        return []
    return [f"Extractor check, per seed: a − b has the same sign under both extractors on every seed in {same} of "
            f"{same + len(differ)} (FID finding, checkpoint) pairs" + (f"; not in {'; '.join(differ)}." if differ
                                                                         else ".")]


def sample_seed_check(found_tables) -> list[str]:
    """Where rows hold FID for the same model and cell at two sample seeds (other x_T and noise, the same
    weights): per folder, the mean and largest |FID(seed a) - FID(seed b)| over those (model, cell) pairs,
    beside the training seeds' std of the same cells: how much of a cell's spread is the sample set."""
    lines = []
    for name, _, rows in found_tables:
        d = rows[(rows["metric"] == "fid") & rows["value"].notna()]
        if "sample_seed" not in d or d["sample_seed"].nunique() < 2:
            continue
        if "extractor" in d and d["extractor"].nunique() > 1:
            d = d[d["extractor"] == d["extractor"].iloc[0]]
        key = [c for c in d.columns if c not in NOT_CELL and c != "sample_seed"]
        two = d.groupby([*key, "seed", "sample_seed"], dropna=False)["value"].mean().unstack("sample_seed").dropna()
        if two.shape[1] < 2 or two.empty:
            continue
        a, b = sorted(two.columns)[:2]
        gap = (two[a] - two[b]).abs()
        spread = two[[a, b]].mean(axis=1).groupby(key, dropna=False).std().dropna()  # the paired cells' only
        a, b = f"{a:g}", f"{b:g}"
        train = f"; the training seeds' std of those cells is {spread.mean():.3g} on average" if len(spread) else ""
        lines.append(f"Sample-set noise ({name}): over the {len(gap)} (model, cell) pairs scored at sample seeds "
                     f"{a} and {b}, |FID({a}) − FID({b})| is {gap.mean():.3g} on average (largest {gap.max():.3g})"
                     f"{train}.")
    return lines


def regenerate(results_root) -> list[Path]:
    """Every committed summary, figure and report, then this index, from each folder's rows.csv and
    axes.json alone. Each rows.csv, findings.json and axes.json is read once, and the verdicts of the whole
    index are decided once (`verdicts.assessed`): every figure, report and the index share them."""
    from ablations.reporting.figures import plot_all
    from ablations.reporting.report import write_report
    from ablations.reporting.table import summarize, write_csv
    assessed = verdicts.assessed(results_root)
    written = []
    for folder in folders(results_root):
        rows = assessed.read(folder)
        write_csv(summarize(rows, assessed.axes(folder, rows)["axes"]), folder / "summary.csv")
        written += [folder / "summary.csv", *plot_all(folder, assessed), write_report(folder, assessed)]
    return written + [write_index(results_root, assessed)]
