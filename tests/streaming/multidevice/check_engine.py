"""The one pass sharded equals unsharded for information and probeless (with invalid rows, checkpoints).

Run on 8 forced CPU devices by ``tests/streaming/test_multidevice.py``.
"""

import numpy as np
import pytest

import jneuron as jn
from tests.tolerance import assert_close, tolerance


def data(seed=21, tokens=1203):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, tokens)
    x = (rng.normal(size=(tokens, 6)) + labels[:, None] * [1, 0, 2, 0, 0, 1] + 1e3).astype(np.float32)
    valid = rng.random(tokens) > 0.25
    x[~valid] = np.nan  # invalid rows never count, NaN or not
    return x, labels, valid


def mean_scale(x, labels, valid, means):
    """Two float32 computations of class sums about a shift near the mean, then float64."""
    x, labels = x[valid].astype(np.float64), labels[valid]
    spread = np.stack([np.sqrt(((x[labels == c] - x.mean(0)) ** 2).mean(0)) for c in range(4)])
    return 2 * tolerance(len(x)) * spread + 2 * tolerance(1, np.float64) * np.abs(means)


@pytest.mark.parametrize("devices", [2, 3, 8])
def test_information_sharded_equals_unsharded_with_invalid_rows(devices, tmp_path):
    x, labels, valid = data()
    options = {"threshold": 1e3, "classes": 4, "valid": valid, "chunk_tokens": 100}
    one = jn.neuron_information(x, labels, **options)
    sharded = jn.neuron_information(x, labels, devices=devices, checkpoint=tmp_path, **options)
    np.testing.assert_array_equal(sharded.counts, one.counts)
    assert one.counts[0].sum() == valid.sum()
    assert_close(sharded.class_means, one.class_means, 1.0, mean_scale(x, labels, valid, one.class_means.T).T,
                 "class means")
    again = jn.neuron_information(x, labels, devices=devices, checkpoint=tmp_path, **options)  # read back
    np.testing.assert_array_equal(again.counts, sharded.counts)


@pytest.mark.parametrize("devices", [2, 8])
def test_probeless_sharded_equals_unsharded_with_invalid_rows(devices):
    x, labels, valid = data(22)
    names = np.array(["A", "B", "C", "D"])[labels]
    one = jn.probeless(x, names, valid=valid, chunk_tokens=100)
    sharded = jn.probeless(x, names, valid=valid, chunk_tokens=100, devices=devices)
    np.testing.assert_array_equal(sharded.counts, one.counts)
    assert sharded.counts.sum() == valid.sum()
    assert_close(sharded.means, one.means, 1.0, mean_scale(x, labels, valid, one.means), "class means")
    mesh = jn.device_mesh(8, neuron_shards=2)
    np.testing.assert_array_equal(jn.probeless(x, names, valid=valid, chunk_tokens=100, mesh=mesh).counts, one.counts)


def test_sharded_bad_value_names_the_callers_row():
    x, labels, valid = data(23)
    row = int(np.flatnonzero(valid)[500])
    x[row, 3] = np.inf
    with pytest.raises(jn.JNeuronError, match=f"row {row + 1}, neuron 3"):
        jn.probeless(x, labels, valid=valid, chunk_tokens=64, devices=4)
    with pytest.raises(jn.JNeuronError, match=f"row {row + 1}, neuron model0/3"):
        jn.neuron_information(x, labels, valid=valid, chunk_tokens=64, devices=4)


def test_neuron_stats_sharded_equals_unsharded():
    from flax import nnx

    from jneuron.flax import neuron_stats
    from jneuron.models import MLP

    model = MLP(12, (10, 6), 4, rngs=nnx.Rngs(7))
    rng = np.random.default_rng(24)
    x, y = (rng.normal(size=(90, 12)) + 0.3).astype(np.float32), rng.integers(0, 3, 90)
    one = neuron_stats(model, x, ["layers/0", "layers/1"], labels=y, batch_size=16)
    sharded = neuron_stats(model, x, ["layers/0", "layers/1"], labels=y, batch_size=16, devices=4)
    for layer in one.layers:  # float64 sums of float32 outputs, merged in another order
        bound = tolerance(90, np.float64)
        scale = np.abs(one.mean[layer]) + one.std[layer]
        assert_close(sharded.mean[layer], one.mean[layer], bound, scale, "mean")
        assert_close(sharded.std[layer], one.std[layer], bound, scale, "std")
        assert_close(sharded.class_mean[layer], one.class_mean[layer], bound, np.abs(one.class_mean[layer]) + 1,
                     "class means")
