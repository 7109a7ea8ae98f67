"""Benchmarks import nothing from ``tests/``, and the daemon imports nothing from
``edged/devtools/`` (the helpers both share; see ``edged/devtools/__init__.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT_PACKAGES = ("edged", "runtimes", "attribution", "sync")


def imported_modules(source: str) -> set[str]:
    """Every module an ``import`` or ``from ... import`` names, at any depth (a function's
    lazy import too); for ``from package import name`` both ``package`` and
    ``package.name``, since ``name`` may be a submodule."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def imports_package(source: str, package: str) -> list[str]:
    """The imported modules that are ``package`` or inside it, sorted."""
    return sorted(name for name in imported_modules(source)
                  if name == package or name.startswith(package + "."))


def offenders(files: list[Path], package: str) -> dict[str, list[str]]:
    found = {}
    for path in files:
        names = imports_package(path.read_text(encoding="utf-8"), package)
        if names:
            found[str(path.relative_to(ROOT))] = names
    return found


def test_no_bench_file_imports_tests() -> None:
    files = sorted((ROOT / "bench").rglob("*.py"))
    assert len(files) >= 10  # the benches are there to be read
    assert offenders(files, "tests") == {}


def test_the_daemon_imports_nothing_from_devtools() -> None:
    files = [path for package in PRODUCT_PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
             if (ROOT / "edged" / "devtools") not in path.parents]
    assert len(files) > 50
    assert offenders(files, "edged.devtools") == {}


def test_the_check_sees_every_form_of_import() -> None:
    lazy = "def main():\n    from tests.support.daemon import Daemon\n"
    assert imports_package(lazy, "tests") == ["tests.support.daemon", "tests.support.daemon.Daemon"]
    assert imports_package("import tests.support.tiny_onnx as t\n", "tests") == [
        "tests.support.tiny_onnx"]
    assert imports_package("from tests import support\n", "tests") == ["tests", "tests.support"]
    assert imports_package("from edged import devtools\n", "edged.devtools") == ["edged.devtools"]
    assert imports_package("import testsuite\nfrom edged.devtools_x import y\n", "tests") == []
    assert imports_package("from .tests import x\n", "tests") == []  # relative: bench's own
