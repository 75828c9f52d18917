import os
from pathlib import Path

# One thread for the tests and every process they start (CLI runs, SLURM jobs, killers): their nets are tiny,
# where a second thread only adds synchronisation, and on a busy machine a thread that waits for a descheduled
# sibling at every op made a tiny run 5x slower (9.5 s vs 48 s for two tiny runs beside other work). Every run a
# test compares with another is trained with the same count.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from ablations.commands.cli import main  # noqa: E402
from ablations.grid.spec import load_spec  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
TINY = """
name = "{name}"
seeds = [0]
[base]
T = 100
model_channels = 8
mults = [1, 2]
res_blocks = 1
groups = 4
batch = 16
train_steps = {steps}
checkpoint_every = {every}
[grid]
norm = {norms}
[eval]
fid_samples = 32
fid_reference_n = 1000
sample_batch = 32
nll_images = 8
nll_strata = 2
grid_images = 16
[[eval.setting]]
sampler = "ddim"
steps = {sample_steps}
"""


def tiny_spec(name="t", norms='["group"]', steps=4, every=2, sample_steps="5") -> str:
    """A spec of a tiny net that trains and evaluates end to end in seconds."""
    return TINY.format(name=name, norms=norms, steps=steps, every=every, sample_steps=sample_steps)


def spec_findings(*folders) -> dict:
    """folder (<spec>[-<scale>]) -> its spec's findings, as `ablate collect` writes them into findings.json:
    what a test decides by, read from ablations/ rather than from a committed results folder."""
    from ablations.reporting.verdicts import published
    return {name: published(load_spec(ROOT / "ablations" / f"{name.split('-')[0]}.toml").findings)
            for name in folders}


def registry_words(rows) -> dict:
    """The legend words of the samplers `rows` name, from their registry entries: what `ablate collect` writes
    into a folder's axes.json (`words`)."""
    from ablations.commands.results import words
    return words(rows["sampler"].dropna().unique()) if "sampler" in rows else {}


def worded(rows):
    """`rows` as reporting reads a collected folder's: each sampler's legend word beside it (`axes.with_words`)."""
    from ablations.reporting.axes import with_words
    return with_words(rows, {"words": registry_words(rows)})


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """The norm question's smoke grid, run once end to end through the CLI, by two worker processes (one a
    core, as `ablate run --workers 2`): (spec, runs root, result)."""
    runs = tmp_path_factory.mktemp("runs")
    spec_path = str(ROOT / "ablations" / "norm.toml")
    result = CliRunner().invoke(main, ["run", spec_path, "--scale", "smoke", "--runs-root", str(runs),
                                       "--no-progress", "--workers", "2"])
    return load_spec(spec_path, "smoke"), runs, result
