"""Findings are data: a spec's [[finding]] and no_paper are checked like every other key, `ablate collect` writes
them into the results folder (findings.json), and the verdicts read them there. A question's [[note]] and
[[checked]] lines are its notes file's (results/notes/<question>.toml), checked the same way when read."""
import json
import re

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import ROOT, registry_words, tiny_spec

from ablations.commands.cli import main
from ablations.grid import findings
from ablations.grid.spec import SpecError, load_spec
from ablations.reporting import axes, notes, verdicts, wording
from ablations.reporting.report import write_report
from ablations.reporting.table import summarize
from ablations.store.schema import RUN_COLUMNS, SPEC_COLUMNS, STATUS_COLUMNS

FINDING = """
[[finding]]
metric = "fid"
a = { norm = "layer" }
b = { norm = "group" }
expect = "higher"
source = "Nobody 2099"
table = "Table 9"
paper = "layer norm gives worse samples than group norm (Nobody 2099, Table 9)"
"""


def _spec(tmp_path, extra="", name="t"):
    path = tmp_path / f"{name}.toml"
    path.write_text(tiny_spec(name=name, norms='["group", "layer"]') + extra)
    return path


@pytest.mark.parametrize("change, key, words", [
    (("source =", 'colour = "red"\nsource ='), "finding[0].colour",
     "unknown key 'colour'; valid keys: a, awaits, b, expect, margin, metric, paper, source, table, untested, why"),
    (('metric = "fid"', 'metric = "fidd"'), "finding[0].metric",
     "'fidd' is not one of the valid choices: 'train_loss'"),
    (('expect = "higher"', 'expect = "better"'), "finding[0].expect",
     "'better' is not one of the valid choices: 'lower', 'higher', 'parity', 'differs'"),
    (('a = { norm = "layer" }', 'a = { colour = "layer" }'), "finding[0].a.colour",
     "'colour' is not one of the valid choices: 'norm', 'schedule', 'prediction', 'loss', 'variance', 'sampler', "
     "'steps', 'eta', 'clip_x0', 'spacing'"),
    (('expect = "higher"', 'expect = "parity"'), "finding[0].margin", "a parity finding needs a margin > 0"),
    (('expect = "higher"', 'expect = "lower"\nmargin = 5.0'), "finding[0].margin",
     "only a parity finding has a margin"),
    (('paper = "layer norm gives worse samples than group norm (Nobody 2099, Table 9)"', ""), "finding[0].paper",
     "missing; a finding needs metric, a, b, expect, source, paper"),
])
def test_a_bad_finding_is_refused_with_file_key_and_choices(tmp_path, change, key, words):
    path = _spec(tmp_path, FINDING.replace(*change))
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert str(e.value).startswith(f"{path}: key '{key}': ") and words in str(e.value), str(e.value)


@pytest.mark.parametrize("extra, key, words", [
    ('[[note]]\ntext = "FID is {fid}"\n', "note[0].text", "its fields ['fid'] must be the names of its values []"),
    ('[[note]]\ncomputed = "heun"\ntext = "x"\n', "note[0]", "give exactly one of `text`"),
    ('[[checked]]\ncomputed = "hune"\n', "checked[0].computed", "valid choices: 'sampler_identity', 'heun', 'solver'"),
    ('[[checked]]\ntext = "r {r}"\n[checked.values.r]\nof = "median"\n', "checked[0].values.r.of",
     "'median' is not one of the valid choices: 'ratio', 'range', 'mean'"),
    ('[[checked]]\ntext = "r {r}"\n[checked.values.r]\nof = "range"\nmetric = "fid"\na = { width = 3 }\n',
     "checked[0].values.r.a.width", "is not one of the valid choices: 'norm'"),
    ('[[checked]]\ntext = "r {r}"\n[checked.values.r]\nof = "mean"\nmetric = "x0_rms"\nformat = "q"\n'
     'a = { norm = "group" }\n',
     "checked[0].values.r.format", "is not a number format"),
    ('[[checked]]\ntext = "x"\nad_hoc = "yes"\n', "checked[0].ad_hoc", "expected true or false"),
    ('[[finding]]\nmetric = "fid"\n', "finding", "unknown key 'finding'; valid keys: checked, note"),
])
def test_bad_notes_are_refused_with_file_key_and_choices(tmp_path, extra, key, words):
    """A question's notes file (results/notes/<question>.toml) is checked as a spec is: the error names the file,
    the key and the valid choices; its cells name the folder's axes (here the grid's `norm`)."""
    path = tmp_path / notes.FOLDER / "t.toml"
    path.parent.mkdir()
    path.write_text(extra)
    with pytest.raises(notes.NotesError) as e:
        notes.read(tmp_path, "t", ["norm"])
    assert str(e.value).startswith(f"{path}: key '{key}': ") and words in str(e.value), str(e.value)


@pytest.mark.parametrize("extra, key, words", [
    ('[[checked]]\ncomputed = "heun"\n', "checked", "unknown key 'checked'; valid keys: "),
    ('[[note]]\ntext = "x"\n', "note", "unknown key 'note'; valid keys: "),
    ('no_paper = 3\n', "no_paper", "expected a string"),
])
def test_a_spec_states_its_question_and_findings_not_its_notes(tmp_path, extra, key, words):
    """Notes and checks are the question's notes file's, not the spec's: a spec that holds them is refused."""
    path = tmp_path / "t.toml"
    tiny = tiny_spec(norms='["group", "layer"]')
    path.write_text(tiny + extra if extra.startswith("[") else extra + tiny)  # a plain key before the tables
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert str(e.value).startswith(f"{path}: key '{key}': ") and words in str(e.value), str(e.value)


def test_the_committed_notes_are_checked_and_each_names_a_question():
    """Every results/notes/<question>.toml belongs to a spec, reads under that spec's grid axes, and quotes no
    commit hash (what a probe measured is said in words); no spec holds a note."""
    found = sorted((ROOT / "results" / notes.FOLDER).glob("*.toml"))
    assert {p.stem for p in found} == {"norm", "prediction", "sampler", "weighting"}
    for path in found:
        spec = load_spec(ROOT / "ablations" / f"{path.stem}.toml")
        said = notes.read(ROOT / "results", path.stem, spec.axes)
        assert said.note or said.checked, path
        assert not re.search(r"\bcommit [0-9a-f]{7}", path.read_text()), path
    for path in sorted((ROOT / "ablations").glob("*.toml")):
        assert not re.search(r"^\[\[(note|checked)\]\]|\bcommit [0-9a-f]{7}", path.read_text(), re.M), path
    assert notes.read(ROOT / "results", "schedule") == notes.NONE  # a question without notes


def test_the_lines_the_data_names_are_the_lines_the_verdicts_compute():
    assert set(verdicts.TESTS) == set(findings.EXPECTS)


def _collect(tmp_path, spec_path):
    """`ablate collect` (no runs: their status rows), then hand-made fid rows for 3 seeds in the folder, on
    which layer norm is 10 higher than group norm, give or take 1."""
    res = tmp_path / "res"
    r = CliRunner().invoke(main, ["collect", str(spec_path), "--runs-root", str(tmp_path / "runs"),
                                  "--results-root", str(res)])
    assert r.exit_code == 0, r.output
    spec = load_spec(spec_path)
    folder = res / spec.name
    rows = pd.DataFrame([{"run_id": f"{norm}{s}", "ablation": spec.name, "scale": None, "seed": s, "norm": norm,
                          "metric": "fid", "phase": "eval", "sampler": "ddim", "steps": 5, "eta": 0.0,
                          "clip_x0": True, "spacing": "leading", "status": "done",
                          "value": 50.0 + s + (10.0 + (s - 1) if norm == "layer" else 0.0)}
                         for s in range(3) for norm in ("group", "layer")])
    rows = rows.reindex(columns=list(dict.fromkeys([*RUN_COLUMNS, *SPEC_COLUMNS, "norm", *STATUS_COLUMNS])))
    rows.to_csv(folder / "rows.csv", index=False)
    summarize(rows, ["norm"]).to_csv(folder / "summary.csv", index=False)
    axes.write(folder, **{**axes.from_rows(rows, str(spec_path), ["norm"]),  # these rows' runs, not collect's
                          "words": registry_words(rows)})
    return spec, folder


def test_findings_travel_spec_to_collect_to_folder_to_verdicts(tmp_path):
    spec, folder = _collect(tmp_path, _spec(tmp_path, FINDING))
    written = json.loads((folder / findings.FILE).read_text())
    assert written == spec.findings and written["spec"] == "t"
    (f,) = verdicts.read(folder).findings
    assert f == verdicts.Finding("t", "fid", {"norm": "layer"}, {"norm": "group"}, "higher",
                                 "layer norm gives worse samples than group norm (Nobody 2099, Table 9)",
                                 source="Nobody 2099", table="Table 9")
    (v,) = verdicts.assess(verdicts.tables(folder.parent), verdicts.read_all(folder.parent))
    assert v["finding"] == f and v["diff"] == 10.0 and v["seeds"] == 3 and v["verdict"] == "agrees"


def test_a_folder_without_findings_says_so(tmp_path):
    spec, folder = _collect(tmp_path, _spec(tmp_path, FINDING))
    assert "| **agrees** |" in write_report(folder).read_text()
    (folder / findings.FILE).unlink()  # collected before findings were data
    report = write_report(folder).read_text()
    assert wording.LACKING in report and "| **agrees** |" not in report and "No published finding" not in report


def test_adding_a_finding_to_a_spec_and_a_note_beside_it_changes_the_report_with_no_python_edit(tmp_path):
    path = _spec(tmp_path)
    _, folder = _collect(tmp_path, path)
    before = write_report(folder).read_text()
    assert "No published finding is compared by this spec's cells." in before and "Nobody 2099" not in before
    path.write_text(path.read_text() + FINDING)
    noted = folder.parent / notes.FOLDER / "t.toml"  # the question's notes, beside its results folders
    noted.parent.mkdir()
    noted.write_text('[[note]]\ntext = "- layer over group: {gap} (from the rows)"\n[note.values.gap]\nof = "ratio"\n'
                     'metric = "fid"\na = { norm = "layer" }\nb = { norm = "group" }\nformat = ".3f"\n')
    _, folder = _collect(tmp_path, path)
    after = write_report(folder).read_text()
    assert "| fid | norm=layer, DDIM η=0 · 5 steps | norm=group, DDIM η=0 · 5 steps | layer norm gives worse samples " \
           "than group norm (Nobody 2099, Table 9) |" in after
    half = 4.303 / 3 ** 0.5  # d = 9, 10, 11: sd 1; the t table's 0.975 quantile at 2 dof
    assert f"| 10 ± {half:.2g} (95% CI) | 3 |" in after and "| **agrees** |" in after
    assert f"- layer over group: {61.0 / 51.0:.3f} (from the rows)" in after  # means 61 and 51


def test_a_typed_lines_numbers_come_from_the_rows():
    rows = pd.DataFrame([{"metric": "nll_bpd", "seed": s, "prediction": p, "value": v}
                         for s, (p, v) in enumerate([("x0", 100.3), ("x0", 115.4), ("eps", 4.1)])])
    tables = [{"text": "x0: {nll} bits/dim", "ad_hoc": False,
               "values": {"nll": {"of": "range", "metric": "nll_bpd", "a": {"prediction": "x0"}, "step": 1}}},
              {"text": "measured elsewhere", "ad_hoc": True, "values": {}}]
    assert notes.lines(rows, tables) == ["x0: 100-116 bits/dim", f"{notes.AD_HOC} measured elsewhere"]
    assert notes.lines(rows, tables, curve=True) == ["x0: 100-116 bits/dim"]  # the rows hold the curve
    empty = [{**tables[0], "values": {"nll": {**tables[0]["values"]["nll"], "a": {"prediction": "v"}}}}]
    assert notes.lines(rows, empty) == ["x0: - bits/dim"]
    # a cell's mean over seeds, and a cell named by an x0_rms row's timestep
    rms = pd.DataFrame([{"metric": "x0_rms", "seed": s, "prediction": "x0", "t": t, "value": v}
                        for s, (t, v) in enumerate([(700, 0.52), (700, 0.54), (0, 0.07), (0, 0.09)])])
    mean = [{"text": "x0 at t = 700: {e}", "values": {"e": {"of": "mean", "metric": "x0_rms", "format": ".2f",
                                                               "a": {"prediction": "x0", "t": 700}}}}]
    assert notes.lines(rms, mean) == ["x0 at t = 700: 0.53"]


def test_the_committed_folders_hold_their_specs_findings():
    """results/*/findings.json is what collect writes from today's specs: a spec edit shows in a diff."""
    for path in sorted((ROOT / "results").glob("*/findings.json")):
        name = json.loads(path.read_text())["spec"]
        scale = path.parent.name.removeprefix(name).removeprefix("-") or None  # <spec>[-<scale>]
        spec = load_spec(ROOT / "ablations" / f"{name}.toml", scale)
        assert spec.name == path.parent.name and json.loads(path.read_text()) == spec.findings, path


def test_a_folder_of_the_legacy_protocol_leaves_the_holm_family_and_says_so(tmp_path):
    """Two protocols never share a family: a folder whose FID is against the training split and that holds no
    precision/recall rows (before the protocol fixes) reads "legacy protocol", unadjusted, and the current
    folders are corrected without it."""
    spec, folder = _collect(tmp_path, _spec(tmp_path, FINDING))
    rows = pd.read_csv(folder / "rows.csv")
    current = rows.assign(reference="fashion_mnist:test:10000")
    current = pd.concat([current, current.assign(metric="precision", value=0.5)], ignore_index=True)
    other = folder.parent / "t-new"
    other.mkdir()
    for name in (findings.FILE, "axes.json"):
        (other / name).write_text((folder / name).read_text())
    current.to_csv(other / "rows.csv", index=False)
    rows.assign(reference="fashion_mnist:train:10000").to_csv(folder / "rows.csv", index=False)
    found = {v["folder"]: v for v in verdicts.assess(verdicts.tables(folder.parent), verdicts.read_all(folder.parent))}
    old, new = found["t"], found["t-new"]
    assert old["verdict"] == "legacy protocol" and old["p"] == new["p"] and old["p_holm"] != old["p_holm"]  # NaN
    assert new["verdict"] == "agrees" and new["family"] == 1 and new["p_holm"] == new["p"]  # alone in its family
    assert "legacy protocol" in wording.verdict_text(old) and "training split" in wording.verdict_text(old)
    assert verdicts.legacy(current) is None and verdicts.legacy(rows) is None  # no reference column: can't tell


def test_a_finding_that_leaves_out_a_grid_axis_is_refused_before_it_could_pool_its_values(tmp_path):
    """The fault: verdicts.select averaged every row of a seed the cell does not name, so a norm finding on a
    grid crossed with conditioning would pool a t-blind model with a t-aware one. Every varied axis is named."""
    crossed = tiny_spec(name="x", norms='["group", "layer"]').replace(
        "[grid]\n", '[grid]\nconditioning = ["add", "scale_shift"]\n')
    path = tmp_path / "x.toml"
    path.write_text(crossed + FINDING)
    with pytest.raises(SpecError, match=r"finding\[0\]\.a.*does not name grid axis 'conditioning'.*pool"):
        load_spec(path)
    path.write_text(crossed + FINDING.replace('{ norm = "layer" }', '{ norm = "layer", conditioning = "scale_shift" }')
                    .replace('{ norm = "group" }', '{ norm = "group", conditioning = "scale_shift" }'))
    assert load_spec(path).findings["findings"][0]["a"] == {"norm": "layer", "conditioning": "scale_shift"}


def test_a_finding_that_tests_part_of_its_claim_says_which_part(tmp_path):
    """`untested` names the part of the paper's claim the cells leave out: the verdict agrees with the rest only,
    and the index's verdict cell carries it as a footnote, the report's paper column in full; without it,
    neither says anything of the kind."""
    from ablations.reporting.verdicts import Finding, Published, assess
    from ablations.reporting.wording import paper_text, verdict_notes

    path = _spec(tmp_path, FINDING + 'untested = "\\"more so at small resolution\\": one resolution here"\n')
    (f,) = load_spec(path).findings["findings"]
    assert f["untested"] == '"more so at small resolution": one resolution here'
    setting = {"sampler": "ddim", "steps": 20, "eta": 0.0, "spacing": "leading", "clip_x0": True}
    rows = pd.DataFrame([{"metric": "fid", "seed": s, "norm": norm, **setting,
                          "value": 100.0 + s + 10.0 * (norm == "layer")} for s in range(3) for norm in ("group", "layer")])
    for untested in (f["untested"], ""):
        finding = Finding("t", **{**f, "untested": untested})
        (v,) = assess([("t-cpu", "t", rows)], {"t-cpu": Published("t", (finding,))})
        assert v["verdict"] == "agrees"
        said = [n for n in verdict_notes(v) if "not tested here" in n]
        assert said == ([f"not tested here, so the verdict answers the rest of the claim only: {untested}"]
                        if untested else [])
        assert ("more so at small resolution" in paper_text(finding)) == bool(untested)
