"""The runnable examples in the information and cumulative-ablation docstrings."""

import doctest
import importlib

import pytest

MODULES = ["jneuron.kernels.quantize", "jneuron.kernels.information", "jneuron.information",
           "jneuron.cumulative_ablation"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
