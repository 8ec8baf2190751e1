"""Ablation curves: every k equals a separate ablation; order forms agree; errors say what was wrong."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jneuron import JNeuronError, NeuronIndex, Ranking
from jneuron import flax as jnf
from jneuron.data.bundled import load_digits
from jneuron.models import MLP, train_classifier
from jneuron.report.figures import ablation_curve_figure
from tests.flax_models import dense_chain, forward_error_scale, near_ties
from tests.tolerance import tolerance

LAYERS = ["layers/0", "layers/1"]
FAN_IN = 64  # the MLP's longest dot product: the 64 pixels (then 16 and 8)


@pytest.fixture(scope="module")
def trained():
    digits = load_digits()
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes float and int32
        model = train_classifier(MLP(64, (16, 8), 10, rngs=nnx.Rngs(0)), digits.images, digits.labels, epochs=2)
    return model, digits.images[:400], digits.labels[:400]


def _manual(model, x, y, order, k, widths, mode):
    """The accuracy of a separate ablation, and how far a correct curve's may be from it: one sample for every
    row whose top two logits lie within two float32 passes' rounding of each other (its arg-max may flip),
    and a float32 rounding of the fraction."""
    removed = np.zeros(sum(widths), bool)
    removed[order[:k]] = True
    masks = dict(zip(LAYERS, np.split((~removed).astype(np.float32), np.cumsum(widths)[:-1])))
    variant = jnf.ablate(model, masks, mode=mode, inputs=x if mode == "mean" else None)
    chain = dense_chain(model)
    fills = [forward_error_scale(chain[:i + 1], x) for i in range(len(LAYERS))]

    def replace(i, h, e):  # removed neurons: 0 exactly, or a mean of the pass's own float32 activations
        keep = masks[LAYERS[i]] > 0
        if mode == "zero":
            return np.where(keep, h, 0.0), np.where(keep, e, 0.0)
        fill_h, fill_e = fills[i]
        return np.where(keep, h, fill_h.mean(0)), np.where(keep, e, fill_e.mean(0) + np.abs(fill_h.mean(0)))

    logits, scale = forward_error_scale(chain, x, replace)
    accuracy = float(np.mean(np.argmax(variant(jnp.asarray(x)), -1) == y))
    ties = near_ties(logits, 2 * tolerance(FAN_IN) * scale.max(-1))  # each pass moves both logits
    return accuracy, ties.mean() + tolerance(1) * accuracy


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_network_curve_equals_separate_ablations(trained, mode):
    model, x, y = trained
    order = np.random.default_rng(1).permutation(24)
    ks = [0, 1, 5, 12, 24]
    curve = jnf.ablation_curve(model, x, y, order, LAYERS, ks, mode=mode)
    expected, allowed = np.array([_manual(model, x, y, order, k, (16, 8), mode) for k in ks]).T
    assert np.all(np.abs(curve.values - expected) <= allowed), (curve.values, expected, allowed)
    assert curve.values.shape == (5,) and curve.widths == (16, 8)
    allowed = _manual(model, x, y, order, 0, (16, 8), "zero")[1]  # nothing removed: the intact model
    assert abs(curve.baseline - float(np.mean(np.argmax(model(jnp.asarray(x)), -1) == y))) <= allowed
    assert curve.values[-1] < curve.baseline  # removing every hidden neuron hurts


def test_layer_scope_removes_within_each_layer(trained):
    model, x, y = trained
    order = np.random.default_rng(2).permutation(24)
    ks = [0, 3, 8, 16]
    curve = jnf.ablation_curve(model, x, y, order, LAYERS, ks, scope="layer", mode="mean")
    assert curve.values.shape == (2, 4)
    for row, (start, stop) in enumerate([(0, 16), (16, 24)]):
        own = order[(order >= start) & (order < stop)]
        for col, k in enumerate(ks):
            expected, allowed = _manual(model, x, y, own, k, (16, 8), "mean")
            assert abs(curve.values[row, col] - expected) <= allowed, (row, k, curve.values[row, col], expected)


def test_order_forms_agree(trained):
    model, x, y = trained
    scores = np.random.default_rng(3).random(24)
    ranking = Ranking("demo", scores, NeuronIndex.from_layers([("mlp", [(layer, w) for layer, w in
                                                                          zip(LAYERS, (16, 8))])]))
    flat = ranking.order
    pairs = [(LAYERS[0] if i < 16 else LAYERS[1], i if i < 16 else i - 16) for i in flat]
    ks = [0, 2, 6, 10]
    a = jnf.ablation_curve(model, x, y, ranking, LAYERS, ks, metric="loss")
    b = jnf.ablation_curve(model, x, y, flat, LAYERS, ks, metric="loss")
    c = jnf.ablation_curve(model, x, y, pairs, LAYERS, ks, metric="loss")
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.values, c.values)
    reverse = jnf.ablation_curve(model, x, y, flat[::-1], LAYERS, ks, metric="loss")
    assert not np.array_equal(reverse.values, a.values)


def test_curve_compiles_once_for_new_orders(trained):
    model, x, y = trained

    @chex.assert_max_traces(n=1)
    def error_rate(outputs, labels):
        return jnp.mean((jnp.argmax(outputs, -1) != labels).astype(jnp.float32))

    for seed in range(3):
        order = np.random.default_rng(seed).permutation(24)
        curve = jnf.ablation_curve(model, x, y, order, LAYERS, [0, 4, 8, 12], metric=error_rate)
        assert curve.metric == "error_rate"


def test_plot_and_json(trained, tmp_path):
    model, x, y = trained
    curve = jnf.ablation_curve(model, x, y, np.arange(24), LAYERS, [0, 8, 16], scope="layer")
    png = tmp_path / "curve.png"
    figure = ablation_curve_figure(curve, png)
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert [line.get_label() for line in figure.axes[0].lines] == [*LAYERS, "intact"]
    saved = curve.to_json(tmp_path / "curve.json").read_text()
    assert '"scope": "layer"' in saved and '"ks": [' in saved


def test_curve_errors(trained):
    model, x, y = trained
    with pytest.raises(JNeuronError, match="indices run 0..23"):
        jnf.ablation_curve(model, x, y, [0, 24], LAYERS, [0, 1])
    with pytest.raises(JNeuronError, match="more than once"):
        jnf.ablation_curve(model, x, y, [3, 3], LAYERS, [0, 1])
    with pytest.raises(JNeuronError, match=r"ks must lie in 0..2"):
        jnf.ablation_curve(model, x, y, [0, 1], LAYERS, [0, 3])
    with pytest.raises(JNeuronError, match="unit 9 of layer 'layers/1', which has 8"):
        jnf.ablation_curve(model, x, y, [("layers/1", 9)], LAYERS, [0])
    with pytest.raises(JNeuronError, match="no layer 'mlp/0'"):
        jnf.ablation_curve(model, x, y, [0], ["mlp/0"], [0])
