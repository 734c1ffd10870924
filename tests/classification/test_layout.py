"""How the classification code is laid out: every family fact in the registry, no import circle.

Read from the source with ``ast``, as ``tests/test_architecture.py`` reads imports:

- no module of featx but ``featx/classification/_registry.py`` compares a
  classifier family's name (``==``, ``!=``, ``in``, ``match``/``case``): what
  differs between families is an attribute of their registry entry, so adding
  a family is one entry there and its estimator's module;
- the modules of :mod:`featx.classification` import one another without a
  circle (function-level and ``TYPE_CHECKING`` imports included).
"""

from __future__ import annotations

import ast
from pathlib import Path

from test_architecture import imports_of

from featx.classification import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = Path("featx/classification/_registry.py")


def _family_names(node: ast.AST, names: set[str]) -> set[str]:
    """The family names among the str constants of *node*: one constant, or a tuple, list or set of them."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return {item.value for item in items if isinstance(item, ast.Constant) and item.value in names}


def family_name_comparisons(root: Path, names: set[str]) -> list[str]:
    """``path:line: compares 'name'`` for every comparison with a family name outside the registry module."""
    found = set()
    for path in (root / "featx").rglob("*.py"):
        relative = path.relative_to(root)
        if relative == REGISTRY:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Compare):
                compared = set().union(*(_family_names(side, names) for side in (node.left, *node.comparators)))
            elif isinstance(node, ast.MatchValue):
                compared = _family_names(node.value, names)
            else:
                continue
            found |= {(str(relative), node.lineno, name) for name in compared}
    return [f"{path}:{line}: compares {name!r}" for path, line, name in sorted(found)]


def import_cycles(root: Path, package: str) -> list[list[str]]:
    """The import circles among the modules of *package* (each as its modules in order), found by a depth-first walk."""
    folder = root / Path(*package.split("."))
    modules = {f"{package}.{path.stem}": path for path in folder.glob("*.py") if path.stem != "__init__"}
    edges = {
        name: sorted({
            target for imp in imports_of(path, root)
            for target in (imp.module, f"{imp.module}.{imp.name}") if target in modules and target != name
        })
        for name, path in modules.items()
    }
    cycles, state = [], {}  # state: 1 while a module's imports are walked, 2 once done

    def walk(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in edges[name]:
            if state.get(target) == 1:  # on the current path: back to it is a circle
                cycles.append([*trail[trail.index(target):], name, target])
            elif target not in state:
                walk(target, [*trail, name])
        state[name] = 2

    for name in sorted(modules):
        if name not in state:
            walk(name, [])
    return cycles


def test_no_family_name_is_compared_outside_the_registry():
    assert family_name_comparisons(ROOT, set(FAMILIES)) == []


def test_the_check_catches_a_planted_comparison(tmp_path):
    (tmp_path / "featx/classification").mkdir(parents=True)
    (tmp_path / "featx/classification/_training.py").write_text(
        "def fit(name, family):\n"
        "    if name == 'xgboost' or family.name != \"bayes\":\n"
        "        return 1\n"
        "    if name in ('logreg', 'svm', 'other'):\n"
        "        return 2\n"
        "    match name:\n"
        "        case 'mlp' | 'knn':\n"
        "            return 3\n"
        "    return {'svm': 4}.get(name, 'svm' + name)  # a lookup and a text: not comparisons\n"
    )
    source = "def f(name):\n    return name == 'svm'\n"
    (tmp_path / "featx/demo.py").write_text(source)
    (tmp_path / REGISTRY).write_text(source)  # the registry may
    assert family_name_comparisons(tmp_path, {"svm", "logreg", "bayes", "xgboost", "mlp"}) == [
        "featx/classification/_training.py:2: compares 'bayes'",
        "featx/classification/_training.py:2: compares 'xgboost'",
        "featx/classification/_training.py:4: compares 'logreg'",
        "featx/classification/_training.py:4: compares 'svm'",
        "featx/classification/_training.py:7: compares 'mlp'",
        "featx/demo.py:2: compares 'svm'",
    ]


def test_classification_has_no_import_circle():
    assert import_cycles(ROOT, "featx.classification") == []


def test_the_check_catches_a_planted_circle(tmp_path):
    folder = tmp_path / "featx/classification"
    folder.mkdir(parents=True)
    (tmp_path / "featx/__init__.py").write_text("")
    (folder / "__init__.py").write_text("from ._report import format_results\n")
    (folder / "_artifact.py").write_text("from ._report import json_default\n")
    (folder / "_report.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._training import ClassifyRun\n"
    )
    (folder / "_training.py").write_text("def run():\n    from . import _artifact\n")
    (folder / "_join.py").write_text("import numpy\n")
    assert import_cycles(tmp_path, "featx.classification") == [
        ["featx.classification._artifact", "featx.classification._report", "featx.classification._training",
         "featx.classification._artifact"],
    ]
