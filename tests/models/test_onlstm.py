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
from tests.tolerance import assert_close, tolerance


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


def _after_z(z, c, m: int, size: int) -> np.ndarray:
    """The step after its pre-activations ``z (batch, 2 m + 4 hidden)``, in float64 numpy:
    ``[h', c', d_f, d_i, f~, i~]`` per row."""
    def cumax(a):
        e = np.exp(a - a.max(axis=-1, keepdims=True))
        return np.cumsum(e / e.sum(axis=-1, keepdims=True), axis=-1)

    f_master, i_master = cumax(z[:, :m]), 1 - cumax(z[:, m:2 * m])
    o, f, i, g = np.split(z[:, 2 * m:], 4, axis=1)
    fm, im = np.repeat(f_master, size, axis=1), np.repeat(i_master, size, axis=1)
    w = fm * im
    new_c = (_sigmoid(f) * w + (fm - w)) * c + (_sigmoid(i) * w + (im - w)) * np.tanh(g)
    new_h = _sigmoid(o) * np.tanh(new_c)
    return np.concatenate([new_h, new_c, 1 - f_master.mean(axis=1, keepdims=True),
                           i_master.mean(axis=1, keepdims=True), f_master, i_master], axis=1)


def _abs_jacobian(fn, a: np.ndarray) -> np.ndarray:
    """``|d fn / d a|`` per row, ``(batch, outputs, inputs)``, by central differences in float64 (a scale
    needs a few digits; steps of 1e-6 leave ~1e-10 of error)."""
    columns = []
    for k in range(a.shape[1]):
        step = 1e-6 * (1 + np.abs(a[:, k:k + 1]))
        up, down = a.copy(), a.copy()
        up[:, k:k + 1] += step
        down[:, k:k + 1] -= step
        columns.append((fn(up) - fn(down)) / (2 * step))
    return np.abs(np.stack(columns, axis=2))


def _error_scales(cell: ONLSTMCell, xs, h, c) -> list[dict]:
    """Per step of ``xs (batch, time, features)`` from ``(h, c)``: the error scale of each output, in units of
    ``tolerance(features + hidden + chunks)`` (the pre-activations' dot products, then the cumax's sum).

    A running error analysis through time with the step's actual Jacobians (float64): the pre-activations
    round relative to ``sum |x w| + |b| + sum |h u|`` and carry the incoming error of ``h`` through ``|U|``;
    the step passes both, and the incoming error of ``c``, on through ``|d out / d z|`` and ``|d out / d c|``,
    and adds its own elementwise roundings: 8 of them (``sigmoid(f) w + (f~ - w)``, ``f^ c + i^ tanh(g)``,
    ``sigmoid(o) tanh(c)``) on values of size at most ``1 + |c|``, which the ``STEPS`` of
    :func:`tests.tolerance.tolerance` cover at that scale. So the depth factor over T steps is the product
    of the Jacobians the carries actually see, not a guess.
    """
    m, size, hidden = cell.chunks, cell.chunk_size, cell.hidden
    w_in, b_in, w_rec = (np.asarray(v, np.float64) for v in (
        cell.input.kernel[...], cell.input.bias[...], cell.recurrent.kernel[...]))
    h, c = np.asarray(h, np.float64), np.asarray(c, np.float64)
    error_h, error_c = np.zeros_like(h), np.zeros_like(c)
    scales = []
    for t in range(xs.shape[1]):
        x = np.asarray(xs[:, t], np.float64)
        z = x @ w_in + b_in + h @ w_rec
        error_z = np.abs(x) @ np.abs(w_in) + np.abs(b_in) + (np.abs(h) + error_h) @ np.abs(w_rec)
        d_z = _abs_jacobian(lambda a: _after_z(a, c, m, size), z)
        d_c = _abs_jacobian(lambda a: _after_z(z, a, m, size), c)
        own = np.concatenate([1 + np.abs(c), 1 + np.abs(c), np.ones((len(c), 2 + 2 * m))], axis=1)
        error = np.einsum("boz,bz->bo", d_z, error_z) + np.einsum("boc,bc->bo", d_c, error_c) + own
        out = _after_z(z, c, m, size)
        h, c = out[:, :hidden], out[:, hidden:2 * hidden]
        error_h, error_c = error[:, :hidden], error[:, hidden:2 * hidden]
        scales.append(dict(h=error_h, c=error_c, forget=error[:, 2 * hidden], input=error[:, 2 * hidden + 1],
                           f_master=error[:, 2 * hidden + 2:2 * hidden + 2 + m],
                           i_master=error[:, 2 * hidden + 2 + m:]))
    return scales


@pytest.mark.parametrize("chunk_size", [1, 3, 12])
def test_one_step_matches_numpy_reference(rng, chunk_size):
    cell = ONLSTMCell(5, 12, chunk_size, rngs=nnx.Rngs(1))
    x = rng.normal(size=(4, 5)).astype(np.float32)
    h = rng.normal(size=(4, 12)).astype(np.float32)
    c = 3 * rng.normal(size=(4, 12)).astype(np.float32)
    carry = (jnp.asarray(h), jnp.asarray(c))
    ((h1, c1), out), (f_master, i_master) = jax.jit(lambda carry, x: (cell(carry, x), cell.master_gates(carry, x)))(
        carry, jnp.asarray(x))  # one compilation for the step and the gates
    ref_h, ref_c, ref_d, ref_f, ref_i = _reference_step(cell, h.astype(np.float64), c.astype(np.float64),
                                                        x.astype(np.float64))
    bound = tolerance(5 + 12 + cell.chunks)  # float32 against float64: one pass's rounding
    scale = _error_scales(cell, x[:, None], h, c)[0]
    assert_close(h1, ref_h, bound, scale["h"], "h")
    assert_close(c1, ref_c, bound, scale["c"], "c")
    assert_close(out.hidden, ref_h, bound, scale["h"], "hidden")
    assert_close(out.forget_distance, ref_d, bound, scale["forget"], "forget distance")
    assert_close(f_master, ref_f, bound, scale["f_master"], "master forget gate")
    assert_close(i_master, ref_i, bound, scale["i_master"], "master input gate")


def test_layer_scan_equals_stepping_the_cell(rng):
    layer = ONLSTM(3, 8, chunk_size=2, rngs=nnx.Rngs(0))
    xs = jnp.asarray(rng.normal(size=(2, 6, 3)), jnp.float32)
    out, (h, c) = jax.jit(lambda xs: layer(xs))(xs)
    carry = layer.cell.initial_carry(2)
    step_fn = jax.jit(lambda carry, x: layer.cell(carry, x))
    # two float32 passes, each off by its rounding carried through the steps so far
    bound = 2 * tolerance(3 + 8 + layer.cell.chunks)
    scales = _error_scales(layer.cell, np.asarray(xs), *carry)
    for t in range(6):
        carry, step = step_fn(carry, xs[:, t])
        assert_close(out.hidden[:, t], step.hidden, bound, scales[t]["h"], f"hidden, step {t}")
        assert_close(out.forget_distance[:, t], step.forget_distance, bound, scales[t]["forget"], f"d_f, step {t}")
        assert_close(out.input_distance[:, t], step.input_distance, bound, scales[t]["input"], f"d_i, step {t}")
    assert_close(h, carry[0], bound, scales[-1]["h"], "final h")
    assert_close(c, carry[1], bound, scales[-1]["c"], "final c")


_CELL = ONLSTMCell(4, 15, chunk_size=3, rngs=nnx.Rngs(7))
_GATES = jax.jit(lambda h, x: _CELL.master_gates((h, jnp.zeros_like(h)), x))


@given(st.integers(0, 2**31 - 1), st.floats(0.1, 30.0))
def test_master_gates_are_monotone_and_bounded(seed, spread):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(spread * rng.normal(size=(7, 4)), jnp.float32)
    h = jnp.asarray(rng.normal(size=(7, 15)), jnp.float32)
    f_master, i_master = _GATES(h, x)
    assert bool(jnp.all(jnp.diff(f_master, axis=-1) >= 0)) and bool(jnp.all(jnp.diff(i_master, axis=-1) <= 0))
    # the last cumulative sum of a softmax over the 5 chunks is 1 up to the rounding of that sum (scale 1);
    # the logits' own errors cancel in the normalization
    slack = tolerance(5)
    assert_close(f_master[:, -1], np.ones(7), slack, what="cumax ends at 1")
    assert bool(jnp.all((f_master >= 0) & (f_master <= 1 + slack) & (i_master >= -slack) & (i_master <= 1)))


def test_cumax_is_cumulative_softmax():
    z = jnp.array([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    # a softmax over 4 and its cumulative sum: rounding relative to the probabilities' total, 1
    assert_close(cumax(z), [[0.25, 0.5, 0.75, 1.0], [1.0, 1.0, 1.0, 1.0]], tolerance(4), what="cumax")


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


def test_tree_spans_of_branching_trees():
    from jneuron.models.onlstm import bracket_f1, tree_spans

    n = 6
    right = tree_spans(build_tree(np.arange(n, 0, -1), range(n)))
    left = tree_spans(build_tree(np.arange(n), range(n)))
    assert right == {(i, n) for i in range(1, n - 1)}
    assert left == {(0, j) for j in range(2, n)}
    assert bracket_f1(right, right) == 1.0 and bracket_f1(right, left) == 0.0
    full = tree_spans(build_tree(np.arange(n, 0, -1), range(n)), trivial=True)
    assert full == right | {(0, n)} | {(i, i + 1) for i in range(n)}
    assert tree_spans(build_tree([0.5, 0.1], range(2))) == set()


@given(st.lists(st.floats(0, 1), min_size=2, max_size=12), st.integers(0, 2**31 - 1))
def test_bracket_f1_against_its_definition(distances, seed):
    from jneuron.models.onlstm import bracket_f1, tree_spans

    n = len(distances)
    a = tree_spans(build_tree(distances, range(n)))
    b = tree_spans(build_tree(np.random.default_rng(seed).random(n), range(n)))
    # every binary tree over n tokens has n - 2 non-trivial constituents
    assert len(a) == len(b) == n - 2
    expected = 1.0 if n == 2 else len(a & b) / (n - 2)  # precision = recall when the counts match
    assert bracket_f1(a, b) == pytest.approx(expected, rel=tolerance(n, np.float64))
