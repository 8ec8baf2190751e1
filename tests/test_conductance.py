"""Conductance: a hand-computed case, completeness converging with steps, and a slow per-feature reference."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jneuron.errors import JNeuronError
from jneuron.flax import conductance
from jneuron.models import MLP


class ReLU(nnx.Module):
    def __call__(self, x):
        return nnx.relu(x)


class MultiLayer(nnx.Module):
    """Identity layer, then a ReLU layer with biases (-10, 1, 1, 1), then a linear output (all-ones weights)."""

    def __init__(self):
        rngs = nnx.Rngs(0)
        self.linear0 = nnx.Linear(3, 3, rngs=rngs)
        self.linear0.kernel.set_value(jnp.eye(3))
        self.linear0.bias.set_value(jnp.zeros(3))
        self.linear1 = nnx.Linear(3, 4, rngs=rngs)
        self.linear1.kernel.set_value(jnp.ones((3, 4)))
        self.linear1.bias.set_value(jnp.array([-10.0, 1.0, 1.0, 1.0]))
        self.relu = ReLU()
        self.linear2 = nnx.Linear(4, 2, rngs=rngs)
        self.linear2.kernel.set_value(jnp.ones((4, 2)))
        self.linear2.bias.set_value(jnp.array([-1.0, 1.0]))

    def __call__(self, x):
        return self.linear2(self.relu(self.linear1(self.linear0(x))))


def test_hand_computed_relu_layer():
    # y(x) = relu(100 + b) = (90, 101, 101, 101), y(0) = relu(b) = (0, 1, 1, 1); F is the sum of y minus 1,
    # so dF/dy = 1 everywhere and the conductance is exactly y(x) - y(0) = (90, 100, 100, 100), sum 390.
    model = MultiLayer()
    c = conductance(model, jnp.array([[0.0, 100.0, 0.0]]), "relu", target=0, steps=7)
    np.testing.assert_allclose(c.values, [[90.0, 100.0, 100.0, 100.0]], rtol=1e-6)
    np.testing.assert_allclose(c.delta, [390.0], rtol=1e-6)
    np.testing.assert_allclose(c.gap, [0.0], atol=1e-4)
    # the identity layer passes everything to feature 1: 390 up to the one path interval holding the kink
    c0 = conductance(model, jnp.array([[0.0, 100.0, 0.0]]), "linear0", target=1, steps=50)
    np.testing.assert_array_equal(c0.values[0, [0, 2]], 0.0)
    assert abs(c0.values[0, 1] - 390.0) <= 100 / 50 and c0.gap[0] == pytest.approx(c0.values[0, 1] - 390.0)
    assert c.ranking().order.tolist() == [1, 2, 3, 0]


def test_hand_computed_pre_activation_has_quadrature_error_that_shrinks():
    # before the ReLU, neuron 0 is 100a - 10: it conducts only for a > 0.1, exactly 90 in the limit
    model = MultiLayer()
    x = jnp.array([[0.0, 100.0, 0.0]])
    errors = [abs(conductance(model, x, "linear1", target=0, steps=s).values[0, 0] - 90.0) for s in (7, 70, 700)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.2
    assert conductance(model, x, "linear1", target=0, steps=70).values[0, 1:] == pytest.approx([100.0] * 3)


def _tanh_mlp(seed: int = 0) -> MLP:
    return MLP(6, (8, 5), 3, rngs=nnx.Rngs(seed), activation=jnp.tanh)


@pytest.mark.parametrize("method", ["trapezoid", "gausslegendre"])
def test_completeness_gap_shrinks_with_steps(rng, method):
    model = _tanh_mlp(1)
    x = jnp.asarray(2 * rng.normal(size=(16, 6)), jnp.float32)
    base = jnp.asarray(rng.normal(size=6), jnp.float32)
    # layers/0: the output depends on it non-linearly, so the quadrature has a real error to shrink
    gaps = [float(np.abs(conductance(model, x, "layers/0", target=2, baseline=base, steps=s, method=method).gap).max())
            for s in (2, 8, 64)]
    assert gaps[1] < gaps[0] / 4 and gaps[2] < gaps[1]
    assert gaps[2] < 1e-4
    scale = float(np.abs(conductance(model, x, "layers/0", target=2, baseline=base, steps=4).delta).max())
    assert scale > 0.1  # the gaps are small against a real change of the output


def test_trapezoid_and_gauss_legendre_agree_at_convergence(rng):
    model = _tanh_mlp(2)
    x = jnp.asarray(rng.normal(size=(5, 6)), jnp.float32)
    a = conductance(model, x, "layers/0", target=0, steps=400).values
    b = conductance(model, x, "layers/0", target=0, steps=24, method="gausslegendre").values
    np.testing.assert_allclose(a, b, atol=2e-5)


def _reference_per_feature(model: MLP, x: np.ndarray, base: np.ndarray, target: int, steps: int) -> np.ndarray:
    """Slow float64 loops: ``(x_i - x'_i) sum_k w_k dF/dy_j dy_j/dx_i`` for y = layers/1.

    Written for the pre-activation; ``layers/1`` outputs tanh of it, and the product dF/dy_j dy_j/dx_i is
    the same either way (the tanh derivative moves from one factor to the other).
    """
    w0, b0 = (np.asarray(v, np.float64) for v in (model.layers[0].kernel[...], model.layers[0].bias[...]))
    w1, b1 = (np.asarray(v, np.float64) for v in (model.layers[1].kernel[...], model.layers[1].bias[...]))
    head = np.asarray(model.head.kernel[...], np.float64)[:, target]
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    out = np.zeros((len(x), w1.shape[1], x.shape[1]))
    for n in range(len(x)):
        for node, weight in zip((nodes + 1) / 2, weights / 2):
            point = base[n] + node * (x[n] - base[n])
            z0 = point @ w0 + b0
            y = np.tanh(z0) @ w1 + b1
            grad_f = (1 - np.tanh(y) ** 2) * head  # dF/dy
            for j in range(w1.shape[1]):
                for i in range(x.shape[1]):
                    dy_dx = sum(w1[k, j] * (1 - np.tanh(z0[k]) ** 2) * w0[i, k] for k in range(w0.shape[1]))
                    out[n, j, i] += weight * grad_f[j] * dy_dx * (x[n, i] - base[n, i])
    return out


def test_per_feature_matches_slow_reference(rng):
    model = _tanh_mlp(3)
    x = rng.normal(size=(3, 6)).astype(np.float32)
    base = rng.normal(size=(3, 6)).astype(np.float32)
    c = conductance(model, x, "layers/1", target=1, baseline=base, steps=12, method="gausslegendre",
                    per_feature=True)
    ref = _reference_per_feature(model, x.astype(np.float64), base.astype(np.float64), 1, 12)
    assert c.per_feature.shape == (3, 5, 6)
    np.testing.assert_allclose(c.per_feature, ref, atol=2e-6, rtol=1e-4)
    np.testing.assert_allclose(c.per_feature.sum(axis=2), c.values, atol=2e-6, rtol=1e-4)
    np.testing.assert_allclose(c.values, ref.sum(axis=2), atol=2e-6, rtol=1e-4)


def test_batching_baselines_and_ranking(rng):
    model = MLP(6, (8,), 3, rngs=nnx.Rngs(4))
    x = jnp.asarray(rng.normal(size=(7, 6)), jnp.float32)
    whole = conductance(model, x, "layers/0", target=0, steps=16)
    chunked = conductance(model, x, "layers/0", target=0, steps=16, batch_size=3)
    np.testing.assert_allclose(whole.values, chunked.values, rtol=1e-6, atol=1e-6)
    explicit = conductance(model, x, "layers/0", target=0, steps=16, baseline=jnp.zeros((7, 6)))
    np.testing.assert_allclose(whole.values, explicit.values, rtol=1e-6, atol=1e-6)
    by_function = conductance(model, x, ("layers", 0), target=lambda out: out[:, 0], steps=16)
    np.testing.assert_allclose(whole.values, by_function.values, rtol=1e-6, atol=1e-6)
    # a linear head after the layer's ReLU: the trapezoid rule on a Linear layer is exact up to the kinks
    ranking = whole.ranking("mlp")
    np.testing.assert_allclose(ranking.scores, np.abs(whole.values).mean(axis=0))
    assert ranking.top(1)[0]["label"] == f"mlp/layers/0/{int(np.argmax(ranking.scores))}"
    assert whole.layer_shape == (8,)
    assert isinstance(model.layers[0], nnx.Linear)  # the caller's model is not modified


def test_zero_path_gives_zero_conductance_and_dead_neurons(rng):
    model = MLP(6, (8,), 3, rngs=nnx.Rngs(5))
    x = jnp.asarray(rng.normal(size=(2, 6)), jnp.float32)
    c = conductance(model, x, "layers/0", target=0, baseline=x, steps=4)
    np.testing.assert_array_equal(c.values, 0.0)
    assert c.ranking().dead.tolist() == list(range(8))


def test_bad_arguments_are_named():
    model = MLP(6, (8,), 3, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 6))
    with pytest.raises(JNeuronError, match="no layer 'nope'"):
        conductance(model, x, "nope", target=0)
    with pytest.raises(JNeuronError, match="out of range"):
        conductance(model, x, "layers/0", target=3)
    with pytest.raises(JNeuronError, match="pass target"):
        conductance(model, x, "layers/0")
    with pytest.raises(JNeuronError, match="method"):
        conductance(model, x, "layers/0", target=0, method="simpson")
    with pytest.raises(JNeuronError, match="baseline shape"):
        conductance(model, x, "layers/0", target=0, baseline=jnp.zeros(5))
    with pytest.raises(JNeuronError, match="NaN"):
        conductance(model, x.at[1, 2].set(jnp.nan), "layers/0", target=0)
    with pytest.raises(JNeuronError, match="steps"):
        conductance(model, x, "layers/0", target=0, steps=0)


def test_follows_the_callers_dtype():
    model = MLP(4, (3,), 2, rngs=nnx.Rngs(0))
    c = conductance(model, np.ones((2, 4), np.float32), "layers/0", target=1, steps=8)
    assert c.values.dtype == np.float32 and c.delta.dtype == np.float32
