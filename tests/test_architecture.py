"""The layering, checked from the source: no package imports another package's private names or modules.

Packages: the core (``bench``), ``bench.tools``, ``bench.methods``, ``bench.datasets``, ``bench.reports``,
``bench.slurm``. A name or module starting with ``_`` is private to its package; another package that
needs it gets a public name instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "bench": "bench",
    "methods": "bench.methods",
    "datasets": "bench.datasets",
    "reports": "bench.reports",
    "slurm": "bench.slurm",
}
SUBPACKAGES = ("bench.tools", "bench.methods", "bench.datasets", "bench.reports", "bench.slurm")


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in SOURCES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            out[name] = path
    return out


def package_of(module: str) -> str:
    return next((p for p in SUBPACKAGES if module == p or module.startswith(p + ".")), "bench")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _imports(module: str, path: Path):
    """(imported module, imported name or None) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                yield base, alias.name


def test_no_package_reaches_into_another_packages_private_names():
    violations = []
    for module, path in _modules().items():
        for target, name in _imports(module, path):
            if not target.startswith("bench"):
                continue
            if package_of(target) == package_of(module):
                continue
            if any(_private(part) for part in target.split(".")) or (name and _private(name)):
                violations.append(f"{module} imports {target}{'.' + name if name else ''}")
    assert not violations, "\n".join(violations)


def test_the_core_and_the_libraries_do_not_depend_on_the_tools():
    offenders = [
        f"{m} imports {t}"
        for m, p in _modules().items()
        if package_of(m) != "bench.tools"
        for t, _ in _imports(m, p)
        if package_of(t) == "bench.tools" and m != "bench.cli"
    ]
    assert not offenders, "\n".join(offenders)
