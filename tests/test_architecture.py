"""Who may import what: the rule of docs/ARCHITECTURE.md, read from the modules' own imports.

- only :mod:`featx.store` imports h5py, and it imports neither torch nor the
  other two sides;
- :mod:`featx.classification` never imports :mod:`featx.extraction` (nor
  torch, except its GPU kernel of the linear models, :data:`TORCH_KERNEL`,
  inside functions only, so that a CPU run never loads it), and
  :mod:`featx.extraction` never imports :mod:`featx.classification`;
- no module imports a private name (``_x``) of another module, nor a private
  module of a package that is not its own (or an ancestor of its own); tests
  included;
- no module of featx imports itself through others: the graph of their
  imports (at module level or inside functions, not those for type checkers
  only) has no cycle.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The one module of featx.classification that may import torch, and only inside its functions.
TORCH_KERNEL = "classification._torch_linear"


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str  # absolute module imported from (or imported)
    name: str | None  # the name taken from it, None for `import module`
    in_function: bool = False  # inside a function body (runs when called, not when the module is imported)
    type_checking: bool = False  # under `if TYPE_CHECKING:` (never runs)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _package_of(path: Path, root: Path) -> str:
    name = _module_name(path, root)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports_of(path: Path, root: Path) -> list[Import]:
    """Every import of one file, relative imports made absolute (function-level imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _package_of(path, root)
    in_functions = {
        id(inner)
        for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for inner in ast.walk(node) if inner is not node
    }
    for_type_checkers = {
        id(inner)
        for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for statement in node.body for inner in ast.walk(statement)
    }
    found = []
    for node in ast.walk(tree):
        local = id(node) in in_functions
        checking = id(node) in for_type_checkers
        if isinstance(node, ast.Import):
            found += [Import(path, node.lineno, alias.name, None, local, checking) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [Import(path, node.lineno, module, alias.name, local, checking) for alias in node.names]
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(root: Path, package: str = "featx", extra_files: list[Path] = ()) -> list[str]:
    """The import rule's violations in *package* under *root* (and in *extra_files*, e.g. tests)."""
    store, extraction, classification = (f"{package}.{side}" for side in ("store", "extraction", "classification"))
    problems = []
    files = sorted((root / package).rglob("*.py"))
    for path in [*files, *extra_files]:
        in_package = path in files
        importer = _module_name(path, root) if in_package else path.name
        own_package = _package_of(path, root) if in_package else ""
        # The private modules a test or benchmark may use: those of what it tests or measures.
        beside = _tested_package(path, root, package) if not in_package else None
        for imp in imports_of(path, root):
            where = f"{path.relative_to(root)}:{imp.line}"
            targets = [imp.module] + ([f"{imp.module}.{imp.name}"] if imp.name else [])
            top = imp.module.split(".")[0]
            if in_package:
                if top == "h5py" and not _within(importer, store):
                    problems.append(f"{where}: h5py imported outside {store}")
                if _within(importer, store) and (
                    top in ("torch", "torchvision") or any(_within(t, extraction) or _within(t, classification) for t in targets)
                ):
                    problems.append(f"{where}: {store} imports {imp.module}")
                kernel = importer == f"{package}.{TORCH_KERNEL}" and top == "torch"
                if kernel and not imp.in_function:
                    problems.append(f"{where}: {importer} imports torch outside a function")
                elif _within(importer, classification) and not kernel and (
                    top in ("torch", "torchvision") or any(_within(t, extraction) for t in targets)
                ):
                    problems.append(f"{where}: {classification} imports {imp.module}")
                if _within(importer, extraction) and any(_within(t, classification) for t in targets):
                    problems.append(f"{where}: {extraction} imports {imp.module}")
            if top != package:
                continue
            # A private module may be used inside its own package and below it.
            parts = imp.module.split(".")
            for i, part in enumerate(parts):
                if part.startswith("_") and not part.startswith("__"):
                    owner = ".".join(parts[:i])
                    if not (in_package and _within(own_package, owner)) and not (beside and _within(owner, beside)):
                        problems.append(f"{where}: imports the private module {'.'.join(parts[: i + 1])}")
                    break
            if imp.name and imp.name.startswith("_") and not imp.name.startswith("__"):
                submodule = (root / Path(*parts) / f"{imp.name}.py").is_file() or (root / Path(*parts) / imp.name).is_dir()
                if not (submodule and in_package and _within(own_package, imp.module)):
                    problems.append(f"{where}: imports the private name {imp.name} from {imp.module}")
    return problems


def _tested_package(path: Path, root: Path, package: str) -> str | None:
    """``featx.<side>`` for a test under ``tests/<side>/``, ``featx`` for a benchmark, else None."""
    parts = path.relative_to(root).parts if path.is_relative_to(root) else ()
    if parts[:1] == ("benchmarks",):
        return package
    if len(parts) > 2 and parts[0] == "tests" and (root / package / parts[1]).is_dir():
        return f"{package}.{parts[1]}"
    return None


def import_graph(root: Path, package: str = "featx") -> dict[str, set[str]]:
    """Module -> the modules of *package* it imports (at module level or in functions; not for type checkers only)."""
    modules = {_module_name(path, root): path for path in sorted((root / package).rglob("*.py"))}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imp in imports_of(path, root):
            if imp.type_checking:
                continue
            submodule = f"{imp.module}.{imp.name}" if imp.name else None
            target = submodule if submodule in modules else imp.module
            if target in modules and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules that import one another, in groups (the graph's strongly connected components of two or more)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:  # Tarjan's algorithm
        order[module] = low[module] = len(order)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in order:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return sorted(cycles)


def test_no_module_of_featx_imports_itself_through_others():
    assert import_cycles(import_graph(ROOT)) == []


def test_the_cycle_check_catches_a_cycle_through_a_function_level_import(tmp_path):
    (tmp_path / "featx/extraction").mkdir(parents=True)
    (tmp_path / "featx/__init__.py").write_text("")
    (tmp_path / "featx/extraction/__init__.py").write_text("")
    (tmp_path / "featx/extraction/_layers.py").write_text("from ._models import load_model\n")
    (tmp_path / "featx/extraction/_models.py").write_text("def load_model():\n    from . import _timm\n")
    (tmp_path / "featx/extraction/_timm.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from ._network import Plan\n\nfrom ._layers import LayerIndex\n"
    )
    (tmp_path / "featx/extraction/_network.py").write_text("from ._timm import TimmNetwork\n")
    graph = import_graph(tmp_path)
    assert graph["featx.extraction._timm"] == {"featx.extraction._layers"}  # not the import for type checkers
    assert import_cycles(graph) == [["featx.extraction._layers", "featx.extraction._models", "featx.extraction._timm"]]


def test_featx_and_its_tests_follow_the_import_rule():
    tests = sorted(p for p in (ROOT / "tests").rglob("*.py"))
    benchmarks = sorted((ROOT / "benchmarks").glob("*.py"))
    assert violations(ROOT, extra_files=[*tests, *benchmarks]) == []


@pytest.mark.parametrize(
    ("path", "source", "expected"),
    [
        ("featx/classification/_bad.py", "from ..extraction import extract_features\n",
         "featx/classification/_bad.py:1: featx.classification imports featx.extraction"),
        ("featx/classification/_bad.py", "def f():\n    import torch\n",
         "featx/classification/_bad.py:2: featx.classification imports torch"),
        ("featx/classification/_torch_linear.py", "import torch\n",
         "featx/classification/_torch_linear.py:1: featx.classification._torch_linear imports torch outside a function"),
        ("featx/classification/_torch_linear.py", "from torch import nn\n\ndef f():\n    return nn\n",
         "featx/classification/_torch_linear.py:1: featx.classification._torch_linear imports torch outside a function"),
        ("featx/classification/_torch_linear.py", "def f():\n    import torchvision\n",
         "featx/classification/_torch_linear.py:2: featx.classification imports torchvision"),
        ("featx/extraction/_bad.py", "from featx.classification import FAMILIES\n",
         "featx/extraction/_bad.py:1: featx.extraction imports featx.classification"),
        ("featx/prediction.py", "import h5py\n", "featx/prediction.py:1: h5py imported outside featx.store"),
        ("featx/store/_bad.py", "from .. import extraction\n",
         "featx/store/_bad.py:1: featx.store imports featx"),
        ("featx/cli.py", "from .extraction._engine import extract_features\n",
         "featx/cli.py:1: imports the private module featx.extraction._engine"),
        ("featx/store/_bad.py", "from ._reader import _attr_value\n",
         "featx/store/_bad.py:1: imports the private name _attr_value from featx.store._reader"),
    ],
)
def test_the_rule_catches_a_violating_import(tmp_path, path, source, expected):
    for folder in ("featx/store", "featx/extraction", "featx/classification"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "featx/__init__.py").write_text("")
    (tmp_path / "featx/store/_reader.py").write_text("")
    (tmp_path / path).write_text(source)
    assert violations(tmp_path) == [expected]


def test_the_rule_allows_torch_inside_the_functions_of_the_classification_kernel_only(tmp_path):
    (tmp_path / "featx/classification").mkdir(parents=True)
    (tmp_path / "featx/__init__.py").write_text("")
    (tmp_path / "featx/classification/__init__.py").write_text("")
    (tmp_path / "featx/classification/_torch_linear.py").write_text(
        "class Adam:\n    def step(self):\n        import torch\n        from torch import nn\n"
    )
    assert violations(tmp_path) == []


def test_a_test_may_import_the_private_modules_of_what_it_tests_only(tmp_path):
    for folder in ("featx/store", "featx/extraction", "tests/store", "benchmarks"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "featx/__init__.py").write_text("")
    (tmp_path / "featx/store/__init__.py").write_text("")
    (tmp_path / "featx/extraction/__init__.py").write_text("")
    (tmp_path / "featx/store/_reader.py").write_text("")
    (tmp_path / "featx/extraction/_engine.py").write_text("")
    beside = tmp_path / "tests/store/test_reader.py"
    beside.write_text("from featx.store._reader import open_store\nfrom featx.extraction._engine import run\n")
    top = tmp_path / "tests/test_cli.py"
    top.write_text("from featx.store import _reader\n")
    bench = tmp_path / "benchmarks/speed.py"
    bench.write_text("from featx.extraction._engine import run\n")
    assert violations(tmp_path, extra_files=[beside, top, bench]) == [
        "tests/store/test_reader.py:2: imports the private module featx.extraction._engine",
        "tests/test_cli.py:1: imports the private name _reader from featx.store",
    ]


def test_the_rule_allows_a_package_its_own_private_modules(tmp_path):
    (tmp_path / "featx/store").mkdir(parents=True)
    (tmp_path / "featx/__init__.py").write_text("from ._version import __version__\n")
    (tmp_path / "featx/_version.py").write_text("__version__ = '0'\n")
    (tmp_path / "featx/store/__init__.py").write_text("from ._reader import open_store\nfrom .. import _version\n")
    (tmp_path / "featx/store/_reader.py").write_text("import h5py\nfrom .._version import __version__\n")
    assert violations(tmp_path) == []


def test_each_package_exports_what_a_user_needs_and_no_more():
    import featx.classification
    import featx.extraction
    import featx.store

    assert len(featx.extraction.__all__) <= 25, featx.extraction.__all__
    for package in (featx, featx.store, featx.extraction, featx.classification):
        assert all(not name.startswith("_") or name == "__version__" for name in package.__all__), package.__name__
        for name in package.__all__:
            getattr(package, name)  # every listed name resolves
