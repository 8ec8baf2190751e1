"""Layering: analyses do not draw, and no module reaches into another module's private names."""

import ast
from pathlib import Path

import jneuron

PACKAGE = Path(jneuron.__file__).parent

# Private names shared across modules, each waiting for its owner's rework: none left (the probe's training
# steps and the source's model naming are public names now).
KNOWN: set = set()


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield str(path.relative_to(PACKAGE)), ast.parse(path.read_text())


def _private_uses(relative: str, tree: ast.Module) -> set[tuple[str, str, str]]:
    """``(module, source, name)`` for every private name of another jneuron module this module uses."""
    found, aliases = set(), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jneuron"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    if node.module != "jneuron" or alias.name != "_interrupts":  # a private module of the package
                        if not (node.module == "jneuron.cli.commands" and relative.startswith("cli/commands/")):
                            found.add((relative, node.module, alias.name))
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.add((relative, node.value.id, node.attr))
    return found


def test_no_module_uses_another_modules_private_names():
    used = set().union(*(_private_uses(relative, tree) for relative, tree in _modules()))
    assert used - KNOWN == set()
    assert KNOWN - used == set(), "a known exception is gone: remove it from KNOWN"


def test_only_the_report_and_the_command_line_draw():
    drawing = []
    for relative, tree in _modules():
        if relative.startswith(("report/", "cli/")):
            continue
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "matplotlib" or n.startswith(("matplotlib.", "jneuron.report")) for n in names):
                drawing.append(relative)
    assert drawing == []


def test_result_types_have_no_plot_method():
    for relative, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                methods = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
                assert "plot" not in methods, f"{relative}: {node.name}.plot (figures go in jneuron/report/figures.py)"
