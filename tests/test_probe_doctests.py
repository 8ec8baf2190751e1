"""The `>>>` examples of the probe modules run and print what they say (slow: each compiles a probe)."""

import doctest
import importlib

import pytest

MODULES = ["jneuron.probe", "jneuron.probe_rankings", "jneuron.probeless", "jneuron.probe_ablation",
           "jneuron.labels", "jneuron.kernels.probe"]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
