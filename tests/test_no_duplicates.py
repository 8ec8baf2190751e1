"""No block of logic is written twice in ``jneuron/`` (issue 15: duplicated logic exists once).

A block is ``WINDOW`` consecutive significant lines: comments, blank lines, imports, docstrings and lines
of closing brackets alone are dropped, and each line is compared with its indentation and runs of spaces
removed, so a copy re-indented into another function, or with different comments, still counts. Each
duplicate is reported once, at both of its locations, with the length of the longest repeated run.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jneuron"
WINDOW = 6
_CLOSING = re.compile(r"^[)\]},:]*$")


def _skipped_lines(tree: ast.AST) -> set[int]:
    """Line numbers of imports and docstrings."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            skipped.update(range(node.lineno, node.end_lineno + 1))
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                skipped.update(range(first.lineno, first.end_lineno + 1))
    return skipped


def significant_lines(source: str) -> list[tuple[int, str]]:
    """``(line number, normalised text)`` of the lines of ``source`` that carry logic."""
    lines = source.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:  # comments never span lines
            row, col = token.start
            lines[row - 1] = lines[row - 1][:col]
    skipped = _skipped_lines(ast.parse(source))
    kept = []
    for number, text in enumerate(lines, start=1):
        text = " ".join(text.split())
        if number not in skipped and text and not _CLOSING.match(text):
            kept.append((number, text))
    return kept


def duplicates(root: Path = PACKAGE, window: int = WINDOW) -> list[str]:
    """One line per repeated block: ``N lines: path:first-last == path:first-last``."""
    files = {path.relative_to(root.parent).as_posix(): significant_lines(path.read_text())
             for path in sorted(root.rglob("*.py"))}
    seen: dict[tuple[str, ...], list[tuple[str, int]]] = defaultdict(list)
    for name, kept in files.items():
        for start in range(len(kept) - window + 1):
            seen[tuple(text for _, text in kept[start:start + window])].append((name, start))
    # every pair of places a window occurs, then the runs of consecutive windows that repeat together
    pairs: set[tuple[str, int, str, int]] = set()
    for places in seen.values():
        for i, (name_a, start_a) in enumerate(places):
            for name_b, start_b in places[i + 1:]:
                if name_a != name_b or start_b - start_a >= window:  # overlapping runs of one block are not copies
                    pairs.add((name_a, start_a, name_b, start_b))
    reports = []
    for name_a, start_a, name_b, start_b in sorted(pairs):
        if (name_a, start_a - 1, name_b, start_b - 1) in pairs:
            continue  # inside a run reported from its first window
        length = 1
        while (name_a, start_a + length, name_b, start_b + length) in pairs:
            length += 1
        last = length - 1 + window - 1
        a, b = files[name_a], files[name_b]
        reports.append(f"{length + window - 1} lines: {name_a}:{a[start_a][0]}-{a[start_a + last][0]} == "
                       f"{name_b}:{b[start_b][0]}-{b[start_b + last][0]}")
    return reports


def test_the_detector_finds_a_reindented_copy_with_other_comments(tmp_path):
    body = "\n".join(f"value_{i} = compute({i}, scale)" for i in range(7))
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "one.py").write_text(f'"""Doc."""\nimport os\n\n{body}\n')
    indented = "\n".join(f"    {line}  # note" for line in body.splitlines())
    (package / "two.py").write_text(f'def f(scale):\n    """Doc\n    on two lines."""\n{indented}\n    return 0\n')
    (package / "three.py").write_text("\n".join(f"other_{i} = {i}" for i in range(10)) + "\n")
    assert duplicates(package) == ["7 lines: pkg/one.py:4-10 == pkg/two.py:4-10"]


def test_the_detector_ignores_docstrings_imports_and_short_repeats(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    doc = '"""' + "\n".join(f"line {i}" for i in range(8)) + '"""'
    imports = "\n".join(f"import mod{i}" for i in range(8))
    short = "\n".join(f"x{i} = {i}" for i in range(WINDOW - 1))
    for name in ("a", "b"):
        (package / f"{name}.py").write_text(f"{doc}\n{imports}\n{short}\nunique_{name} = 1\n")
    assert duplicates(package) == []


def test_no_block_is_repeated_in_the_package():
    found = duplicates()
    assert not found, f"{len(found)} repeated block(s) of {WINDOW}+ lines in jneuron/:\n" + "\n".join(found)
