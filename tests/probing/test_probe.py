"""Probe training: the loss and one Adam step against numpy, planted signal, grid == separate trainings,
labels of any kind, determinism, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jneuron as jn
from jneuron.errors import JNeuronError
from jneuron.kernels import probe as kp
from jneuron.probing.probe import batch_rows
from tests.tolerance import assert_close, tolerance

PLANTED = (2, 5, 9)  # class c shifts neuron PLANTED[c]
SETTINGS = dict(epochs=8, batch_size=32, learning_rate=1e-2)


def planted(seed=0, tokens=600, neurons=12, offset=0.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, tokens)
    x = rng.normal(size=(tokens, neurons)) + offset
    for c, j in enumerate(PLANTED):
        x[y == c, j] += 2.5
    return x.astype(np.float32), y


def numpy_loss(w, b, x, y, l1, l2, squared):
    logits = x @ w.T + b
    logits = logits - logits.max(1, keepdims=True)
    ce = -np.mean(logits[np.arange(len(y)), y] - np.log(np.exp(logits).sum(1)))
    ridge = np.sum(w**2) if squared else np.sqrt(np.sum(w**2))
    return ce + l1 * np.abs(w).sum() + l2 * ridge


@pytest.mark.parametrize("squared", [False, True])
def test_loss_matches_numpy_and_penalty_spares_the_bias(rng, squared):
    x = rng.normal(size=(20, 6))
    y = rng.integers(0, 4, 20)
    w, b = rng.normal(size=(4, 6)), rng.normal(size=4)
    with jax.enable_x64(True):
        @jax.jit  # one compilation (an eager call compiles each of its small operations)
        def both(w, b, x, y):
            loss = kp.loss((w[None], b[None]), x, y, jnp.ones(20), jnp.ones((1, 6)), jnp.asarray([0.3]),
                           jnp.asarray([0.7]), squared=squared, regression=False)
            return loss, jax.grad(lambda p: kp.penalty(p[0], 1.0, 1.0))((w, b))

        ours, gb = both(jnp.asarray(w), jnp.asarray(b), jnp.asarray(x), jnp.asarray(y))
        # float64 both: the logits' dot products (6), the log-sum-exp (4), the mean (20), the penalties' sums
        # (24); each relative to its terms' magnitudes: |lse| + |z_y| per row, and the penalties themselves
        logits = x @ w.T + b
        lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        scale = (np.mean(np.abs(lse) + np.abs(logits[np.arange(20), y]) + (np.abs(x) @ np.abs(w).T).max(1))
                 + 0.3 * np.abs(w).sum() + 0.7 * (np.sum(w**2) if squared else np.sqrt(np.sum(w**2))))
        assert_close(float(ours), numpy_loss(w, b, x, y, 0.3, 0.7, squared), 2 * tolerance(6 + 4 + 20 + 24, np.float64),
                     scale, "loss")
        # the bias is not penalised: the penalty's gradient is zero on it
        assert not np.any(np.asarray(gb[1]))


def test_frobenius_gradient_at_zero_is_finite():
    g = jax.grad(lambda w: kp.penalty(w, 0.1, 0.5))(jnp.zeros((2, 3)))
    assert np.all(np.isfinite(np.asarray(g))) and not np.any(np.asarray(g))


def _gradient_scale(weight, bias, x, y, valid, masks, l1, l2, squared, regression):
    """Rounding scale of the loss gradient's entries ``(d weight, d bias)``: the outputs round relative to
    ``O = |w| |x| + |b|`` and move the softmax by at most ``2 max O`` (the squared error's residual by
    ``2 O``); the products over the tokens are relative to ``|d out| |x|``; the penalty's to its terms."""
    w = weight * masks[:, None, :]
    out = np.einsum("scn,tn->sct", w, x) + bias[:, :, None]
    o = np.einsum("scn,tn->sct", np.abs(w), np.abs(x)) + np.abs(bias)[:, :, None]
    if regression:
        d_out = 2 * (out - y[None, None, :])
        d_scale = np.abs(d_out) + 2 * (o + np.abs(out) + np.abs(y)[None, None, :])
    else:
        p = np.exp(out - out.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        d_scale = np.abs(p - np.eye(w.shape[1])[y].T[None]) + 2 * o.max(1, keepdims=True)
    d_scale = d_scale * valid
    count = max(valid.sum(), 1)
    norm = np.sqrt((w**2).sum(axis=(1, 2)))[:, None, None]
    ridge = 2 * np.abs(w) if squared else np.where(norm > 0, np.abs(w) / np.where(norm > 0, norm, 1), 0)
    weight_scale = (np.einsum("sct,tn->scn", d_scale, np.abs(x)) / count
                    + l1[:, None, None] + l2[:, None, None] * ridge) * masks[:, None, :]
    return weight_scale, d_scale.sum(2) / count


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("regression", [False, True])
def test_written_out_gradient_equals_autodiff_of_the_loss(rng, squared, regression):
    """Three settings, one with a mask and one at zero weight (the subgradients), a padded batch row."""
    classes = 1 if regression else 4
    x = rng.normal(size=(9, 6)) + 3.0
    y = rng.normal(size=9) if regression else rng.integers(0, classes, 9)
    weight = rng.normal(size=(3, classes, 6))
    weight[1] = 0.0
    weight[2, :, 4] = 0.0
    masks = np.ones((3, 6))
    masks[0, [1, 3]] = 0
    valid = np.ones(9)
    valid[-1] = 0
    l1, l2 = np.array([0.3, 0.1, 0.0]), np.array([0.7, 0.2, 0.5])
    bias = rng.normal(size=(3, classes))
    with jax.enable_x64(True):
        args = [jnp.asarray(a) for a in (x, y, valid, masks, l1, l2)]
        params = (jnp.asarray(weight), jnp.asarray(bias))

        @jax.jit  # one compilation for both (an eager gradient compiles each of its many small operations)
        def both(params, *args):
            return (kp.gradient(params, *args, squared=squared, regression=regression),
                    jax.grad(kp.loss)(params, *args, squared=squared, regression=regression))

        got, want = both(params, *args)
    # two float64 computations: the outputs' sums (6 neurons, 4 classes), then over the 9 tokens
    scales = _gradient_scale(weight, bias, x, y, valid, masks, l1, l2, squared, regression)
    for a, b, scale, name in zip(got, want, scales, ("weight", "bias")):
        assert_close(np.asarray(a), np.asarray(b), 2 * tolerance(6 + 4 + 9, np.float64), scale, f"d {name}")


@pytest.mark.parametrize("squared", [False, True])
def test_no_masks_is_every_neuron(rng, squared):
    """masks=None (the single probe and the penalty grid) trains and evaluates as all-ones masks do."""
    x = jnp.asarray(rng.normal(size=(40, 6)).astype(np.float32) + 2.0)
    y = jnp.asarray(rng.integers(0, 3, 40).astype(np.int32))
    rows, valid = batch_rows(40, 3, 8, seed=2)
    l1, l2 = jnp.asarray([0.0, 1e-2]), jnp.asarray([1e-2, 0.0])
    args = dict(classes=3, learning_rate=1e-2, squared=squared)
    ones = kp.train(x, y, jnp.ones((2, 6)), l1, l2, rows, valid, **args)
    none = kp.train(x, y, None, l1, l2, rows, valid, **args)
    # an optimizer trajectory, not one rounding: masks of ones multiply exactly, so the two differ only where
    # the compiler orders a sum differently, and Adam's normalized steps (m / sqrt(v)) pass a relative error
    # of the gradients on at about its size per step; 1e-6 relative (~10 float32 roundings) over these 15
    # steps, and 1e-7 absolute for weights near 0, where sign(w) flips the L1 subgradient
    for a, b in zip(ones, none):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert np.abs(np.asarray(none[0])).max() > 1e-3  # it trained
    np.testing.assert_array_equal(kp.confusion(none, x, y, None, 3), kp.confusion(none, x, y, jnp.ones((2, 6)), 3))


def test_one_full_batch_adam_step_matches_numpy(rng):
    """From zero, Adam's first step is -lr * g / (|g| + eps): checks loss, gradient, bias and optimizer."""
    x = rng.normal(size=(16, 5)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    w = np.zeros((3, 5))
    probs = np.full((16, 3), 1 / 3)
    onehot = np.eye(3)[y]
    g_w = (probs - onehot).T @ x / 16  # CE gradient; the Frobenius penalty has gradient 0 at 0, L1 sign(0)=0
    g_b = (probs - onehot).mean(0)
    lr = 0.01
    probe = jn.train_probe(x, y, l1=0.1, l2=0.1, epochs=1, batch_size=16, learning_rate=lr, shuffle=False)
    # the step lr g / (|g| + eps) hardly depends on g's rounding (its derivative is lr eps / (|g| + eps)^2);
    # g rounds relative to |p - onehot| |x| / 16 over the 16 tokens and 5 neurons; then a few float32
    # roundings of the step itself, relative to lr
    bound = tolerance(16 + 5)
    g_w_scale, g_b_scale = np.abs(probs - onehot).T @ np.abs(x) / 16, np.abs(probs - onehot).mean(0)
    for got, g, g_scale, name in ((probe.weight, g_w, g_w_scale, "weight"), (probe.bias, g_b, g_b_scale, "bias")):
        expected = -lr * g / (np.abs(g) + 1e-8)
        sensitivity = lr * 1e-8 / (np.abs(g) + 1e-8) ** 2 * g_scale
        assert_close(got, (w if name == "weight" else 0) + expected, bound, sensitivity + lr, name)


def test_batches_cover_every_token_once_per_epoch():
    rows, valid = batch_rows(10, 3, 4, seed=1)
    rows, valid = np.asarray(rows).reshape(3, -1), np.asarray(valid).reshape(3, -1)
    assert rows.shape == (3, 12) and valid.sum() == 30
    for epoch in range(3):
        assert sorted(rows[epoch][valid[epoch]].tolist()) == list(range(10))
    assert rows[0].tolist() != rows[1].tolist()
    fixed, _ = batch_rows(10, 2, 4, shuffle=False)
    assert np.asarray(fixed).reshape(2, -1)[1, :10].tolist() == list(range(10))


@pytest.mark.parametrize("devices", [None, 2])  # None: unsharded; 2: tokens over the 2 devices of every test process
def test_planted_neurons_rank_first_and_probe_is_accurate(devices):
    x, y = planted()
    probe = jn.train_probe(x, y, l1=1e-3, l2=1e-3, devices=devices, **SETTINGS)
    report = probe.evaluate(x, y)
    # statistical, not rounding: a 2.5 sd shift of one neuron per class leaves ~ Phi(-1.25) of the rows on the
    # wrong side of each pair's midpoint; 0.9 allows for 8 epochs short of convergence
    assert report["accuracy"] > 0.9 and report["macro_f1"] > 0.9
    assert set(jn.neuron_ordering(probe).order[:3].tolist()) == set(PLANTED)
    per_class = jn.top_neurons(probe, 0.5).per_class  # a class's weights on the others' neurons are negative
    assert all(set(per_class[c][:3].tolist()) <= set(PLANTED) for c in range(3))
    assert set(jn.probeless(x, y).overall.order[:3].tolist()) == set(PLANTED)


def test_metrics_match_numpy(rng):
    x, y = planted()
    probe = jn.train_probe(x, y, **SETTINGS)
    predicted = probe.predict(x)
    report = probe.evaluate(x, y)
    # ratios of exact counts: a division (and for macro F1 a mean of 3), rounded in at most float32
    assert_close(report["accuracy"], np.mean(predicted == y), tolerance(1), what="accuracy")
    f1 = []
    for c in range(3):
        tp = np.sum((predicted == c) & (y == c))
        f1.append(2 * tp / (np.sum(predicted == c) + np.sum(y == c)))
        assert_close(report["per_class"][c], tp / np.sum(y == c), tolerance(1), what=f"recall of class {c}")
    assert_close(report["macro_f1"], np.mean(f1), tolerance(3), what="macro F1")


def test_any_labels_map_in_sorted_order_to_the_same_probe():
    x, y = planted()
    as_ints = jn.train_probe(x, y, **SETTINGS)
    sparse = np.array([7, 30, 100])[y]
    as_sparse = jn.train_probe(x, sparse, **SETTINGS)
    as_strings = jn.train_probe(x, np.array(["ADJ", "NN", "VB"])[y].tolist(), **SETTINGS)
    assert as_sparse.classes.tolist() == [7, 30, 100] and as_strings.classes.tolist() == ["ADJ", "NN", "VB"]
    np.testing.assert_array_equal(as_ints.weight, as_sparse.weight)
    np.testing.assert_array_equal(as_ints.weight, as_strings.weight)
    assert as_strings.predict(x[:3]).tolist() == np.array(["ADJ", "NN", "VB"])[as_ints.predict(x[:3])].tolist()


def test_deterministic_for_a_seed():
    x, y = planted()
    a = jn.train_probe(x, y, seed=3, **SETTINGS)
    b = jn.train_probe(x, y, seed=3, **SETTINGS)
    c = jn.train_probe(x, y, seed=4, **SETTINGS)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert not np.array_equal(a.weight, c.weight)


def test_grid_equals_separate_trainings_and_choice_is_explicit():
    x, y = planted()
    xv, yv = planted(seed=1)
    grid = jn.train_probes(x, y, l1=[0.0, 1e-2], l2=[0.0, 1e-1], validation=(xv, yv), **SETTINGS)
    for i, a in enumerate([0.0, 1e-2]):
        for j, b in enumerate([0.0, 1e-1]):
            alone = jn.train_probe(x, y, l1=a, l2=b, **SETTINGS)
            # an optimizer trajectory, not one rounding: the grid trains 4 settings in one product, whose
            # sums round differently from one setting's, and 152 Adam steps pass each step's relative
            # gradient error on (m / sqrt(v) normalizes, so about its size per step: ~150 x 1e-6)
            np.testing.assert_allclose(grid.probes[i][j].weight, alone.weight, rtol=2e-4, atol=2e-6)
            # so the two probes may disagree on a validation row that lies on their decision boundary:
            # one row of 600
            assert abs(grid.accuracy[i, j] - alone.evaluate(xv, yv)["accuracy"]) <= 1 / len(yv) + tolerance(1)
    close = grid.accuracy >= grid.accuracy.max() - grid.tolerance
    assert close[grid.best] and grid.neurons_needed[grid.best] == grid.neurons_needed[close].min()
    assert grid.to_dict()["best"]["l1"] == grid.l1[grid.best[0]]


def test_regression_probe_recovers_the_weights(rng):
    x = rng.normal(size=(600, 12)).astype(np.float32)
    target = 2.0 * x[:, 4] - 1.0 * x[:, 7] + 0.5
    probe = jn.train_probe(x, target, task="regression", epochs=30, batch_size=32, learning_rate=1e-2)
    # optimizer convergence, not rounding: from 0, Adam's steps of at most lr = 1e-2 need ~200 of the 570 to
    # reach w = 2, then hover within a few lr of the optimum
    np.testing.assert_allclose(probe.weight[0, [4, 7]], [2.0, -1.0], atol=0.05)
    assert probe.evaluate(x, target)["r2"] > 0.99


def test_bad_input_is_named():
    x, y = planted()
    with pytest.raises(JNeuronError, match="at least 2 classes"):
        jn.train_probe(x, np.zeros(len(y), int))
    with pytest.raises(JNeuronError, match="no tokens"):
        jn.train_probe(np.zeros((0, 12), np.float32), np.zeros(0, int))
    bad = x.copy()
    bad[17, 3] = np.nan
    with pytest.raises(JNeuronError, match="row 18, neuron 3"):
        jn.train_probe(bad, y)
    with pytest.raises(JNeuronError, match="expected 600 labels"):
        jn.train_probe(x, y[:-1])
    with pytest.raises(JNeuronError, match="2-D"):
        jn.train_probe(x[:, :, None], y)
    with pytest.raises(JNeuronError, match="l1"):
        jn.train_probe(x, y, l1=-1.0)
    with pytest.raises(JNeuronError, match="real numbers"):
        jn.train_probe(x, np.array(["a", "b"] * 300), task="regression")
    probe = jn.train_probe(x, y, **SETTINGS)
    with pytest.raises(JNeuronError, match=r"row 1 \(counted from 1\) has label 42"):
        probe.evaluate(x[:2], np.array([42, 0]))
    with pytest.raises(JNeuronError, match="12 neurons"):
        probe.evaluate(x[:, :5], y)


def test_grid_holds_out_a_seeded_share():
    x, y = planted()
    a = jn.train_probes(x, y, l1=[1e-3], l2=[0.0], validation=0.2, **SETTINGS)
    b = jn.train_probes(x, y, l1=[1e-3], l2=[0.0], validation=0.2, **SETTINGS)
    # statistical: 120 held-out rows of the planted data (see test_planted_neurons_rank_first_...), ~0.95
    assert a.accuracy.shape == (1, 1) and a.accuracy[0, 0] > 0.85 and a.best == (0, 0)
    np.testing.assert_array_equal(a.probe.weight, b.probe.weight)
    with pytest.raises(JNeuronError, match="validation"):
        jn.train_probes(x, y, validation=1.5)
