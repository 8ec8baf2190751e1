"""The runnable examples in the Flax adapters' docstrings."""

import doctest
import importlib

import pytest

MODULES = ["jneuron.flax", "jneuron.flax.paths", "jneuron.flax.capturing", "jneuron.flax.ablation",
           "jneuron.flax.curves", "jneuron.flax.linen", "jneuron.flax.controls", "jneuron.models"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
