"""Probe training: the loss and one Adam step against numpy, planted signal, grid == separate trainings,
labels of any kind, determinism, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jneuron as jn
from jneuron.errors import JNeuronError
from jneuron.kernels import probe as kp
from jneuron.probe import batch_rows

PLANTED = (2, 5, 9)  # class c shifts neuron PLANTED[c]
SETTINGS = dict(epochs=8, batch_size=32, lr=1e-2)


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
        ours = kp.loss((jnp.asarray(w)[None], jnp.asarray(b)[None]), jnp.asarray(x), jnp.asarray(y),
                       jnp.ones(20), jnp.ones((1, 6)), jnp.asarray([0.3]), jnp.asarray([0.7]), squared=squared,
                       regression=False)
        assert float(ours) == pytest.approx(numpy_loss(w, b, x, y, 0.3, 0.7, squared), rel=1e-12)
        # the bias is not penalised: the penalty's gradient is zero on it
        gb = jax.grad(lambda p: kp.penalty(p[0], 1.0, 1.0))((jnp.asarray(w), jnp.asarray(b)))
        assert not np.any(np.asarray(gb[1]))


def test_frobenius_gradient_at_zero_is_finite():
    g = jax.grad(lambda w: kp.penalty(w, 0.1, 0.5))(jnp.zeros((2, 3)))
    assert np.all(np.isfinite(np.asarray(g))) and not np.any(np.asarray(g))


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
    with jax.enable_x64(True):
        args = [jnp.asarray(a) for a in (x, y, valid, masks, l1, l2)]
        params = (jnp.asarray(weight), jnp.asarray(rng.normal(size=(3, classes))))
        want = jax.grad(kp.loss)(params, *args, squared=squared, regression=regression)
        got = kp.gradient(params, *args, squared=squared, regression=regression)
        for a, b in zip(got, want):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)


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
    probe = jn.train_probe(x, y, l1=0.1, l2=0.1, epochs=1, batch_size=16, lr=lr, shuffle=False)
    np.testing.assert_allclose(probe.weight, w - lr * g_w / (np.abs(g_w) + 1e-8), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probe.bias, -lr * g_b / (np.abs(g_b) + 1e-8), rtol=1e-5, atol=1e-7)


def test_batches_cover_every_token_once_per_epoch():
    rows, valid = batch_rows(10, 3, 4, seed=1)
    rows, valid = np.asarray(rows).reshape(3, -1), np.asarray(valid).reshape(3, -1)
    assert rows.shape == (3, 12) and valid.sum() == 30
    for epoch in range(3):
        assert sorted(rows[epoch][valid[epoch]].tolist()) == list(range(10))
    assert rows[0].tolist() != rows[1].tolist()
    fixed, _ = batch_rows(10, 2, 4, shuffle=False)
    assert np.asarray(fixed).reshape(2, -1)[1, :10].tolist() == list(range(10))


def test_planted_neurons_rank_first_and_probe_is_accurate():
    x, y = planted()
    probe = jn.train_probe(x, y, l1=1e-3, l2=1e-3, **SETTINGS)
    report = probe.evaluate(x, y)
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
    assert report["accuracy"] == pytest.approx(np.mean(predicted == y))
    f1 = []
    for c in range(3):
        tp = np.sum((predicted == c) & (y == c))
        f1.append(2 * tp / (np.sum(predicted == c) + np.sum(y == c)))
        assert report["per_class"][c] == pytest.approx(tp / np.sum(y == c))
    assert report["macro_f1"] == pytest.approx(np.mean(f1))


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
            np.testing.assert_allclose(grid.probes[i][j].weight, alone.weight, rtol=2e-4, atol=2e-6)
            assert grid.accuracy[i, j] == pytest.approx(alone.evaluate(xv, yv)["accuracy"], abs=2e-3)
    close = grid.accuracy >= grid.accuracy.max() - grid.tolerance
    assert close[grid.best] and grid.neurons_needed[grid.best] == grid.neurons_needed[close].min()
    assert grid.to_dict()["best"]["l1"] == grid.l1[grid.best[0]]


def test_regression_probe_recovers_the_weights(rng):
    x = rng.normal(size=(600, 12)).astype(np.float32)
    target = 2.0 * x[:, 4] - 1.0 * x[:, 7] + 0.5
    probe = jn.train_probe(x, target, task="regression", epochs=30, batch_size=32, lr=1e-2)
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
    with pytest.raises(JNeuronError, match="row 17, neuron 3"):
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
    with pytest.raises(JNeuronError, match="row 0 has label 42"):
        probe.evaluate(x[:2], np.array([42, 0]))
    with pytest.raises(JNeuronError, match="12 neurons"):
        probe.evaluate(x[:, :5], y)


def test_grid_holds_out_a_seeded_share():
    x, y = planted()
    a = jn.train_probes(x, y, l1=[1e-3], l2=[0.0], validation=0.2, **SETTINGS)
    b = jn.train_probes(x, y, l1=[1e-3], l2=[0.0], validation=0.2, **SETTINGS)
    assert a.accuracy.shape == (1, 1) and a.accuracy[0, 0] > 0.85 and a.best == (0, 0)
    np.testing.assert_array_equal(a.probe.weight, b.probe.weight)
    with pytest.raises(JNeuronError, match="validation"):
        jn.train_probes(x, y, validation=1.5)
