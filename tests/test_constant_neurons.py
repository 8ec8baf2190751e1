"""Constant neurons are treated alike by every analysis (jneuron.streaming.constant): the same set is found,
given the method's neutral score, listed in ``dead``, ranked last and warned about."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jneuron as jn
from jneuron import flax as jnf
from jneuron.streaming.constant import constant_neurons

TOKENS = 600
ULP_1E4 = float(np.spacing(np.float32(1e4)))


def nasty(rng) -> tuple[dict, np.ndarray, dict]:
    """Two models over the same tokens, labels, and the constant columns each model holds.

    Model ``a``: 0 alive; 1 exactly 5.0; 2 zeros; 3 at 1e4 moving by 3 units of its rounding (constant by the
    rule); 4 values about 1e-30 that vary (alive: the rule is scale-free); 5 constant but for one spike
    (alive); 6 follows the labels; 7 an offset of 1e4 with a real spread. Model ``b``: 5 random, 2 constant,
    3 at 1e4 but for one token 0.125 higher (alive, though its standard deviation is below 8 roundings of 1e4).
    """
    labels = rng.integers(0, 3, TOKENS)
    a = rng.normal(size=(TOKENS, 8)).astype(np.float32)
    a[:, 1] = 5.0
    a[:, 2] = 0.0
    a[:, 3] = np.float32(1e4) + ULP_1E4 * rng.integers(0, 4, TOKENS)
    a[:, 4] *= np.float32(1e-30)
    a[:, 5] = 7.0
    a[17, 5] = 8.0
    a[:, 6] = labels + 0.3 * a[:, 6]
    a[:, 7] += np.float32(1e4)
    b = rng.normal(size=(TOKENS, 7)).astype(np.float32)
    b[:, 2] = -3.25
    b[:, 3] = 1e4
    b[5, 3] += 0.125
    b[:, 0] += a[:, 0]
    return {"a": a, "b": b}, labels, {"a": [1, 2, 3], "b": [2]}


def flat(dead: dict, models: dict) -> list:
    starts = np.cumsum([0] + [m.shape[1] for m in models.values()])
    return [int(starts[i] + u) for i, name in enumerate(models) for u in dead[name]]


def quietly(fn, *args, **kwargs):
    """The call's result and its constant-neuron warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", jn.DeadNeuronWarning)
        result = fn(*args, **kwargs)
    return result, [str(w.message) for w in caught if issubclass(w.category, jn.DeadNeuronWarning)]


def test_rule_on_the_nasty_columns(rng):
    models, _, dead = nasty(rng)
    for name, x in models.items():
        found = np.flatnonzero(constant_neurons(x.min(0), x.max(0), np.float32))
        assert found.tolist() == dead[name]


def test_cross_model_rankings_agree(rng):  # sharded: tests/streaming/test_comoment_constant.py
    models, _, dead = nasty(rng)
    expected = flat(dead, models)
    for method in (jn.maxcorr, jn.mincorr):
        ranking, said = quietly(method, models)
        assert sorted(ranking.dead.tolist()) == expected
        assert np.all(ranking.scores[expected] == 0) and sorted(ranking.order[-len(expected):].tolist()) == expected
        assert len(said) == 1 and f"{len(expected)} constant neuron" in said[0]
    ranking, said = quietly(jn.linreg_ranking, models)
    assert sorted(ranking.dead.tolist()) == expected and np.all(ranking.scores[expected] == 0)
    assert said


def test_similarity_gives_constant_neurons_weight_zero(rng):
    models, _, dead = nasty(rng)
    moments = jn.comoments(np.hstack(list(models.values())))
    assert sorted(moments.dead.tolist()) == flat(dead, models)
    result, said = quietly(jn.cca, models["a"], models["b"])
    assert result.dead_x.tolist() == dead["a"] and result.dead_y.tolist() == dead["b"] and said
    assert np.all(np.asarray(result.directions_x)[dead["a"]] == 0)
    assert np.all(np.asarray(result.directions_y)[dead["b"]] == 0)
    directions, _ = quietly(jn.direction_ranking, models["a"], models["b"])
    assert directions.dead.tolist() == dead["a"] and np.all(directions.weights[dead["a"]] == 0)
    matching, _ = quietly(jn.match_neurons, models["a"], models["b"])
    assert matching.dead_x.tolist() == dead["a"] and matching.dead_y.tolist() == dead["b"]
    assert np.all(matching.correlation[dead["a"]] == 0) and np.all(matching.correlation[:, dead["b"]] == 0)
    sparse, _ = quietly(jn.sparse_prediction, models["a"], models["b"])
    assert sparse.dead_x.tolist() == dead["a"] and np.all(sparse.coef[:, dead["a"]] == 0)
    assert np.all(sparse.r2[:, dead["b"]] == 0)


@pytest.mark.parametrize("devices", [None, 2])
def test_information_and_probeless_agree(rng, devices):
    models, labels, dead = nasty(rng)
    expected = flat(dead, models)
    for quantize in ("threshold", "uniform", "quantile") if devices is None else ("quantile",):  # merged ranges
        info, said = quietly(jn.neuron_information, models, labels, quantize=quantize, threshold=0.0, bins=4,
                             devices=devices)
        assert info.dead.tolist() == expected and said
        for measure in ("entropy", "mutual_information", "kl_selectivity", "selectivity"):
            assert np.all(info.measure(measure)[expected] == 0), measure
        assert np.all(np.count_nonzero(info.counts[expected].sum(axis=2), axis=1) == 1)  # one bin each
        assert sorted(info.ranking().order[-len(expected):].tolist()) == expected
    result, said = quietly(jn.probeless, models, labels, devices=devices)
    assert result.dead.tolist() == expected and said
    assert np.all(result.overall.scores[expected] == 0)
    assert all(np.all(r.scores[expected] == 0) for r in result.per_class.values())


def test_probes_give_constant_neurons_weight_zero(rng):
    models, labels, dead = nasty(rng)
    x = models["a"]
    probe, said = quietly(jn.train_probe, x, labels, epochs=3, l1=1e-4)
    assert probe.dead.tolist() == dead["a"] and said
    assert np.all(probe.weight[:, dead["a"]] == 0) and np.all(probe.weight[:, [0, 6]] != 0)
    ordering = jn.neuron_ordering(probe)
    assert sorted(ordering.dead.tolist()) == dead["a"]
    assert sorted(ordering.order[-3:].tolist()) == dead["a"]
    grid, said = quietly(jn.train_probes, x, labels, l1=[0, 1e-3], l2=[0], epochs=2)
    assert said and all(np.all(p.weight[:, dead["a"]] == 0) for row in grid.probes for p in row)


class _Layers(nnx.Module):
    """The nasty columns as a model's layer output (an identity through a tap)."""

    def __init__(self):
        self.out = jnf.Tap()

    def __call__(self, x):
        return self.out(x)


def test_neuron_stats_agree(rng):
    models, labels, dead = nasty(rng)
    stats, said = quietly(jnf.neuron_stats, _Layers(), jnp.asarray(models["a"]), ["out"], batch_size=128)
    assert stats.dead["out"].tolist() == dead["a"] and said
    assert np.all(stats.std["out"][dead["a"]] == 0) and np.all(stats.std["out"][[0, 4, 5, 7]] > 0)
