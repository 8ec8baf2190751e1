"""Every ```python block of README.md runs as written, in order, in one namespace, in a fresh folder.

The README's blocks bring their own data (the bundled digits and a small MLP trained on them), so a
newcomer can paste them one after the other. ```bash blocks are commands, not run here.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import matplotlib

from jneuron.errors import DeadNeuronWarning, FewTokensWarning

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
# The README's blocks are meant to be quick (a slow block belongs in the demo or a benchmark): 45 s of this
# process's CPU time, which, unlike wall time, does not grow when other processes share the cores.
# (about 10 s of it is the MiniLM block: loading real weights and compiling a 6-layer BERT)
BUDGET_S = 45.0


def blocks(text: str) -> list[tuple[int, str, str]]:
    """``(line, language, code)`` of every fenced block."""
    return [(text[:m.start()].count("\n") + 1, m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def test_every_block_is_fenced_with_a_language():
    text = README.read_text()
    assert text.count("```") % 2 == 0, "README.md: an unclosed ``` fence"
    for line, language, _ in blocks(text):
        assert language in {"python", "bash"}, f"README.md:{line}: a block fenced as {language or 'nothing'!r}"


def test_python_blocks_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    matplotlib.use("Agg")
    python = [(line, code) for line, language, code in blocks(README.read_text()) if language == "python"]
    assert len(python) >= 10, "README.md: the tour and one section per family have Python blocks"
    namespace: dict = {"__name__": "__readme__"}
    started = time.process_time()
    for line, code in python:
        with warnings.catch_warnings():
            # what jneuron tells a reader about their data (ReLU units of a small MLP die) stays a warning,
            # as it is for them; any other warning is still an error (pyproject's filterwarnings)
            warnings.simplefilter("ignore", DeadNeuronWarning)
            warnings.simplefilter("ignore", FewTokensWarning)
            try:
                exec(compile(code, f"README.md:{line}", "exec"), namespace)
            except Exception as error:  # name the block: the traceback's file is README.md:<line of its fence>
                raise AssertionError(f"README.md block at line {line} failed: {type(error).__name__}: {error}") \
                    from error
    elapsed = time.process_time() - started
    assert elapsed < BUDGET_S, f"README.md's Python blocks took {elapsed:.1f} s of CPU (budget {BUDGET_S:.0f} s)"
