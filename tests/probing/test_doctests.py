"""The probe modules document themselves with runnable examples.

The examples themselves run once, collected by ``--doctest-modules`` (pyproject's ``addopts``); this only
checks that each module still has some, so an example deleted by mistake is noticed.
"""

import doctest
import importlib

import pytest

MODULES = ["jneuron.probing.probe", "jneuron.probing.selection", "jneuron.probing.probeless", "jneuron.probing.ablation",
           "jneuron.data.labels", "jneuron.kernels.probe"]


@pytest.mark.parametrize("name", MODULES)
def test_module_has_docstring_examples(name):
    tests = doctest.DocTestFinder().find(importlib.import_module(name))
    assert sum(len(t.examples) for t in tests) > 0, f"{name} has no >>> examples"
