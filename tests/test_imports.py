"""Guard rails on the package's structure, read from the source (nothing is imported or run).

* no import cycle among ``pipeline`` modules (imports inside functions count too: a cycle hidden
  in a function is still a cycle);
* product code never imports the test-data generators in ``pipeline.testing`` (only the CLI,
  the composition root that offers ``hitit phantom``, may, and only inside its commands);
* ``pipeline.report`` reads outputs: it imports neither ``pipeline.io.dicom`` nor ``pipeline.study``;
* the layers point downwards: ``pipeline.io`` (the edges) imports no stage, ranking or report code;
  the foundation modules (errors, records, geometry, paths, columns) import only each other.

Run ``python tests/test_imports.py [PACKAGE_DIR]`` to print the violations of any checkout.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"

#: modules allowed to import pipeline.testing (lazily, inside command functions)
TESTING_IMPORTERS = {"pipeline.cli"}
#: (importer prefix, forbidden imported prefix, why)
FORBIDDEN = [
    ("pipeline.report", "pipeline.io.dicom", "report/ reads outputs, never DICOM"),
    ("pipeline.report", "pipeline.study", "report/ reads outputs, not the study job"),
    ("pipeline.io", "pipeline.anatomy", "io/ is the edge layer"),
    ("pipeline.io", "pipeline.features", "io/ is the edge layer"),
    ("pipeline.io", "pipeline.ranking", "io/ is the edge layer"),
    ("pipeline.io", "pipeline.report", "io/ is the edge layer"),
    ("pipeline.io", "pipeline.study", "io/ is the edge layer"),
    ("pipeline.io", "pipeline.cohort", "io/ is the edge layer"),
    ("pipeline.features", "pipeline.ranking", "stages do not depend on the ranking"),
    ("pipeline.features", "pipeline.report", "stages do not depend on the report"),
    ("pipeline.anatomy", "pipeline.ranking", "stages do not depend on the ranking"),
    ("pipeline.anatomy", "pipeline.report", "stages do not depend on the report"),
    ("pipeline.ranking", "pipeline.io.dicom", "the ranking sees tables, never images"),
    ("pipeline.ranking", "pipeline.report", "the ranking does not depend on the report"),
]
FOUNDATION = ("pipeline.errors", "pipeline.records", "pipeline.geometry", "pipeline.paths",
              "pipeline.columns")


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the ``pipeline`` modules it imports (at any depth of the file)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        out: set[str] = set()
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                # the longest known module that is a prefix of the target
                parts = t.split(".")
                for n in range(len(parts), 0, -1):
                    cand = ".".join(parts[:n])
                    if cand in known:
                        if cand != mod:
                            out.add(cand)
                        break
        graph[mod] = out
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _under(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def import_violations(root: Path = PACKAGE) -> list[str]:
    """Every broken rule, one line each (empty when the structure is sound)."""
    graph = import_graph(root)
    problems = [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            # a package's __init__ importing its own submodules is not a layering question
            if _under(dep, mod):
                continue
            if (_under(dep, "pipeline.testing") and not _under(mod, "pipeline.testing")
                    and mod not in TESTING_IMPORTERS):
                problems.append(f"{mod} imports test-data code {dep}: product code must not")
            for src, bad, why in FORBIDDEN:
                if _under(mod, src) and _under(dep, bad):
                    problems.append(f"{mod} imports {dep}: {why}")
            if mod in FOUNDATION and not any(_under(dep, f) for f in FOUNDATION):
                problems.append(f"{mod} imports {dep}: foundation modules import only each other")
    return problems


def private_name_uses(root: Path = PACKAGE) -> list[str]:
    """``from pipeline.x import _name`` and ``module_alias._name`` across modules."""
    out = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        out.append(f"{path.name}: from {node.module} import {a.name}")
                    aliases[a.asname or a.name] = node.module
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("pipeline"):
                        aliases[a.asname or a.name.split(".")[0]] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                out.append(f"{path.name}: {node.value.id}.{node.attr}")
    return out


# --------------------------------------------------------------------------- tests
def test_no_private_name_is_used_across_modules():
    found = private_name_uses(PACKAGE)
    assert not found, "\n".join(found)


def test_private_name_check_can_fail(tmp_path):
    pkg = _write(tmp_path, {"a.py": "from pipeline.b import _x\nimport pipeline.c as c\nc._y()\n",
                            "b.py": "_x = 1\n", "c.py": "def _y():\n    pass\n"})
    assert private_name_uses(pkg) == ["a.py: from pipeline.b import _x", "a.py: c._y"]


def test_package_structure_has_no_violations():
    problems = import_violations(PACKAGE)
    assert not problems, "\n".join(problems)


def _write(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "pipeline"
    for rel, text in files.items():
        p = pkg / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for d in [pkg, *[p for p in pkg.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    return pkg


def test_checker_finds_a_cycle_hidden_inside_a_function(tmp_path):
    pkg = _write(tmp_path, {
        "study.py": "from pipeline.report.keyimages import write_key_images\n",
        "report/keyimages.py": "def f():\n    from pipeline.study import lesion_ids\n",
    })
    problems = import_violations(pkg)
    assert any("cycle" in p and "pipeline.study" in p for p in problems)
    assert any("pipeline.report.keyimages imports pipeline.study" in p for p in problems)


def test_checker_finds_relative_imports_and_testing_imports(tmp_path):
    pkg = _write(tmp_path, {
        "testing/phantom.py": "from . import writers\n",
        "testing/writers.py": "from .phantom import X\n",
        "ranking/model.py": "def g():\n    from ..testing import decisions\n",
        "testing/decisions.py": "",
        "cli.py": "def h():\n    from pipeline.testing import phantom\n",
        "io/index.py": "from pipeline.anatomy.organs import is_totalseg_folder\n",
        "anatomy/organs.py": "",
    })
    problems = import_violations(pkg)
    assert any("cycle" in p and "pipeline.testing.writers" in p for p in problems)
    assert any(p.startswith("pipeline.ranking.model imports test-data code") for p in problems)
    assert not any(p.startswith("pipeline.cli ") for p in problems)
    assert any(p.startswith("pipeline.io.index imports pipeline.anatomy.organs") for p in problems)


def test_checker_is_silent_on_a_sound_package(tmp_path):
    pkg = _write(tmp_path, {
        "geometry.py": "from pipeline.errors import GeometryError\n",
        "errors.py": "",
        "io/dicom.py": "from pipeline.geometry import Grid\n",
        "report/run.py": "from pipeline.io.tables import read_table\n",
        "io/tables.py": "",
    })
    assert import_violations(pkg) == []


def test_module_name_of_package_init(tmp_path):
    pkg = _write(tmp_path, {"io/x.py": ""})
    assert module_name(pkg / "io" / "__init__.py", pkg) == "pipeline.io"
    assert module_name(pkg / "io" / "x.py", pkg) == "pipeline.io.x"


if __name__ == "__main__":  # pragma: no cover - a command for maintainers
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE
    found = import_violations(target)
    print("\n".join(found) if found else "no violations")
    sys.exit(1 if found else 0)
