"""The runnable examples in the Flax adapters' docstrings."""

import doctest
import importlib

import pytest

MODULES = ["jneuron.flax", "jneuron.flax.paths", "jneuron.flax.capture", "jneuron.flax.ablate",
           "jneuron.flax.curves", "jneuron.flax.linen", "jneuron.flax.control", "jneuron.models"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
