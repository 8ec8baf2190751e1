"""ON-LSTM: one step against a float64 numpy reference, monotone master gates, finite gradients, trees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from jneuron.errors import JNeuronError
from jneuron.flax import ONLSTM, ONLSTMCell, build_tree, cumax


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _reference_step(cell: ONLSTMCell, h, c, x):
    """Shen et al.'s equations in float64 numpy, written from the paper."""
    w_in = np.asarray(cell.input.kernel[...], np.float64)
    b_in = np.asarray(cell.input.bias[...], np.float64)
    w_rec = np.asarray(cell.recurrent.kernel[...], np.float64)
    z = x @ w_in + b_in + h @ w_rec
    m, size, hidden = cell.chunks, cell.chunk_size, cell.hidden

    def softmax(a):
        e = np.exp(a - a.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    f_master = np.cumsum(softmax(z[:, :m]), axis=-1)
    i_master = 1 - np.cumsum(softmax(z[:, m:2 * m]), axis=-1)
    rest = z[:, 2 * m:]
    o, f, i, g = (rest[:, k * hidden:(k + 1) * hidden] for k in range(4))
    new_c = np.empty_like(c)
    for n in range(hidden):  # neuron by neuron, its chunk's master gates
        fm, im = f_master[:, n // size], i_master[:, n // size]
        w = fm * im
        f_hat = _sigmoid(f[:, n]) * w + (fm - w)
        i_hat = _sigmoid(i[:, n]) * w + (im - w)
        new_c[:, n] = f_hat * c[:, n] + i_hat * np.tanh(g[:, n])
    new_h = _sigmoid(o) * np.tanh(new_c)
    return new_h, new_c, 1 - f_master.mean(axis=-1), f_master, i_master


@pytest.mark.parametrize("chunk_size", [1, 3, 12])
def test_one_step_matches_numpy_reference(rng, chunk_size):
    cell = ONLSTMCell(5, 12, chunk_size, rngs=nnx.Rngs(1))
    x = rng.normal(size=(4, 5)).astype(np.float32)
    h = rng.normal(size=(4, 12)).astype(np.float32)
    c = 3 * rng.normal(size=(4, 12)).astype(np.float32)
    (h1, c1), out = jax.jit(lambda carry, x: cell(carry, x))((jnp.asarray(h), jnp.asarray(c)), jnp.asarray(x))
    ref_h, ref_c, ref_d, ref_f, ref_i = _reference_step(cell, h.astype(np.float64), c.astype(np.float64),
                                                        x.astype(np.float64))
    np.testing.assert_allclose(h1, ref_h, atol=2e-6)
    np.testing.assert_allclose(c1, ref_c, atol=5e-6)
    np.testing.assert_allclose(out.hidden, ref_h, atol=2e-6)
    np.testing.assert_allclose(out.forget_distance, ref_d, atol=2e-6)
    f_master, i_master = jax.jit(cell.master_gates)((jnp.asarray(h), jnp.asarray(c)), jnp.asarray(x))
    np.testing.assert_allclose(f_master, ref_f, atol=2e-6)
    np.testing.assert_allclose(i_master, ref_i, atol=2e-6)


def test_layer_scan_equals_stepping_the_cell(rng):
    layer = ONLSTM(3, 8, chunk_size=2, rngs=nnx.Rngs(0))
    xs = jnp.asarray(rng.normal(size=(2, 6, 3)), jnp.float32)
    out, (h, c) = jax.jit(lambda xs: layer(xs))(xs)
    carry = layer.cell.initial_carry(2)
    step_fn = jax.jit(lambda carry, x: layer.cell(carry, x))
    for t in range(6):
        carry, step = step_fn(carry, xs[:, t])
        np.testing.assert_allclose(out.hidden[:, t], step.hidden, atol=1e-6)
        np.testing.assert_allclose(out.forget_distance[:, t], step.forget_distance, atol=1e-6)
        np.testing.assert_allclose(out.input_distance[:, t], step.input_distance, atol=1e-6)
    np.testing.assert_allclose(h, carry[0], atol=1e-6)
    np.testing.assert_allclose(c, carry[1], atol=1e-6)


_CELL = ONLSTMCell(4, 15, chunk_size=3, rngs=nnx.Rngs(7))
_GATES = jax.jit(lambda h, x: _CELL.master_gates((h, jnp.zeros_like(h)), x))


@given(st.integers(0, 2**31 - 1), st.floats(0.1, 30.0))
def test_master_gates_are_monotone_and_bounded(seed, spread):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(spread * rng.normal(size=(7, 4)), jnp.float32)
    h = jnp.asarray(rng.normal(size=(7, 15)), jnp.float32)
    f_master, i_master = _GATES(h, x)
    assert bool(jnp.all(jnp.diff(f_master, axis=-1) >= 0)) and bool(jnp.all(jnp.diff(i_master, axis=-1) <= 0))
    np.testing.assert_allclose(f_master[:, -1], 1.0, atol=1e-6)
    assert bool(jnp.all((f_master >= 0) & (f_master <= 1 + 1e-6) & (i_master >= -1e-6) & (i_master <= 1)))


def test_cumax_is_cumulative_softmax():
    z = jnp.array([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(cumax(z), [[0.25, 0.5, 0.75, 1.0], [1.0, 1.0, 1.0, 1.0]], atol=1e-6)


def test_gradients_are_finite_through_long_sequences(rng):
    layer = ONLSTM(3, 8, chunk_size=4, rngs=nnx.Rngs(2))
    xs = jnp.asarray(10 * rng.normal(size=(2, 30, 3)), jnp.float32)
    graphdef, params = nnx.split(layer)

    def loss(params):
        out, _ = nnx.merge(graphdef, params)(xs)
        return jnp.sum(out.hidden[:, -1] ** 2) + jnp.sum(out.forget_distance)

    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


def test_hidden_not_a_multiple_of_chunk_size_is_an_error():
    with pytest.raises(JNeuronError, match="multiple of chunk_size"):
        ONLSTMCell(3, 10, chunk_size=4, rngs=nnx.Rngs(0))
    with pytest.raises(JNeuronError, match="batch, time, features"):
        ONLSTM(3, 4, chunk_size=2, rngs=nnx.Rngs(0))(jnp.ones((5, 3)))


def test_build_tree_hand_cases():
    assert build_tree([0.3], ["a"]) == "a"
    assert build_tree([0.0, 1.0], ["a", "b"]) == ("a", "b")
    assert build_tree([1.0, 0.0], ["a", "b"]) == ("a", "b")
    # split at the maximum: left part, then (token, right part); ties go to the first position
    assert build_tree([0.2, 0.9, 0.1, 0.5, 0.3], list("abcde")) == ("a", ("b", ("c", ("d", "e"))))
    assert build_tree([0.2, 0.5, 0.1, 0.9, 0.3], list("abcde")) == (("a", ("b", "c")), ("d", "e"))
    assert build_tree([0.5, 0.5, 0.5], list("abc")) == ("a", ("b", "c"))


def _leaves(tree):
    return [tree] if isinstance(tree, str) else [leaf for part in tree for leaf in _leaves(part)]


@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=30))
def test_build_tree_keeps_the_token_order_and_is_binary(distances):
    tokens = [f"t{i}" for i in range(len(distances))]
    tree = build_tree(distances, tokens)
    assert _leaves(tree) == tokens

    def binary(node):
        return isinstance(node, str) or (len(node) == 2 and all(binary(part) for part in node))

    assert binary(tree)


def test_build_tree_rejects_mismatched_lengths():
    with pytest.raises(JNeuronError, match="one distance per token"):
        build_tree([0.1, 0.2], ["a"])
    with pytest.raises(JNeuronError, match="NaN"):
        build_tree([0.1, float("nan")], ["a", "b"])
