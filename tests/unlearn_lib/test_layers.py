"""The judge shares no code path with the method: ``unlearn_lib.audit`` and ``unlearn_lib.unlearning``
never import each other.

A bug in a primitive shared through an import (say the audit's extraction test, called by the
method's stop) would make the method stop exactly where the audit passes it, and the audit could
not catch it. What both need lives below them (``unlearn_lib.measures``, ``unlearn_lib.models``).
The check parses the source, so it sees imports inside functions too, which importing the
modules would not reveal.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import unlearn_lib

PACKAGE = "unlearn_lib"
LAYERS = ("audit", "unlearning")


def _module_name(path: Path, root: Path) -> str:
    """``root/audit/run.py`` -> ``unlearn_lib.audit.run`` (``root`` is the ``unlearn_lib`` folder)."""
    parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Absolute names ``node`` imports, each module and each ``from`` name (``from .. import audit``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        # The package a relative import starts from: the module's own package, then one up per extra dot.
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = package[: len(package) - (node.level - 1)]
        target = ".".join([*base, *([node.module] if node.module else [])])
    else:
        target = node.module or ""
    return [target, *(f"{target}.{alias.name}" for alias in node.names)]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def cross_layer_imports(root: Path) -> list[str]:
    """Every import, at any nesting level, by which one layer under ``root`` reaches the other."""
    found = []
    for layer in LAYERS:
        other = f"{PACKAGE}.{next(o for o in LAYERS if o != layer)}"
        for path in sorted((root / layer).rglob("*.py")):
            module = _module_name(path, root)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Import | ast.ImportFrom):
                    continue
                if any(_within(n, other) for n in _imported(node, module, path.name == "__init__.py")):
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_audit_and_unlearning_do_not_import_each_other():
    root = Path(unlearn_lib.__file__).parent
    for layer in LAYERS:
        assert any((root / layer).rglob("*.py")), f"no modules under {root / layer}"
    offending = cross_layer_imports(root)
    assert not offending, "the audit and the unlearning method import each other:\n" + "\n".join(offending)


@pytest.mark.parametrize(
    ("where", "source"),
    [
        ("unlearning/calibration.py", "from ..audit.memorization import extraction_test\n"),
        ("unlearning/calibration.py", "def f():\n    from .. import audit\n"),
        ("unlearning/__init__.py", "from ..audit import run_audit\n"),
        ("unlearning/sub/deep.py", "class C:\n    def m(self):\n        from ...audit import gates\n"),
        ("audit/run.py", "from ..unlearning.run import model_digest\n"),
        ("audit/run.py", "import unlearn_lib.unlearning.run as r\n"),
        ("audit/run.py", "def f():\n    from unlearn_lib.unlearning import erase\n"),
        ("audit/run.py", "from unlearn_lib import unlearning\n"),
    ],
)
def test_the_check_catches_each_import_form(tmp_path, where, source):
    root = tmp_path / PACKAGE
    for layer in LAYERS:
        (root / layer).mkdir(parents=True)
        (root / layer / "__init__.py").write_text("")
    # Imports that stay below the layers, or name the layer's own modules, are fine.
    (root / "audit" / "ok.py").write_text("from ..measures.distances import flat01\nfrom .gates import Metric\n")
    (root / "unlearning" / "ok.py").write_text("from ..models.digest import model_digest\nimport unlearn_lib.data\n")
    assert cross_layer_imports(root) == []
    target = root / where
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source)
    found = cross_layer_imports(root)
    assert len(found) == 1 and found[0].startswith(f"{PACKAGE}/{where}:"), found
