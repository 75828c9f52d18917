"""The house rules: core/ is the math and the model (torch and the standard library only), and
results/ reads files (neither torch nor model code). Checked on the source and in a fresh interpreter."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE_MODULES = {"schedules", "diffusion", "parameterizations", "distributions", "losses", "likelihood", "samplers",
                "unet", "registry"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_core_holds_only_the_math_and_the_model():
    modules = {p.stem for p in (ROOT / "core").glob("*.py")} - {"__init__"}
    assert modules == CORE_MODULES
    assert not [p for p in (ROOT / "core").iterdir() if p.is_dir() and p.name != "__pycache__"]
    for path in (ROOT / "core").glob("*.py"):
        outside = _imports(path) - {"torch", "core"} - set(sys.stdlib_module_names)
        assert not outside, f"{path.name} imports {sorted(outside)}"


@pytest.mark.parametrize("package, forbidden", [("results", {"torch", "core", "torchvision", "torch_fidelity"}),
                                                ("core", {"ablations", "results", "slurm", "bench"})])
def test_import_direction_in_source(package, forbidden):
    for path in (ROOT / package).glob("*.py"):
        assert not _imports(path) & forbidden, f"{path} imports {sorted(_imports(path) & forbidden)}"


def test_results_and_the_run_folder_layout_load_without_torch():
    code = ("import sys; import results.table, results.plots, results.report, results.bench; "
            "import ablations.layout, ablations.schema, ablations.seeds, ablations.io, ablations.migrate, "
            "ablations.config, ablations.claim; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'core', 'torchvision')); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


NAMEDTUPLE_API = {"_fields", "_asdict", "_replace", "_make"}  # public, underscored only to avoid field clashes


def test_no_private_names_are_imported_across_modules():
    for package in ("core", "ablations", "results", "slurm", "bench"):
        for path in (ROOT / package).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    assert not [a.name for a in node.names if a.name.startswith("_")], f"{path}: {ast.dump(node)}"
                if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                        and node.attr not in NAMEDTUPLE_API:
                    owner = node.value
                    assert not (isinstance(owner, ast.Name) and owner.id not in ("self", "cls", "torch")), \
                        f"{path}:{node.lineno} uses private {ast.unparse(node)}"
