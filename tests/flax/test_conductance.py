"""Conductance: a hand-computed case, completeness converging with steps, and a slow per-feature reference."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jneuron.errors import JNeuronError
from jneuron.flax import conductance
from jneuron.models import MLP
from tests.flax_models import dense_chain, forward_error_scale
from tests.tolerance import assert_close, tolerance

# MultiLayer's sums: the path points (3 inputs), linear1 (3), linear2 (4)
HAND_FAN_INS = 3 + 3 + 4


def _constant_gradient_scale(y_end, y_start):
    """Rounding scale of the trapezoid sum ``sum_k g (y_k+1 - y_k)`` when ``dF/dy = g`` is 1 along the path: the
    errors of the ``y_k`` (each at most ``|y|``) telescope to the two ends, ``2 max|y|``, and the products and
    sum are relative to ``sum |y_k+1 - y_k|`` (``|y_end - y_start|`` for a monotone path)."""
    return 2 * np.maximum(np.abs(y_end), np.abs(y_start)) + np.abs(y_end - y_start)


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
    y_x, y_0 = np.array([90.0, 101.0, 101.0, 101.0]), np.array([0.0, 1.0, 1.0, 1.0])
    bound = tolerance(7 + HAND_FAN_INS)  # the 7 path steps, then the forward pass's sums
    scale = _constant_gradient_scale(y_x, y_0)
    assert_close(c.values, [[90.0, 100.0, 100.0, 100.0]], bound, scale[None], "values")
    f_scale = np.sum(y_x) + 1 + np.sum(y_0) + 1  # F(x) and F(0), each a sum of 4 outputs and a bias
    assert_close(c.delta, [390.0], tolerance(4), f_scale, "delta")
    assert_close(c.gap, [0.0], bound, scale.sum() + f_scale, "gap")  # the values' sum minus delta
    # the identity layer passes everything to feature 1: 390 up to the one path interval holding the kink
    # (not rounding: the trapezoid averages the end gradients of that interval, off by at most the input's
    # change over it, 100 / 50)
    c0 = conductance(model, jnp.array([[0.0, 100.0, 0.0]]), "linear0", target=1, steps=50)
    np.testing.assert_array_equal(c0.values[0, [0, 2]], 0.0)
    assert abs(c0.values[0, 1] - 390.0) <= 100 / 50
    # gap = (0 + values + 0) - delta, and delta = 390 exactly in float32: one subtraction and a sum of 3
    assert_close(c0.gap[0], c0.values[0, 1] - 390.0, tolerance(3), abs(c0.values[0, 1]) + 390.0, "gap")
    assert c.ranking().order.tolist() == [1, 2, 3, 0]


def test_hand_computed_pre_activation_has_quadrature_error_that_shrinks():
    # before the ReLU, neuron 0 is 100a - 10: it conducts only for a > 0.1, exactly 90 in the limit
    model = MultiLayer()
    x = jnp.array([[0.0, 100.0, 0.0]])
    steps = (7, 70, 700)
    errors = [abs(conductance(model, x, "linear1", target=0, steps=s).values[0, 0] - 90.0) for s in steps]
    assert errors[0] > errors[1] > errors[2]
    # not rounding: the trapezoid's error on the interval holding the kink (dF/dy jumps from 0 to 1 there) is
    # at most half of y's change over it, 100 / (2 steps); plus the rounding of the sum (y runs -10..90)
    for s, error in zip(steps, errors):
        assert error <= 100 / (2 * s) + tolerance(s + HAND_FAN_INS) * _constant_gradient_scale(90.0, -10.0), (s, error)
    # neurons 1..3 (100 a + 1) are linear in a with dF/dy = 1: the trapezoid is exact, up to rounding
    values = conductance(model, x, "linear1", target=0, steps=70).values[0, 1:]
    assert_close(values, [100.0] * 3, tolerance(70 + HAND_FAN_INS), _constant_gradient_scale(101.0, 1.0), "linear")


def _tanh_mlp(seed: int = 0) -> MLP:
    return MLP(6, (8, 5), 3, rngs=nnx.Rngs(seed), activation=jnp.tanh)


# the tanh MLP's sums: forward 6 and 8 (to layers/1), the head's 5, and back through 5 and 8 for dF/dy
TANH_FAN_INS = 6 + 8 + 5 + 5 + 8


def _layer0_path(model: MLP, x, base, target: int, alphas):
    """Float64 along the path, for layers/0 of the tanh MLP: ``y`` (alphas, inputs, 8), ``dF/dy``, ``dy/da``,
    ``F`` at the ends; and their rounding scales (what a float32 pass's errors are relative to):
    ``y_scale`` (sum |w p| + |b| and tanh's own rounding), ``g_scale`` and ``dy_scale`` (the products behind the
    gradient and the tangent, with the derivative factors ``1 - tanh^2`` perturbed by their inputs' errors),
    ``f_scale`` (the forward pass to F at each end)."""
    (w0, b0, _), (w1, b1, _), (wh, bh, _) = dense_chain(model)
    x = np.asarray(x, np.float64)
    base = np.broadcast_to(np.asarray(base, np.float64), x.shape)
    points = base + np.asarray(alphas)[:, None, None] * (x - base)
    z0 = points @ w0 + b0
    y = np.tanh(z0)
    y_scale = np.abs(points) @ np.abs(w0) + np.abs(b0) + np.abs(y)
    y1 = np.tanh(y @ w1 + b1)
    y1_scale = (np.abs(y) + y_scale) @ np.abs(w1) + np.abs(b1) + np.abs(y1)
    g = ((1 - y1 ** 2) * wh[:, target]) @ w1.T
    g_scale = ((1 - y1 ** 2 + 2 * np.abs(y1) * y1_scale) * np.abs(wh[:, target])) @ np.abs(w1).T
    tangent = (x - base) @ w0
    dy = (1 - y ** 2) * tangent
    dy_scale = (1 - y ** 2 + 2 * np.abs(y) * y_scale) * (np.abs(x - base) @ np.abs(w0))
    ends = forward_error_scale(dense_chain(model), np.stack([base, x]))
    return dict(y=y, g=g, dy=dy, y_scale=y_scale, g_scale=g_scale, dy_scale=dy_scale,
                f=ends[0][..., target], f_scale=ends[1][..., target])


def _reference_layer0(model: MLP, x, base, target: int, steps: int, method: str):
    """Float64 conductance of layers/0 by the same quadrature, and the rounding scale of each value.

    Trapezoid, ``sum_k (g_k + g_k+1) / 2 (y_k+1 - y_k)``: the errors of the ``y_k`` enter through differences,
    which telescope (summation by parts) to ``max|y error| (2 max|g| + sum |g_k+1 - g_k|)``; the gradients'
    errors are relative to ``g_scale |y_k+1 - y_k|``; the products and the sum to ``|g| |y_k+1 - y_k|``.
    Gauss-Legendre, ``sum_k w_k g_k dy_k``: ``w_k (g_scale |dy| + |g| dy_scale + |g dy|)``.
    """
    if method == "trapezoid":
        alphas = np.linspace(0.0, 1.0, steps + 1)
        p = _layer0_path(model, x, base, target, alphas)
        mean_g, step = (p["g"][1:] + p["g"][:-1]) / 2, np.diff(p["y"], axis=0)
        values = np.sum(mean_g * step, axis=0)
        variation = 2 * np.abs(p["g"]).max(0) + np.abs(np.diff(p["g"], axis=0)).sum(0)
        scale = (p["y_scale"].max(0) * variation + np.sum(p["g_scale"].max(0) * np.abs(step), axis=0)
                 + np.sum(np.abs(mean_g * step), axis=0))
    else:
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        p = _layer0_path(model, x, base, target, (nodes + 1) / 2)
        w = (weights / 2)[:, None, None]
        values = np.sum(w * p["g"] * p["dy"], axis=0)
        scale = np.sum(w * (p["g_scale"] * np.abs(p["dy"]) + np.abs(p["g"]) * p["dy_scale"]
                            + np.abs(p["g"] * p["dy"])), axis=0)
    return values, scale, p["f"][1] - p["f"][0], p["f_scale"].sum(0)


@pytest.mark.parametrize("method", ["trapezoid", "gausslegendre"])
def test_completeness_gap_shrinks_with_steps(rng, method):
    model = _tanh_mlp(1)
    x = jnp.asarray(2 * rng.normal(size=(16, 6)), jnp.float32)
    base = jnp.asarray(rng.normal(size=6), jnp.float32)
    # layers/0: the output depends on it non-linearly, so the quadrature has a real error to shrink
    steps = (2, 8, 64)
    results = [conductance(model, x, "layers/0", target=2, baseline=base, steps=s, method=method) for s in steps]
    gaps = [float(np.abs(c.gap).max()) for c in results]
    # not rounding: the trapezoid's error falls as 1 / steps^2 (2 -> 8 steps: by 16; 4 leaves room for 2 steps
    # being short of that regime); Gauss-Legendre's falls faster
    assert gaps[1] < gaps[0] / 4 and gaps[2] < gaps[1]
    # at 64 steps: at most 1 / steps^2 on from 8 (1.5: room to reach the regime), plus the rounding floor of
    # the gap, a sum of the 8 values minus F(x) - F(baseline)
    _, scale, _, f_scale = _reference_layer0(model, x, base, 2, 64, method)
    floor = tolerance(64 + 8 + TANH_FAN_INS) * (scale.sum(-1) + f_scale)
    assert np.all(np.abs(results[2].gap) <= 1.5 * gaps[1] * (8 / 64) ** 2 + floor), (results[2].gap, gaps[1])
    change = float(np.abs(results[0].delta).max())  # F(x) - F(baseline): the same at any number of steps
    assert change > 0.1  # the gaps are small against a real change of the output


def test_trapezoid_and_gauss_legendre_agree_at_convergence(rng):
    model = _tanh_mlp(2)
    x = jnp.asarray(rng.normal(size=(5, 6)), jnp.float32)
    a = conductance(model, x, "layers/0", target=0, steps=400).values
    b = conductance(model, x, "layers/0", target=0, steps=24, method="gausslegendre").values
    zero = np.zeros(6)
    a64, a_scale, _, _ = _reference_layer0(model, x, zero, 0, 400, "trapezoid")
    b64, b_scale, _, _ = _reference_layer0(model, x, zero, 0, 24, "gausslegendre")
    # each is its float64 quadrature up to rounding
    assert_close(a, a64, tolerance(400 + TANH_FAN_INS), a_scale, "trapezoid, 400 steps")
    assert_close(b, b64, tolerance(24 + TANH_FAN_INS), b_scale, "Gauss-Legendre, 24 nodes")
    # not rounding: they agree up to their discretization errors. The trapezoid's falls as 1 / steps^2, so
    # at 400 steps it is a third of the change from 200 (Richardson; 1.5 for room); Gauss-Legendre's at 24
    # nodes is below its change from 12
    a200 = _reference_layer0(model, x, zero, 0, 200, "trapezoid")[0]
    b12 = _reference_layer0(model, x, zero, 0, 12, "gausslegendre")[0]
    discretization = 1.5 * np.abs(a200 - a64) / 3 + np.abs(b12 - b64)
    assert_close(a, b, 1.0, discretization + tolerance(400 + TANH_FAN_INS) * (a_scale + b_scale), "a vs b")


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


def _per_feature_scale(model: MLP, x: np.ndarray, base: np.ndarray, target: int, steps: int) -> np.ndarray:
    """The rounding scale of :func:`_reference_per_feature`'s terms: each factor by the magnitudes behind it,
    the derivatives ``1 - tanh^2`` perturbed by their inputs' rounding (as in :func:`_layer0_path`)."""
    (w0, b0, _), (w1, b1, _), (head, _, _) = dense_chain(model)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    points = base[None] + ((nodes + 1) / 2)[:, None, None] * (x - base)[None]  # (nodes, inputs, 6)
    t0 = np.tanh(points @ w0 + b0)
    z0_scale = np.abs(points) @ np.abs(w0) + np.abs(b0) + np.abs(t0)
    y = t0 @ w1 + b1
    y_scale = (np.abs(t0) + z0_scale) @ np.abs(w1) + np.abs(b1)
    grad_f = (1 - np.tanh(y) ** 2 + 2 * np.abs(np.tanh(y)) * y_scale) * np.abs(head[:, target])  # (nodes, inputs, 5)
    inner = (1 - t0 ** 2 + 2 * np.abs(t0) * z0_scale)  # (nodes, inputs, 8)
    dy_dx = np.einsum("kj,nbk,ik->nbji", np.abs(w1), inner, np.abs(w0))  # (nodes, inputs, 5, 6)
    return np.einsum("n,nbj,nbji->bji", weights / 2, grad_f, dy_dx) * np.abs(x - base)[:, None, :]


def test_per_feature_matches_slow_reference(rng):
    model = _tanh_mlp(3)
    x = rng.normal(size=(3, 6)).astype(np.float32)
    base = rng.normal(size=(3, 6)).astype(np.float32)
    c = conductance(model, x, "layers/1", target=1, baseline=base, steps=12, method="gausslegendre",
                    per_feature=True)
    ref = _reference_per_feature(model, x.astype(np.float64), base.astype(np.float64), 1, 12)
    assert c.per_feature.shape == (3, 5, 6)
    scale = _per_feature_scale(model, x.astype(np.float64), base.astype(np.float64), 1, 12)
    bound = tolerance(12 + TANH_FAN_INS)  # the 12 nodes, then the forward and backward passes
    assert_close(c.per_feature, ref, bound, scale, "per feature vs float64")
    # two float32 results (the Jacobian's and the gradient's), summed over the 6 features
    assert_close(c.per_feature.sum(axis=2), c.values, 2 * tolerance(12 + 6 + TANH_FAN_INS), scale.sum(axis=2),
                 "per-feature sum vs values")
    assert_close(c.values, ref.sum(axis=2), tolerance(12 + 6 + TANH_FAN_INS), scale.sum(axis=2), "values vs float64")


def test_batching_baselines_and_ranking(rng):
    model = MLP(6, (8,), 3, rngs=nnx.Rngs(4))
    x = jnp.asarray(rng.normal(size=(7, 6)), jnp.float32)
    whole = conductance(model, x, "layers/0", target=0, steps=16)
    # dF/dy is the head's column, constant along the path: the rounding scale is |w| times the telescoped
    # errors of y at the ends and the sum of its steps (y's own scale: sum |w p| + |b| at each point)
    (w0, b0, _), (head, _, _) = dense_chain(model)
    alphas = np.linspace(0.0, 1.0, 17)[:, None, None]
    points = alphas * np.asarray(x, np.float64)
    y = np.maximum(points @ w0 + b0, 0)
    y_scale = np.abs(points) @ np.abs(w0) + np.abs(b0)
    scale = np.abs(head[:, 0]) * (2 * y_scale.max(0) + np.abs(np.diff(y, axis=0)).sum(0))
    bound = 2 * tolerance(16 + 6 + 8)  # two float32 results: 16 steps, the forward sums 6 and 8
    chunked = conductance(model, x, "layers/0", target=0, steps=16, batch_size=3)
    assert_close(whole.values, chunked.values, bound, scale, "batch_size=3")
    explicit = conductance(model, x, "layers/0", target=0, steps=16, baseline=jnp.zeros((7, 6)))
    assert_close(whole.values, explicit.values, bound, scale, "explicit zero baseline")
    by_function = conductance(model, x, ("layers", 0), target=lambda out: out[:, 0], steps=16)
    assert_close(whole.values, by_function.values, bound, scale, "target as a function")
    # a linear head after the layer's ReLU: the trapezoid rule on a Linear layer is exact up to the kinks
    ranking = whole.ranking("mlp")
    assert_close(ranking.scores, np.abs(whole.values).mean(axis=0), tolerance(7, whole.values.dtype),
                 np.abs(whole.values).mean(axis=0), "scores: a mean over 7 inputs")
    assert ranking.top(1)[0]["label"] == f"mlp/layers/0/{int(np.argmax(ranking.scores))}"
    assert whole.layer_shape == (8,)
    assert isinstance(model.layers[0], nnx.Linear)  # the caller's model is not modified


def test_zero_path_gives_zero_conductance(rng):
    model = MLP(6, (8,), 3, rngs=nnx.Rngs(5))
    x = jnp.asarray(rng.normal(size=(2, 6)), jnp.float32)
    c = conductance(model, x, "layers/0", target=0, baseline=x, steps=4)
    np.testing.assert_array_equal(c.values, 0.0)
    ranking = c.ranking()
    assert ranking.dead.size == 0 and np.all(ranking.scores == 0)  # no flow: score 0, not "constant"


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
