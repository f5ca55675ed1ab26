"""The layers are the top-level folders: the core (``swwae_lightning/``) imports neither data, pictures
nor orchestration, data and pictures build on the core only, and the orchestration on all three, so
every package imports eagerly, in any order, without a cycle."""

import ast
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ORCHESTRATION = "orchestration"
# layer -> the top-level names its modules may not import
FORBIDDEN = {
    "core": ("datamodules", "callbacks", ORCHESTRATION),
    "data": ("callbacks", ORCHESTRATION),
    "pictures": ("datamodules", ORCHESTRATION),
}


# top-level folder -> its layer
LAYERS = {"swwae_lightning": "core", "datamodules": "data", "callbacks": "pictures", ORCHESTRATION: "orchestration"}


def layer_of(path: Path) -> str:
    return LAYERS[path.relative_to(REPO).parts[0]]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every module ``source`` imports, relative imports resolved against ``module``, lazy imports included."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}
    return found


def layer_violations(path: Path, source: str) -> list[str]:
    forbidden = FORBIDDEN.get(layer_of(path), ())
    imports = imported_modules(source, module_name(path), path.name == "__init__.py")
    return sorted(
        f"{module_name(path)} imports {name}"
        for name in imports
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    )


def package_modules() -> list[Path]:
    return sorted(p for top in LAYERS for p in (REPO / top).rglob("*.py"))


def test_no_module_imports_from_a_layer_above_its_own():
    modules = package_modules()
    assert {layer_of(p) for p in modules} == {"core", "data", "pictures", "orchestration"}
    assert [line for p in modules for line in layer_violations(p, p.read_text())] == []


@pytest.mark.parametrize(
    "path, source",
    [
        ("swwae_lightning/module.py", "def f():\n    from datamodules.sampling import EpochSampler\n"),
        ("swwae_lightning/pooling/soft.py", "from orchestration import plugins\n"),
        ("datamodules/folder.py", "import callbacks\n"),
        ("callbacks/sheet.py", "from orchestration.training import fit\n"),
    ],
)
def test_the_layer_rule_catches_an_import_from_above(path, source):
    assert layer_violations(REPO / path, source)


def test_the_report_and_the_documentation_checker_do_not_import_each_other():
    def imports(name):
        path = REPO / ORCHESTRATION / f"{name}.py"
        return imported_modules(path.read_text(), f"{ORCHESTRATION}.{name}", False)

    assert not {f"{ORCHESTRATION}.doc_checker", f"{ORCHESTRATION}.doc_tables"} & imports("report")
    assert f"{ORCHESTRATION}.report" not in imports("doc_checker") | imports("doc_tables")


@pytest.mark.parametrize(
    "order", list(itertools.permutations(["datamodules.semi_supervised", "callbacks", "swwae_lightning.module"]))
)
def test_the_packages_import_in_any_order_in_a_fresh_interpreter(order):
    script = "import importlib\n" + "".join(f"importlib.import_module({name!r})\n" for name in order)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def dataset_name_tests(source: str, names: set[str]) -> list[str]:
    """Comparisons of a value with a registered dataset's name (``dataset == "folder"``): special cases."""
    return [
        ast.unparse(node)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Compare)
        and any(isinstance(c, ast.Constant) and c.value in names for c in [node.left, *node.comparators])
    ]


def test_no_code_outside_the_data_layer_tests_a_datasets_name():
    from datamodules.datasets import DATASETS

    names = set(DATASETS.names())
    outside = [p for p in package_modules() if layer_of(p) != "data"]
    found = {module_name(p): dataset_name_tests(p.read_text(), names) for p in outside}
    assert {m: tests for m, tests in found.items() if tests} == {}
    assert dataset_name_tests('if cfg["dataset"] != "folder":\n    pass\n', names)  # the check sees one


def test_importing_the_packages_silences_none_of_the_warnings_the_trainer_quiets():
    """A library that silences warnings at import silences them in its users' code too: the Trainer's
    KnownWarnings callback quiets them while it runs, and only then."""
    samples = [
        "It is recommended to use `self.log('val/acc', ..., sync_dist=True)` when logging on epoch level",
        "`isinstance(treespec, LeafSpec)` is deprecated",
        "Grad strides do not match bucket view strides. grad.sizes() = [8, 1, 5, 5]",
    ]
    script = (
        "import warnings, importlib, sys\n"
        "for name in ('swwae_lightning.module', 'datamodules.semi_supervised', 'callbacks', 'orchestration'):\n"
        "    importlib.import_module(name)\n"
        f"samples = {samples!r}\n"
        "quiet = [s for s in samples for f in warnings.filters if f[0] == 'ignore' and f[1] and f[1].match(s)]\n"
        "print(len(quiet))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "0"
