"""The verdicts in words (ablations/reporting/verdicts.py decides them): numbers with their CIs and p-values,
a verdict with what decided it, a finding's trajectory over training and whether it is settled, and what an
inconclusive one would take."""
from ablations.reporting.verdicts import ALPHA, FILE, Finding, family_of, settled

LACKING = (f"This folder holds no {FILE}, so no finding is decided here: `ablate collect SPEC` writes the spec's "
           "findings into it.")
CHECKED_TITLE = "Where it does not reproduce: what was checked"
CHECKED_ANCHOR = "where-it-does-not-reproduce-what-was-checked"  # GitHub's anchor of that heading


def pm(mean, ci):
    if mean != mean:  # a cell the rows do not hold
        return "-"
    return f"{mean:.4g}" + (f" ± {ci:.2g}" if ci == ci else "")


def p_text(p) -> str:
    """A p-value as the tables print it."""
    return "-" if p is None or p != p else f"{p:.2g}"


def step_text(step) -> str:
    return "-" if step != step else f"{int(step):,}"


def diff_text(v: dict) -> str:
    """a − b with its CI and the CI's level."""
    if v["seeds"] == 0:
        return "-"
    return pm(v["diff"], v["diff_ci"]) + (f" ({v['level']:.0%} CI)" if v["diff_ci"] == v["diff_ci"] else "")


def paper_text(f: Finding) -> str:
    return f.paper + (f"; parity margin ±{f.margin:g} {f.metric.upper() if f.metric == 'fid' else f.metric}: "
                      f"{f.why}" if f.expect == "parity" else "")


def deciding_p(v: dict) -> str:
    """The Holm-adjusted p that decided the verdict: the reverse's for a disagreement, the claim's otherwise."""
    if v["verdict"] == "disagrees":
        return f"reverse p {p_text(v['p_reverse_holm'])}"
    return f"p {p_text(v['p_holm'])}"


def verdict_text(v: dict) -> str:
    """The verdict in bold, with why it awaits the rerun, the reverse's adjusted p that made it a disagreement,
    or which finding it repeats."""
    text = f"**{v['verdict']}**" + (f" ({deciding_p(v)})" if v["verdict"] == "disagrees" else "")
    if v["verdict"] == "awaits the rerun":
        text += f": {v['finding'].awaits}"
    if v["verdict"] == "legacy protocol":
        text += f" ({v['legacy'].split(': ', 1)[1]}): outside the Holm family until the question is rerun"
    if v["same_as"] is not None:
        text += f" (the same numbers as {v['same_as']['a']} vs {v['same_as']['b']}: counted once)"
    return text


def trajectory_text(curve: list[dict]) -> str:
    """The verdicts over training in words, e.g. "inconclusive at 350-700, agrees from 1,400"; the final
    run of one verdict reads "from" when the finding is settled."""
    state, _ = settled(curve)
    if state == "one checkpoint":
        step = curve[0]["train_step"]
        return ("last checkpoint only" if _last_only(curve) else "one checkpoint") + (
            f" ({step_text(step)} steps)" if step == step else "")
    runs = []
    for v in curve:
        if runs and runs[-1][0] == v["verdict"]:
            runs[-1][2] = v["train_step"]
        else:
            runs.append([v["verdict"], v["train_step"], v["train_step"]])
    words = []
    for i, (said, lo, hi) in enumerate(runs):
        if i == len(runs) - 1 and state == "settled":
            words.append(f"{said} from {step_text(lo)}")
        else:
            words.append(f"{said} at {step_text(lo)}" + (f"-{step_text(hi)}" if hi != lo else ""))
    return ", ".join(words)


def settled_text(curve: list[dict]) -> str:
    """Whether the finding is settled, and from which step (a finding settled as inconclusive is undecided:
    its verdict stopped changing, not the question); unsettled, with the last two checkpoints' verdicts and the
    adjusted p that decided each."""
    state, step = settled(curve)
    was, now = curve[-2:] if len(curve) > 1 else (None, None)
    undecided = " as inconclusive: undecided" if curve[-1]["verdict"] == "inconclusive" else ""
    return (f"settled from {step_text(step)} steps{undecided}" if state == "settled" else
            f"unsettled: {was['verdict']} at {step_text(was['train_step'])} ({deciding_p(was)}), {now['verdict']} at "
            f"{step_text(now['train_step'])} ({deciding_p(now)})" if state == "unsettled" else
            "not followed: its cells are scored at the last checkpoint only (`curve = false`)" if _last_only(curve)
            else "one checkpoint")


def _last_only(curve: list[dict]) -> bool:
    """Whether a finding with one verdict comes from a folder scored at several checkpoints."""
    return len(curve) == 1 and curve[0].get("n_checkpoints", 1) > 1


def settled_cell(curve: list[dict]) -> str:
    """Whether the finding is settled, and what its last verdict would take when inconclusive."""
    return "; ".join(filter(None, (settled_text(curve), to_decide_text(curve[-1]))))


def to_decide_text(v: dict) -> str:
    """What an inconclusive verdict would take, in words ('' for any other verdict)."""
    if v.get("to_decide") is None:
        return ""
    n, toward = v["to_decide"]
    sd = float(v["per_seed"].std())
    alpha = f"α = {ALPHA:g}/{v['family']}" if v["family"] > 1 else f"α = {ALPHA:g}"
    if n is None:
        return (f"no number of seeds up to 100 would decide it at {alpha}: mean a − b {v['diff']:.3g} against "
                f"a per-seed sd of {sd:.3g}")
    return (f"about {n} seeds would decide it ({toward}, 80% power at {alpha}, if the mean a − b {v['diff']:.3g} "
            f"and its per-seed sd {sd:.3g} held)")


def family_lines(found: list[dict]) -> list[str]:
    """Which family each of these verdicts was corrected in, and its size."""
    out = []
    for name in dict.fromkeys(family_of(v["finding"]) for v in found):
        m = next(v["family"] for v in found if family_of(v["finding"]) == name)
        if not m:  # its findings are legacy or untested: no family
            continue
        what = ("distinct published finding{s} with two seeds or more in the results index (results/README.md)"
                if name == "published" else f"comparison{{s}} of the {name} question without a published direction")
        out.append(f"Holm's family: the {m} {what.format(s='s' if m != 1 else '')}.")
    return out


def checked(v: dict) -> bool:
    """Whether a verdict gets the "what was checked" section: a published finding that did not reproduce (a
    legacy folder's: its raw test does not pass), on seeds enough for a test."""
    legacy_open = v["verdict"] == "legacy protocol" and not v["p"] < ALPHA
    undecided = v["verdict"] in ("disagrees", "inconclusive") or legacy_open
    return undecided and v["finding"].expect != "differs" and v["seeds"] > 1


def over_line(curve: list[dict]) -> str:
    """A finding's paired difference at each checkpoint, from the rows (markdown line)."""
    v = curve[-1]
    at = "; ".join(f"{pm(x['diff'], x['diff_ci'])} at {step_text(x['train_step'])} ({x['seeds']} seeds)" for x in curve)
    return (f"- **{v['finding'].metric}: {v['a']} − {v['b']} over training** ({v['level']:.0%} CI): {at}. "
            f"Verdict: {trajectory_text(curve)}; {settled_text(curve)}.")


def per_seed(v: dict) -> str:
    """The paired differences behind a verdict, one per training seed."""
    d = ", ".join(f"seed {int(s)}: {x:+.3g}" for s, x in v["per_seed"].items())
    holm = (f" Raw p = {p_text(v['p'])} < {ALPHA}: it passes alone and drops out under Holm's correction "
            f"(adjusted p = {p_text(v['p_holm'])})." if v["p"] < ALPHA <= v["p_holm"] else "")
    return f"- **{v['finding'].metric}: {v['a']} − {v['b']}** ({v['verdict']}), per training seed: {d}.{holm}"
