"""The house rules: core/ is the math and the model (torch and the standard library only); ablations/ shows
the specs a researcher edits, with the suite in sub-packages named for their jobs, stacked in floors that import
only downwards, with no circle of imports anywhere; the reporting package reads files (neither torch nor model
code); results/ holds results and no code. Checked on the source and in a fresh interpreter."""
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


# ablations/'s sub-packages (README), bottom first, core/ under them all: each imports only the floors below it.
# run: what a run is (config, axes, seeds, dataset shapes, the model build); store: the run folder; metrics: FID;
# grid: reading a spec into runs; running: training and scoring; reporting: tables and figures; commands: `ablate`.
FLOORS = ("run", "store", "metrics", "grid", "running", "reporting", "commands")
SUITE = set(FLOORS)


def test_ablations_shows_the_specs_and_the_suite_sits_in_its_sub_packages():
    top = ROOT / "ablations"
    assert {p.name for p in top.glob("*.py")} == {"__init__.py"}
    assert (top / "scales.toml").is_file() and len(list(top.glob("*.toml"))) > 1
    assert {p.name for p in top.iterdir() if p.is_dir() and p.name != "__pycache__"} == SUITE
    for package in SUITE:
        assert (top / package / "__init__.py").is_file(), package


def _module(path: Path) -> str:
    """The dotted name of a source file under ROOT: ablations/run/config.py -> ablations.run.config."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _arrows(package: str) -> dict[str, set[str]]:
    """{module: the modules of `package` (and below) it imports}, at module level or inside a function."""
    modules = {_module(p): p for p in (ROOT / package).rglob("*.py")}
    arrows = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}:{node.lineno}: a relative import"
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        arrows[name] = found & modules.keys() - {name}
    return arrows


def _floor(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in SUITE else None


def test_each_floor_of_the_suite_imports_only_the_floors_below_it():
    back = [f"{a} -> {b}" for a, targets in _arrows("ablations").items() for b in sorted(targets)
            if _floor(a) and _floor(b) and FLOORS.index(_floor(b)) > FLOORS.index(_floor(a))]
    assert not back, f"imports that go up the floors {FLOORS}: {back}"


@pytest.mark.parametrize("package", ["core", "ablations"])
def test_no_module_imports_itself_round_a_circle(package):
    arrows = _arrows(package)
    circles = set()
    for start in arrows:
        seen, todo = set(), list(arrows[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += arrows[m]
        if start in seen:
            circles.add(start)
    assert not circles, f"modules on a circle of imports: {sorted(circles)}"


def test_results_holds_results_and_no_code():
    assert not [p for p in (ROOT / "results").rglob("*.py")], "results/ holds Python"


@pytest.mark.parametrize("package, forbidden", [("ablations/reporting", {"torch", "core", "torchvision",
                                                                         "torch_fidelity"}),
                                                ("core", {"ablations", "results", "slurm", "bench"})])
def test_import_direction_in_source(package, forbidden):
    for path in (ROOT / package).rglob("*.py"):
        assert not _imports(path) & forbidden, f"{path} imports {sorted(_imports(path) & forbidden)}"


def test_reporting_and_the_run_folder_layout_load_without_torch():
    code = ("import sys; import ablations.reporting.table, ablations.reporting.plots, ablations.reporting.report, "
            "ablations.reporting.bench, ablations.reporting.index, ablations.reporting.verdicts, "
            "ablations.reporting.wording, ablations.reporting.notes, ablations.reporting.figures; "
            "import ablations.store.layout, ablations.store.schema, ablations.run.seeds, ablations.store.io, ablations.store.migrate, "
            "ablations.run.config, ablations.run.shapes, ablations.store.claim; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'core', 'torchvision')); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


NAMEDTUPLE_API = {"_fields", "_asdict", "_replace", "_make"}  # public, underscored only to avoid field clashes


def test_no_private_names_are_imported_across_modules():
    for package in ("core", "ablations", "slurm", "bench"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    assert not [a.name for a in node.names if a.name.startswith("_")], f"{path}: {ast.dump(node)}"
                if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                        and node.attr not in NAMEDTUPLE_API:
                    owner = node.value
                    assert not (isinstance(owner, ast.Name) and owner.id not in ("self", "cls", "torch")), \
                        f"{path}:{node.lineno} uses private {ast.unparse(node)}"


LONGEST = 60  # lines of a function, its docstring included: a longer one is split into named steps


def test_functions_read_as_their_steps():
    long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno} lines)"
            for package in ("core", "ablations") for path in sorted((ROOT / package).rglob("*.py"))
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno > LONGEST]
    assert not long, f"functions over {LONGEST} lines: {long}"
