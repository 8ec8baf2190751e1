"""One keyword vocabulary: the public entry points' signatures, inspected so the names cannot drift.

Every streamed entry point takes the one pass's keyword-only tail (``chunk_tokens``, ``valid``,
``devices``, ``mesh``, ``checkpoint``, ``progress``, ``on_chunk``; ``names`` for model names where it
names models), each with one meaning; names that meant two things (``lr``, ``name``, ``neurons`` for
identities, ``keep`` as a flag, ``batch_size`` for chunk rows) are gone.
"""

import inspect

import pytest

import jneuron as jn
import jneuron.flax as jflax

KW = inspect.Parameter.KEYWORD_ONLY

PASS_TAIL = ("chunk_tokens", "valid", "devices", "mesh", "checkpoint", "progress", "on_chunk", "dtype")
STREAMED = ("comoments", "maxcorr", "mincorr", "linreg_ranking", "cca", "svcca", "pwcca", "cka", "similarity_matrix",
            "direction_ranking", "match_neurons", "sparse_prediction", "neuron_information", "probeless")
TAIL = {"names", "chunk_tokens", "valid", "devices", "mesh", "checkpoint", "progress", "on_chunk", "dtype"}
RENAMED = {"lr": "learning_rate", "name": "names", "batch_rows": "chunk_tokens", "chunk_size": "chunk_tokens",
           "n_devices": "devices", "checkpoint_dir": "checkpoint", "callback": "on_chunk", "verbose": "progress"}


def public_functions():
    """``(qualified name, function)`` of every public function of ``jneuron`` and ``jneuron.flax``."""
    found = {}
    for module in (jn, jflax):
        names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
        for name in names:
            value = getattr(module, name)
            if inspect.isfunction(value) and value.__module__.startswith("jneuron"):
                found[f"{module.__name__}.{name}"] = value
    return sorted(found.items())


FUNCTIONS = public_functions()


def test_the_inspection_sees_the_entry_points():
    names = {qualified.rpartition(".")[2] for qualified, _ in FUNCTIONS}
    assert set(STREAMED) <= names and {"train_probe", "neuron_stats", "capture_source"} <= names
    assert len(FUNCTIONS) > 40


@pytest.mark.parametrize("name", STREAMED)
def test_streamed_entry_points_take_the_pass_tail(name):
    parameters = inspect.signature(getattr(jn, name)).parameters
    missing = [p for p in PASS_TAIL if p not in parameters]
    assert not missing, f"jn.{name} lacks {missing}"
    positional = [p for p in PASS_TAIL if parameters[p].kind is not KW]
    assert not positional, f"jn.{name}: {positional} must be keyword-only"
    assert parameters["checkpoint"].default is None and parameters["progress"].default is False
    assert parameters["valid"].default is None and parameters["on_chunk"].default is None
    assert "batch_size" not in parameters, f"jn.{name}: chunk rows are chunk_tokens"


@pytest.mark.parametrize(("qualified", "function"), FUNCTIONS, ids=[q for q, _ in FUNCTIONS])
def test_one_name_one_meaning(qualified, function):
    parameters = inspect.signature(function).parameters
    for old, new in RENAMED.items():
        assert old not in parameters, f"{qualified}: '{old}' is spelled '{new}' in jneuron"
    for name, parameter in parameters.items():
        if name in TAIL and name != "devices" or name == "devices" and qualified != "jneuron.device_mesh":
            assert parameter.kind is KW, f"{qualified}: '{name}' belongs to the keyword-only tail"
    if "keep" in parameters:  # keep = how much of the variance or how many directions SVCCA keeps
        assert not isinstance(parameters["keep"].default, bool), f"{qualified}: a keep flag (say mode=)"
    if "neurons" in parameters:  # neurons = which neurons (a selection), never who they are (that is names=)
        assert parameters["neurons"].kind is not KW, f"{qualified}: the neurons' identities are names="
    if "names" in parameters:
        assert not isinstance(parameters["names"].default, str), f"{qualified}: names is a sequence"
    if "checkpoint" in parameters:
        assert parameters["checkpoint"].default is None, f"{qualified}: checkpoint is a folder, default none"
    if "learning_rate" in parameters:
        assert parameters["learning_rate"].default > 0
