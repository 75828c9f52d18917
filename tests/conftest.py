from pathlib import Path

import pytest
from click.testing import CliRunner

from ablations.cli import main
from ablations.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """The norm question's smoke grid, run once end to end through the CLI: (spec, runs root, result)."""
    runs = tmp_path_factory.mktemp("runs")
    spec_path = str(ROOT / "ablations" / "norm.toml")
    result = CliRunner().invoke(main, ["run", spec_path, "--scale", "smoke", "--runs-root", str(runs),
                                       "--no-progress"])
    return load_spec(spec_path, "smoke"), runs, result
