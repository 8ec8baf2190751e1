"""A wheel install has all of jneuron: every package folder is listed in pyproject.toml, and every package
imported without an ImportError guard is a base dependency (so every command runs on a plain install)."""

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for init in (ROOT / "jneuron").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(ROOT).parts))
    assert found == listed, f"missing from pyproject: {found - listed}; listed but absent: {listed - found}"


def _third_party_imports(guarded: bool) -> dict[str, set[str]]:
    """Top-level third-party modules imported by jneuron's sources: those inside a ``try`` that catches
    ImportError (``guarded=True``, an optional extra) or all the others."""
    found: dict[str, set[str]] = {}
    for folder in ("jneuron",):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            in_guard = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Try) and any(
                        isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                        for h in node.handlers):
                    in_guard.update(id(n) for stmt in node.body for n in ast.walk(stmt))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                if (id(node) in in_guard) != guarded:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "jneuron":
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _names(requirements: list[str]) -> set[str]:
    return {re.sub(r"[-_.]+", "_", re.match(r"[A-Za-z0-9_.-]+", r).group()).lower() for r in requirements}


def test_a_base_install_has_every_package_imported_without_a_guard():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _names(project["dependencies"])
    missing = {m: sorted(files) for m, files in _third_party_imports(guarded=False).items() if m.lower() not in base}
    assert not missing, f"imported without try/except ImportError but not a base dependency: {missing}"
    extras = set().union(*(_names(r) for r in project["optional-dependencies"].values()))
    unknown = {m: sorted(files) for m, files in _third_party_imports(guarded=True).items()
               if m.lower() not in base | extras}
    assert not unknown, f"optional imports that no extra installs: {unknown}"
