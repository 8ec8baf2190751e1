"""Control (mean + v * std, class means, positions) and subspace erasure, against float64 references."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax_models import Encoder

from jneuron import JNeuronError
from jneuron import flax as jnf
from jneuron.flax import controls as ctl
from jneuron.models import MLP


@pytest.fixture(scope="module")
def mlp():
    return MLP(12, (10, 6), 4, rngs=nnx.Rngs(7))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2)
    return (rng.normal(size=(90, 12)) + 0.3).astype(np.float32), rng.integers(0, 3, 90)


def test_neuron_stats_match_float64_reference(data):
    x, y = data
    model = MLP(12, (10,), 4, rngs=nnx.Rngs(1), activation=lambda h: h + 1e3)  # outputs offset by 1e3
    stats = ctl.neuron_stats(model, x, ["layers/0"], labels=y, batch_size=16)
    acts = np.asarray(model.hidden(jnp.asarray(x))[0], np.float64)
    np.testing.assert_allclose(stats.mean["layers/0"], acts.mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats.std["layers/0"], acts.std(0), rtol=1e-6)
    expected = np.stack([acts[y == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(stats.class_mean["layers/0"], expected, rtol=1e-9)
    assert stats.count["layers/0"] == 90 and stats.shapes["layers/0"] == (10,)


def test_control_sets_mean_plus_v_std(mlp, data):
    x, _ = data
    stats = ctl.neuron_stats(mlp, x, ["layers/0"])
    variant = ctl.control(mlp, {"layers/0": [2, 5]}, stats, v=1.5)
    got = jnf.capture(variant, x, ["layers/0"])["layers/0"]
    intact = jnf.capture(mlp, x, ["layers/0"])["layers/0"]
    target = stats.mean["layers/0"] + 1.5 * stats.std["layers/0"]
    np.testing.assert_allclose(got[:, [2, 5]], np.broadcast_to(target[[2, 5]], (90, 2)), rtol=1e-6)
    others = [i for i in range(10) if i not in (2, 5)]
    np.testing.assert_array_equal(got[:, others], intact[:, others])


def test_class_conditional_control(mlp, data):
    x, y = data
    stats = ctl.neuron_stats(mlp, x, ["layers/1"], labels=y)
    variant = ctl.control(mlp, {"layers/1": [0]}, stats, target=2, alpha=3.0)
    got = jnf.capture(variant, x, ["layers/1"])["layers/1"][:, 0]
    hidden = np.asarray(mlp.hidden(jnp.asarray(x))[1], np.float64)
    np.testing.assert_allclose(got, np.full(90, 3.0 * hidden[y == 2, 0].mean()), rtol=1e-5)
    with pytest.raises(JNeuronError, match="class 7 is not among the labels"):
        ctl.control(mlp, {"layers/1": [0]}, stats, target=7)


def test_control_at_chosen_positions():
    model = Encoder(vocab=9, d=8, blocks=1, classes=3, rngs=nnx.Rngs(0))
    tokens = np.random.default_rng(0).integers(0, 9, size=(5, 4))
    layer = "encoder/layers/0/mlp/hidden"
    stats = ctl.neuron_stats(model, tokens, [layer])
    assert stats.shapes[layer] == (4, 16)
    variant = ctl.control(model, {layer: [3]}, stats, v=-2.0, positions=[2])
    got = jnf.capture(variant, tokens, [layer])
    intact = jnf.capture(model, tokens, [layer])[layer]
    at = got.positions[layer][:, 1] == 2
    target = stats.mean[layer][3] - 2.0 * stats.std[layer][3]
    np.testing.assert_allclose(got[layer][at, 3], np.full(at.sum(), target), rtol=1e-5)
    np.testing.assert_array_equal(got[layer][~at], intact[~at])
    np.testing.assert_array_equal(np.delete(got[layer][at], 3, axis=1), np.delete(intact[at], 3, axis=1))
    with pytest.raises(JNeuronError, match=r"positions must lie in 0..3"):
        ctl.control(model, {layer: [3]}, stats, positions=[4])


def test_control_sweep_equals_separate_controls(mlp, data):
    x, _ = data
    stats = ctl.neuron_stats(mlp, x, ["layers/0"])
    vs = [-3.0, 0.0, 4.0]
    effect = ctl.control_sweep(mlp, x, "layers/0", [1, 3, 4], stats, vs)
    for k, v in enumerate(vs):
        single = ctl.control(mlp, {"layers/0": [1, 3, 4]}, stats, v=v)(jnp.asarray(x))
        np.testing.assert_allclose(effect.outputs[k], single, atol=1e-5)
    intact = np.asarray(mlp(jnp.asarray(x)))
    expected = np.sqrt(((effect.outputs - intact) ** 2).sum(-1)).mean(-1)
    np.testing.assert_allclose(effect.change, expected, rtol=1e-6)
    assert effect.change[2] > 0 and effect.flipped.shape == (3,)


def test_erasing_axis_directions_is_ablation(mlp, data):
    x, _ = data
    axes = np.eye(10)[[1, 6]]
    zeroed = jnf.ablate(mlp, {"layers/0": np.where(np.isin(np.arange(10), [1, 6]), 0, 1)})
    np.testing.assert_allclose(ctl.erase(mlp, {"layers/0": axes})(jnp.asarray(x)), zeroed(jnp.asarray(x)), atol=1e-5)
    means = jnf.layer_means(mlp, x, ["layers/0"])
    mean_ablated = jnf.ablate(mlp, {"layers/0": np.where(np.isin(np.arange(10), [1, 6]), 0, 1)}, mode="mean",
                              values=means)
    np.testing.assert_allclose(ctl.erase(mlp, {"layers/0": axes}, center=means)(jnp.asarray(x)),
                               mean_ablated(jnp.asarray(x)), atol=1e-5)


def test_erased_output_has_no_component_in_the_subspace(mlp, data, rng):
    x, _ = data
    directions = rng.normal(size=(3, 10))
    directions = np.vstack([directions, directions[0] + directions[1]])  # rank-deficient: 4 rows, rank 3
    center = rng.normal(size=10)
    variant = ctl.erase(mlp, {"layers/0": directions}, center={"layers/0": center})
    got = np.asarray(jnf.capture(variant, x, ["layers/0"])["layers/0"], np.float64)
    intact = np.asarray(jnf.capture(mlp, x, ["layers/0"])["layers/0"], np.float64)
    q, _ = np.linalg.qr(directions[:3].T)
    np.testing.assert_allclose((got - center) @ q, 0, atol=1e-4)
    orthogonal = np.eye(10) - q @ q.T
    np.testing.assert_allclose(got @ orthogonal, intact @ orthogonal, atol=1e-4)
    with pytest.raises(JNeuronError, match="directions are all zero"):
        ctl.erase(mlp, {"layers/0": np.zeros((2, 10))})
    with pytest.raises(JNeuronError, match="directions have 5 neurons; the layer has 10"):
        ctl.erase(mlp, {"layers/0": np.ones((1, 5))})(jnp.asarray(x))
