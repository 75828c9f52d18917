"""No silent wrong numbers: bad input is rejected before anything runs, writes are recoverable at every
boundary, a torn checkpoint is recovered, interrupted runs say so, and bad bytes never crash a command."""
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_spec

from ablations.run import data
from ablations.commands.cli import main
from ablations.run.config import TrainConfig
from ablations.store.io import read_jsonl, write_json
from ablations.store.layout import checkpoints, read_status, run_folder
from ablations.store.schema import key
from ablations.grid.spec import SpecError, load_spec
from ablations.running.training import train

ROOT = Path(__file__).resolve().parent.parent
SPEC = tiny_spec("rel", sample_steps="[3, 5]")


def _write(tmp_path, text, name="spec.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _ablate(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _edit(old, new):
    assert old in SPEC, old
    return SPEC.replace(old, new, 1)


# (case, spec text, key as written, words the message must hold)
MALFORMED = [
    ("T < 2", _edit("T = 100", "T = 1"), "base.T", ">= 2"),
    ("negative lr", _edit("[base]\n", "[base]\nlr = -1.0\n"), "base.lr", "> 0"),
    ("negative weight_decay", _edit("[base]\n", "[base]\nweight_decay = -1.0\n"), "base.weight_decay", ">= 0"),
    ("zero groups", _edit("groups = 4", "groups = 0"), "base.groups", ">= 1"),
    ("empty mults", _edit("mults = [1, 2]", "mults = []"), "base.mults", "non-empty"),
    ("zero mult", _edit("mults = [1, 2]", "mults = [0, 2]"), "base.mults", ">= 1"),
    ("dropout 1", _edit("[base]\n", "[base]\ndropout = 1.0\n"), "base.dropout", "[0, 1)"),
    ("ema_decay 1", _edit("[base]\n", "[base]\nema_decay = 1.0\n"), "base.ema_decay", "[0, 1)"),
    ("zero batch", _edit("batch = 16", "batch = 0"), "base.batch", ">= 1"),
    ("zero train_steps", _edit("train_steps = 4", "train_steps = 0"), "base.train_steps", ">= 1"),
    ("zero checkpoint_every", _edit("checkpoint_every = 2", "checkpoint_every = 0"), "base.checkpoint_every", ">= 1"),
    ("negative warmup", _edit("[base]\n", "[base]\nwarmup = -5\n"), "base.warmup", ">= 0"),
    ("zero heads", _edit("[base]\n", "[base]\nheads = 0\n"), "base.heads", ">= 1"),
    ("attention side the model lacks", _edit("[base]\n", "[base]\nattention = [5]\n"), "base.attention",
     "valid sides for fashion_mnist with mults [1, 2]: [28, 14]"),
    ("heads not dividing channels", _edit("[base]\n", "[base]\nheads = 3\n"), "base.heads", "divisible"),
    ("seed in base", _edit("[base]\n", "[base]\nseed = 7\n"), "base.seed", "seeds"),
    ("seed in a grid table", _edit('norm = ["group"]', 'norm = [{norm = "group", seed = 7}]'), "grid.norm[0].seed",
     "seeds"),
    ("grid table naming no config field", _edit('norm = ["group"]', 'case = [{lr_rate = 1.0}]'),
     "grid.case[0].lr_rate", "unknown key"),
    ("fid_samples 0", _edit("fid_samples = 32", "fid_samples = 0"), "eval.fid_samples", ">= 2"),
    ("sample_batch 0", _edit("sample_batch = 32", "sample_batch = 0"), "eval.sample_batch", ">= 1"),
    ("nll_images -1", _edit("nll_images = 8", "nll_images = -1"), "eval.nll_images", ">= 1"),
    ("nll_strata -3", _edit("nll_strata = 2", "nll_strata = -3"), "eval.nll_strata", ">= 0"),
    ("nll_strata > T", _edit("nll_strata = 2", "nll_strata = 101"), "eval.nll_strata", "valid: 0..100"),
    ("grid_images 0", _edit("grid_images = 16", "grid_images = 0"), "eval.grid_images", ">= 1"),
    ("grid_images > fid_samples", _edit("grid_images = 16", "grid_images = 33"), "eval.grid_images", "1..32"),
    ("unknown reference split", _edit("[eval]\n", '[eval]\nfid_reference = "val"\n'), "eval.fid_reference",
     "'train' or 'test'"),
    ("reference n > split", _edit("fid_reference_n = 1000", "fid_reference_n = 70000"), "eval.fid_reference_n",
     "valid: 0..60000"),
    ("nll_images > test split", _edit("nll_images = 8", "nll_images = 10001"), "eval.nll_images", "1..10000"),
    ("cifar10 with the fmnist extractor", _edit("[eval]\n", '[eval]\nfid_extractor = "fmnist-classifier"\n')
     .replace("[base]\n", '[base]\ndataset = "cifar10"\n'), "eval.fid_extractor", "'inception-v3-compat'"),
    ("missing inception weights", _edit("[eval]\n", '[eval]\nfid_extractor = "inception-v3-compat"\n'
                                        'inception_weights = "/nonexistent/w.pth"\n'), "eval.inception_weights",
     "/nonexistent/w.pth"),
    ("empty inception weights", None, "eval.inception_weights", "not a loadable weights file"),
    ("eta for ddpm", _edit('sampler = "ddim"', 'sampler = "ddpm"\neta = 0.5'), "eval.setting[0].eta",
     "ddpm has no eta"),
    ("unknown spacing", _edit("steps = [3, 5]", 'steps = [3, 5]\nspacing = "middle"'), "eval.setting[0].spacing",
     "'leading', 'trailing', 'linspace'"),
    ("eps with zero terminal SNR", _edit("[base]\n", "[base]\nzero_terminal_snr = true\n"), "base.zero_terminal_snr",
     "x0 is undefined"),
    ("name with a path", _edit('name = "rel"', 'name = "../../x"'), "name", "plain name"),
    ("absolute name", _edit('name = "rel"', 'name = "/tmp/x"'), "name", "plain name"),
    ("batch in the scale table", SPEC + "[scale.smoke.base]\nbatch = 0\n", "scale.smoke.base.batch", ">= 1"),
]


@pytest.mark.parametrize("case, text, where, words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_specs_are_rejected_before_anything_runs(tmp_path, case, text, where, words):
    if text is None:  # an empty weights file
        weights = tmp_path / "empty.pth"
        weights.write_bytes(b"")
        text = _edit("[eval]\n", f'[eval]\nfid_extractor = "inception-v3-compat"\ninception_weights = "{weights}"\n')
    path = _write(tmp_path, text)
    scale = ["--scale", "smoke"] if "[scale.smoke" in text else []
    with pytest.raises(SpecError) as e:
        load_spec(path, scale[1] if scale else None)
    msg = str(e.value)
    assert msg.startswith(f"{path}: key '{where}': ") and words in msg, msg
    runs, results = tmp_path / "runs", tmp_path / "results"
    for cmd in (["run", path, "--dry-run"], ["run", path], ["submit", path, "--dry-run"], ["submit", path],
                ["collect", path, "--results-root", results]):
        r = _ablate(*cmd, *scale, "--runs-root", runs)
        assert r.exit_code == 1 and f"Error: {path}: key '{where}'" in r.output, (cmd, r.output)
        assert "Traceback" not in r.output
    assert len(MALFORMED) >= 30
    assert not runs.exists() and not results.exists()  # nothing written
    assert not (Path("/tmp") / "x").exists() or case != "absolute name"


def test_a_spec_that_is_not_text_gets_one_line(tmp_path):
    path = tmp_path / "bin.toml"
    path.write_bytes(b"name = \"x\"\n\xff\xfe\x00binary")
    r = _ablate("run", path, "--runs-root", tmp_path / "runs")
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        f"Error: {path}: not UTF-8 text (byte 11); a spec is a TOML text file"]


def _run(spec_path, runs, *extra, env=None, check=True):
    r = subprocess.run([sys.executable, "-m", "ablations.commands.cli", "run", str(spec_path), "--runs-root", str(runs),
                        "--no-progress", *extra], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env={**os.environ, **(env or {})})
    assert not check or r.returncode == 0, r.stdout + r.stderr
    return r


KILLER = """
import os, re, sys
from pathlib import Path
from ablations.running import runner, scoring
writes, armed = [0], [False]
kill_at = int(os.environ["KILL_AT"])  # 0: never; the write classes go to WRITES_LOG
def kind(name, a):
    \"\"\"A write's class: the function, the file (digits and run ids as N) and what it writes (the status's
    state; the rows' phase and first metric).\"\"\"
    target = a[0] if name != "write_status" else Path(a[0]) / "status.json"
    what = a[1] if name == "write_status" else a[1][0]["phase"] + " " + a[1][0]["metric"] if name == "append_jsonl" else ""
    return f"{name} {re.sub('[0-9a-f]{10}|[0-9]+', 'N', Path(target).name)} {what}".strip()
def killing(fn):
    def wrapped(*a, **k):
        if armed[0]:
            writes[0] += 1
            if writes[0] == kill_at:
                os._exit(9)  # dies before this write, as a kill -9 would
            if not kill_at:
                with open(os.environ["WRITES_LOG"], "a") as f:
                    f.write(kind(fn.__name__, a) + "\\n")
        return fn(*a, **k)
    return wrapped
for module, names in ((runner, ("append_jsonl", "atomic_write", "write_status")), (scoring, ("atomic_write",))):
    for name in names:  # the rows' appends and the run's status (runner), the samples files and grids (scoring)
        setattr(module, name, killing(getattr(module, name)))
evaluate = scoring.evaluate
def armed_evaluate(*a, **k):
    armed[0] = True
    return evaluate(*a, **k)
scoring.evaluate = armed_evaluate
from ablations.commands.cli import main
sys.exit(main())
"""


def _killer(killer, path, runs, kill_at, log=None):
    return subprocess.run([sys.executable, str(killer), "run", str(path), "--runs-root", str(runs), "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "KILL_AT": str(kill_at), "WRITES_LOG": str(log), "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def writes(tmp_path_factory):
    """A two-seed spec run once uninterrupted through the killer, which lists every write from the first
    evaluation on with its class (function, file, what it writes): (tmp folder, spec, killer, the writes'
    classes in order, each class's first write (1-based), the uninterrupted summary)."""
    tmp = tmp_path_factory.mktemp("writes")
    path = _write(tmp, _edit("seeds = [0]", "seeds = [0, 1]"))
    killer = _write(tmp, KILLER, "killer.py")
    r = _killer(killer, path, tmp / "reference", 0, tmp / "writes.txt")
    assert r.returncode == 0, r.stdout + r.stderr
    expected = pd.read_csv(_collect(path, tmp / "reference", tmp / "ref-results") / "summary.csv")
    kinds = (tmp / "writes.txt").read_text().splitlines()
    first = {k: i + 1 for i, k in reversed(list(enumerate(kinds)))}
    assert {"append_jsonl rows.jsonl eval fid_wall_s", "append_jsonl rows.jsonl eval nll_wall_s",
            "write_status status.json done", "atomic_write samples-ddim-N-etaN-stepN.png",
            "append_jsonl rows.jsonl train train_loss"} <= set(first), kinds
    return tmp, path, killer, kinds, first, expected


PARTS = ("the first setting", "the NLL and done", "the next run's start")  # where the first write of a class falls


@pytest.mark.parametrize("part", PARTS)
def test_a_kill_at_every_write_boundary_of_evaluation_resumes_without_duplicates(writes, part):
    """Evaluation writes: per setting its sampling rows, a sample grid, its samples and its FID and PRC rows,
    then the NLL rows and `done`; then the next run starts, trains and writes the same. Killing before the
    first write of each class (`writes`), then re-running, must give every row once (seeds = 1 per cell) and
    the uninterrupted run's numbers. A later write of a class (the next setting's grid, the next run's rows) is
    the same code at the same boundary, so it is not killed again. The classes are split in three parts: up to
    the first setting's last rows, up to the first run's `done`, and after it; two kills run at a time, one a
    core."""
    tmp, path, killer, kinds, first, expected = writes
    ends = (first["append_jsonl rows.jsonl eval prc_wall_s"], kinds.index("write_status status.json done") + 1,
            len(kinds))
    at = PARTS.index(part)
    boundaries = sorted(b for b in first.values() if (ends[at - 1] if at else 0) < b <= ends[at])
    assert boundaries, part

    def kill_and_resume(boundary):
        runs = tmp / f"runs{boundary}"
        killed = _killer(killer, path, runs, boundary)
        return killed, _run(path, runs, check=False)

    with ThreadPoolExecutor(2) as pool:
        outcomes = dict(zip(boundaries, pool.map(kill_and_resume, boundaries)))
    for boundary, (killed, resumed) in outcomes.items():
        assert killed.returncode == 9, (boundary, kinds[boundary - 1], killed.stdout + killed.stderr)
        assert resumed.returncode == 0, (boundary, resumed.stdout + resumed.stderr)
        runs = tmp / f"runs{boundary}"
        summary = pd.read_csv(_collect(path, runs, tmp / f"res{boundary}") / "summary.csv")
        for run in load_spec(path).runs:
            rows, bad = read_jsonl(run_folder(runs, run.run_id) / "rows.jsonl")
            keys = [key(x) for x in rows if x["phase"] == "eval"]
            assert len(keys) == len(set(keys)) and bad == 0, boundary
        cells = summary[summary["metric"].isin(["fid", "nll_bpd", "sample_img_per_s"])]
        assert (cells["seeds"] == 2).all(), (boundary, cells)
        fid = lambda s: s[s["metric"] == "fid"].sort_values("steps")["mean"].tolist()  # noqa: E731
        assert fid(summary) == fid(expected), boundary  # the same numbers as an uninterrupted run
    print(f"{part}: {len(boundaries)} of {len(first)} write classes ({len(kinds)} writes): "
          f"{[kinds[b - 1] for b in boundaries]}")


def _collect(path, runs, results):
    r = _ablate("collect", path, "--runs-root", runs, "--results-root", results)
    assert r.exit_code == 0, r.output
    return results / load_spec(path).name


TINY = TrainConfig(T=100, model_channels=8, mults=(1, 2), res_blocks=1, batch=8, train_steps=7,
                   checkpoint_every=2, lr=1e-3, warmup=3, dropout=0.1, norm="batch", ema_decay=0.9)


def _weights(result):
    return {f"{p}.{k}": v for p in ("model", "ema") for k, v in result[p].state_dict().items()}


def test_a_torn_latest_checkpoint_falls_back_to_the_previous_one_bitwise(tmp_path):
    images = data.load("fashion_mnist", "train")[0][:512]
    full = train(TINY, tmp_path / "a", images, device="cpu", progress=False)
    train(TINY, tmp_path / "b", images, device="cpu", progress=False, stop_at=5)
    names = [p.name for p in checkpoints(tmp_path / "b")]
    assert names == ["ckpt-00000002.pt", "ckpt-00000004.pt"]
    latest = tmp_path / "b" / names[-1]
    latest.write_bytes(latest.read_bytes()[:1000])  # a power loss mid-write
    (tmp_path / "b" / ".ckpt-00000006.pt.x1.tmp").write_bytes(b"orphan")
    lines = []
    resumed = train(TINY, tmp_path / "b", images, device="cpu", progress=False, log=lines.append)
    assert "ckpt-00000004.pt is unreadable" in lines[0] and "resuming from ckpt-00000002.pt" in lines[0]
    assert (tmp_path / "b" / "ckpt-00000004.pt.torn").exists()
    a, b = _weights(full), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["steps_timed"] == 7 - 2 + 2  # steps 1-2 (first segment, up to its kept checkpoint) + 3-7


def test_training_time_and_loss_rows_are_summed_over_segments(tmp_path):
    images = data.load("fashion_mnist", "train")[0][:512]
    cfg = replace(TINY, train_steps=200, checkpoint_every=30)  # logs every 2 steps
    logged_full, logged = [], []
    full = train(cfg, tmp_path / "a", images, device="cpu", progress=False,
                 on_log=lambda s, v: logged_full.append((s, v)))
    train(cfg, tmp_path / "b", images, device="cpu", progress=False, stop_at=61,
          on_log=lambda s, v: logged.append((s, v)))
    resumed = train(cfg, tmp_path / "b", images, device="cpu", progress=False,
                    on_log=lambda s, v: logged.append((s, v)))
    assert resumed["steps_timed"] == full["steps_timed"] == 200
    assert resumed["wall_s"] > 0.5 * full["wall_s"]  # not only the last segment's time
    after = [v for s, v in logged if s > 60]  # what was logged since the checkpoint at 60
    assert after == [v for s, v in logged_full if s > 60]  # the first row after resume averages all its steps


def test_ctrl_c_marks_the_run_interrupted_and_a_rerun_resumes(tmp_path):
    path = _write(tmp_path, _edit("train_steps = 4", "train_steps = 3000").replace("checkpoint_every = 2",
                                                                                 "checkpoint_every = 50"))
    runs = tmp_path / "runs"
    run = load_spec(path).runs[0]
    folder = run_folder(runs, run.run_id)
    proc = subprocess.Popen([sys.executable, "-m", "ablations.commands.cli", "run", str(path), "--runs-root", str(runs),
                             "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not checkpoints(folder):
        assert time.time() - t0 < 300 and proc.poll() is None
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, out
    st = read_status(folder)
    assert st["state"] == "interrupted" and st["step"] >= 50
    assert f"ckpt-{st['step']:08d}.pt" == checkpoints(folder)[-1].name  # stopped at a step, with a checkpoint
    assert "interrupted at step" in (folder / "log.txt").read_text()
    assert "interrupted" in _ablate("list", path, "--runs-root", runs).output


def test_a_killed_run_shows_interrupted_not_running(tmp_path):
    path = _write(tmp_path, SPEC)
    runs = tmp_path / "runs"
    folder = run_folder(runs, load_spec(path).runs[0].run_id)
    folder.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    write_json(folder / "status.json", {"state": "running", "pid": int(dead), "host": os.uname().nodename,
                                        "step": 2})
    listing = _ablate("list", path, "--runs-root", runs).output
    assert " interrupted " in listing and " running " not in listing, listing
    orphan = folder / ".rows.jsonl.abc123.tmp"  # left by a write that was killed before its rename
    orphan.write_text("half")
    assert _ablate("run", path, "--runs-root", runs, "--no-progress").exit_code == 0
    assert read_status(folder)["state"] == "done" and not orphan.exists()


def test_rows_that_are_not_rows_are_skipped_and_counted(tmp_path):
    path = _write(tmp_path, SPEC)
    runs = tmp_path / "runs"
    _run(path, runs)
    folder = run_folder(runs, load_spec(path).runs[0].run_id)
    with open(folder / "rows.jsonl", "ab") as f:
        f.write(b'{}\n[1, 2]\nNaN\n{"metric": "fid", "value": \xff}\n{"metric": "fid", "val')
    for cmd in (["list", path], ["run", path, "--no-progress"]):
        assert _ablate(*cmd, "--runs-root", runs).exit_code == 0
    out = _ablate("collect", path, "--runs-root", runs, "--results-root", tmp_path / "res").output
    assert "5 lines that are not rows skipped" in out, out


def test_collect_with_no_rows_yet_writes_an_empty_table(tmp_path):
    path = _write(tmp_path, SPEC)
    out = _ablate("collect", path, "--runs-root", tmp_path / "runs", "--results-root", tmp_path / "res")
    assert out.exit_code == 0, out.output
    rows = pd.read_csv(tmp_path / "res" / "rel" / "rows.csv")
    assert rows["status"].tolist() == ["pending"]


def test_files_get_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644


def test_overlapping_runs_with_one_killed_end_as_a_serial_run(tmp_path):
    """Two `ablate run` on overlapping grids and one runs root; one is killed (-9) partway, then re-run.
    Every run ends trained once (resumed, not restarted), with every row once and a serial run's numbers."""
    text = _edit("train_steps = 4", "train_steps = 60").replace("checkpoint_every = 2", "checkpoint_every = 10")
    a = _write(tmp_path, text.replace('norm = ["group"]', 'norm = ["group", "layer"]'), "a.toml")
    b = _write(tmp_path, text.replace('name = "rel"', 'name = "rel2"').replace('norm = ["group"]',
                                                                            'norm = ["layer", "instance"]'), "b.toml")
    serial, runs = tmp_path / "serial", tmp_path / "runs"
    _run(a, serial)
    _run(b, serial)
    cmd = [sys.executable, "-m", "ablations.commands.cli", "run"]
    pa, pb = (subprocess.Popen([*cmd, str(p), "--runs-root", str(runs), "--no-progress"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in (a, b))
    t0 = time.time()
    while not any(checkpoints(f) for f in runs.glob("*/")) and time.time() - t0 < 300:
        time.sleep(0.2)
    pa.kill()
    pa.wait()
    assert pb.wait(timeout=900) == 0
    _run(a, runs)
    ids = {r.run_id for p in (a, b) for r in load_spec(p).runs}
    for run_id in ids:
        rows = read_jsonl(run_folder(runs, run_id) / "rows.jsonl")[0]
        keys = [key(r) for r in rows if r["phase"] == "eval"]
        assert len(keys) == len(set(keys)) and [r["metric"] for r in rows].count("train_wall_s") == 1
        got = sorted((r["steps"], r["value"]) for r in rows if r["metric"] in ("fid", "nll_bpd") and r["steps"])
        want = sorted((r["steps"], r["value"]) for r in read_jsonl(run_folder(serial, run_id) / "rows.jsonl")[0]
                      if r["metric"] in ("fid", "nll_bpd") and r["steps"])
        assert got == want, run_id
        losses = lambda root: [r["value"] for r in read_jsonl(run_folder(root, run_id) / "rows.jsonl")[0]  # noqa: E731
                               if r["metric"] == "train_loss"]
        assert losses(runs) == losses(serial), run_id
