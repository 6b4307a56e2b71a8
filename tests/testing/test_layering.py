"""Test tooling stays out of the product: no product module imports ``pipeline.testing``.

Only the CLI entry point (``pipeline/cli.py``, the composition root) may, and only inside
functions (lazily). Inside the phantom, dependencies run one way:
design -> render / truth -> dicom -> the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pipeline

PKG = Path(pipeline.__file__).resolve().parent


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import statement of a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            mod = node.module if node.level == 0 else f".{node.module}"
            out += [(f"{mod}.{a.name}" if mod == "pipeline" else mod, id(node) in top)
                    for a in node.names]
    return out


def test_no_product_module_imports_the_test_tooling():
    offenders = []
    lazy_in_cli = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if rel.startswith("testing/"):
            continue
        for mod, at_top in _imports(path):
            if mod == "pipeline.testing" or mod.startswith("pipeline.testing."):
                if rel == "cli.py" and not at_top:
                    lazy_in_cli.append(mod)
                else:
                    offenders.append((rel, mod))
    assert offenders == []
    # the checker does see the CLI's lazy imports (hitit phantom, demo, synthetic)
    assert {"pipeline.testing.phantom", "pipeline.testing.validation",
            "pipeline.testing.cli"} <= set(lazy_in_cli)


def test_phantom_modules_depend_one_way():
    order = ["design", "render", "truth", "dicom", "__init__"]
    allowed = {"design": set(), "render": {"design"}, "truth": {"design", "render"},
               "dicom": {"design", "render", "truth"},
               "__init__": {"design", "render", "truth", "dicom"}}
    for name in order:
        path = PKG / "testing" / "phantom" / f"{name}.py"
        used = {mod.rsplit(".", 1)[-1] for mod, _ in _imports(path)
                if mod.startswith("pipeline.testing.phantom.")}
        assert used <= allowed[name], (name, used)
    assert not (PKG / "phantom.py").exists() and not (PKG / "phantom_writers.py").exists()
