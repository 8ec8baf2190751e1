"""jneuron.config: one home for the shared constants and tunables, each read where it is used."""

import ast
from pathlib import Path

import jax
import pytest

import jneuron
from jneuron import config
from jneuron.crossmodel.maxcorr import passes_needed
from jneuron.flax.ablation import variants_per_step
from jneuron.streaming.passes import default_chunk_tokens

PACKAGE = Path(jneuron.__file__).parent
TUNABLES = ("CHUNK_BYTES", "MEMORY_BUDGET", "CPU_MASKS_PER_STEP", "PROBE_EVALUATION_TOKENS", "STORE_CHUNK_TOKENS")


def _assignments(name: str) -> list[str]:
    """Modules of the package that assign ``name`` at module level."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found.append(str(path.relative_to(PACKAGE)))
    return found


@pytest.mark.parametrize("name", ("HIGHEST", *TUNABLES))
def test_each_constant_has_one_home(name):
    assert _assignments(name) == ["config.py"]


def test_highest_is_the_full_precision():
    assert config.HIGHEST == jax.lax.Precision.HIGHEST


def test_tunables_are_read_when_used(monkeypatch):
    width = 1000
    assert default_chunk_tokens(width) == config.CHUNK_BYTES // (4 * width)
    monkeypatch.setattr(config, "CHUNK_BYTES", 2**20)
    assert default_chunk_tokens(width) == 2**20 // (4 * width)
    widths = [3000, 3000, 3000]
    assert passes_needed(widths) == passes_needed(widths, config.MEMORY_BUDGET)
    monkeypatch.setattr(config, "MEMORY_BUDGET", 2**20)
    assert passes_needed(widths) == passes_needed(widths, 2**20) > 1
    monkeypatch.setattr(config, "CPU_MASKS_PER_STEP", 3)
    assert variants_per_step("auto") == (3 if jax.default_backend() == "cpu" else None)
    assert variants_per_step(7) == 7  # an explicit argument wins
