"""Cumulative ablation: equals separate ablations, bias balancing equals mean ablation, orders and errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jneuron as jn
from jneuron import flax as jnf
from jneuron.cli.studies.information import render_summary
from jneuron.data.bundled import load_digits
from jneuron.models import MLP, train_classifier
from jneuron.report.figures import cumulative_ablation_figure
from tests.flax_models import dense_chain, forward_error_scale, near_ties
from tests.tolerance import assert_close, tolerance

LAYERS = ["layers/0", "layers/1"]
WIDTHS = (12, 8)
FAN_IN = 64  # the MLP's longest dot product: the 64 pixels (then 12 and 8)


def _removal_masks(order, k, scope):
    """Per layer, the keep-masks of removing the first ``k`` of ``order`` (network scope: a list of one
    variant), or of each layer's own first ``k`` (layer scope: one variant per layer)."""
    def split(removed):
        keep = np.ones(sum(WIDTHS), np.float32)
        keep[removed] = 0
        return np.split(keep, np.cumsum(WIDTHS)[:-1])

    if scope == "network":
        return [split(order[:k])]
    starts = np.cumsum((0, *WIDTHS))
    return [split(order[(order >= a) & (order < b)][:k]) for a, b in zip(starts[:-1], starts[1:])]


def _fills(model, reference):
    """Each hidden layer's float64 mean over ``reference`` and the mean of its error scale."""
    chain = dense_chain(model)
    return [(h.mean(0), e.mean(0)) for h, e in (forward_error_scale(chain[:i + 1], reference)
                                                for i in range(len(LAYERS)))]


def _accuracy_allowance(model, x, keeps, mode, fills):
    """How far two correct float32 passes' accuracies of one ablation may differ: one sample per row whose
    top two logits lie within a pass's rounding of each other (either pass may flip its arg-max), and a
    float32 rounding of the fraction. A removed neuron outputs 0, or its mean (``fills``, from
    :func:`_fills`), which each pass may compute from its own float32 activations."""
    chain = dense_chain(model)

    def replace(i, h, e):
        keep = keeps[i] > 0
        if mode == "zero":
            return np.where(keep, h, 0.0), np.where(keep, e, 0.0)
        mean, error = fills[i]
        return np.where(keep, h, mean), np.where(keep, e, error + np.abs(mean))

    logits, scale = forward_error_scale(chain, x, replace)
    return near_ties(logits, 2 * tolerance(FAN_IN) * scale.max(-1)).mean() + tolerance(1)


@pytest.fixture(scope="module")
def trained():
    digits = load_digits()
    train, test = digits.split(seed=0)
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes float and int32
        model = train_classifier(MLP(64, (12, 8), 10, rngs=nnx.Rngs(0), activation=jax.nn.sigmoid),
                                 train.images, train.labels, epochs=3, weight_decay=1e-4)
    hidden = {layer: np.asarray(h) for layer, h in zip(LAYERS, model.hidden(jnp.asarray(train.images)))}
    info = jn.neuron_information({"mlp": hidden}, train.labels)
    return model, train, test, info


@pytest.fixture(scope="module")
def ablated(trained):
    model, train, test, info = trained
    return jn.cumulative_ablation(model, test.images, test.labels, info, LAYERS, random=2, steps=6,
                                  reference=train.images)


def test_bias_balancing_equals_mean_ablation_on_a_dense_layer(trained):
    model, train, test, _ = trained
    x = jnp.asarray(test.images)
    chain = dense_chain(model)
    for index, (layer, following, width) in enumerate((("layers/0", "layers/1", 12), ("layers/1", "head", 8))):
        means = jnf.layer_means(model, train.images, [layer])[layer]
        removed = [0, 3, 5]
        mask = np.ones(width, np.float32)
        mask[removed] = 0
        mean_ablated = jnf.ablate(model, {layer: mask}, "mean", values={layer: means})(x)
        folded = jn.balance_bias(model, layer, following, removed, means)(x)

        def replace(i, h, e, index=index, mask=mask, means=means):  # the same float32 means in both: exact
            return (np.where(mask > 0, h, means), np.where(mask > 0, e, 0.0)) if i == index else (h, e)

        # two float32 passes; the folded bias's own rounding is within the scale's |w| |mean| terms
        assert_close(folded, mean_ablated, 2 * tolerance(FAN_IN), forward_error_scale(chain, x, replace)[1],
                     f"bias balancing vs mean ablation of {layer}")
        zeroed = jnf.ablate(model, {layer: mask}, "zero")(x)
        # not rounding: the fold must move some logit materially (1e-3 is ~100x this rounding bound)
        assert not np.allclose(zeroed, mean_ablated, atol=1e-3)  # the fold matters
    means = jnf.layer_means(model, train.images, ["layers/0"])["layers/0"]
    np.testing.assert_array_equal(model(x), jn.balance_bias(model, "layers/0", "layers/1", [], means)(x))


def test_curves_equal_separate_ablation_curves(trained, ablated):
    model, train, test, info = trained
    result = ablated
    means = jnf.layer_means(model, train.images, LAYERS)
    fills = _fills(model, train.images)
    for measure, direction in (("mutual_information", "descending"), ("selectivity", "ascending")):
        order = info.ranking(measure).order
        order = order if direction == "descending" else order[::-1]
        np.testing.assert_array_equal(result.orders[(measure, direction)], order)
        for scope in ("network", "layer"):
            for mode in ("zero", "mean"):
                expected = jnf.ablation_curve(model, test.images, test.labels, order, LAYERS, result.ks[scope],
                                              mode=mode, scope=scope, means=means)
                allowed = np.array([[_accuracy_allowance(model, test.images, keeps, mode, fills)
                                     for keeps in _removal_masks(order, k, scope)] for k in result.ks[scope]]).T
                got = result.curve(measure, direction, scope, mode)
                assert np.all(np.abs(got - expected.values) <= allowed.reshape(got.shape)), (got, expected.values)
                assert abs(result.baseline - expected.baseline) <= allowed.flat[0]  # k = 0: the intact model
    runs = result.random_runs[("network", "zero")]
    assert runs.shape == (2, len(result.ks["network"]))
    # the mean of 2 runs: one sum and a division, in the runs' dtype, of accuracies (scale 1)
    assert_close(result.curve("random", "random", "network", "zero"), runs.mean(axis=0), tolerance(2, runs.dtype),
                 what="random curve")
    assert result.ks["network"][0] == 0 and result.ks["network"][-1] == 20 and result.ks["layer"][-1] == 12
    full = result.curve("mutual_information", "descending", "network", "zero")
    intact = _accuracy_allowance(model, test.images, [np.ones(12), np.ones(8)], "zero", fills)
    assert abs(full[0] - result.baseline) <= intact
    bias_only = int(jnp.argmax(model.head.bias[...]))  # every hidden unit zeroed: the head's bias decides
    # the logits are the bias exactly (a sum of zeros plus b): only the fraction rounds
    assert_close(full[-1], float(np.mean(test.labels == bias_only)), tolerance(1), what="all removed")
    assert result.area("random", "random", "layer", "mean").shape == (2,)


def test_outputs_json_and_plots(trained, tmp_path):
    model, train, test, info = trained
    result = jn.cumulative_ablation(model, test.images, test.labels, {"mi": info.ranking()}, LAYERS,
                                    random=1, steps=4, scopes=("layer",), modes=("mean",))
    assert set(result.curves) == {("mi", "descending", "layer", "mean"), ("mi", "ascending", "layer", "mean"),
                                  ("random", "random", "layer", "mean")}
    data = json.loads(result.to_json(tmp_path / "curves.json").read_text())
    assert data["layers"] == LAYERS and len(data["curves"]) == 3
    png = tmp_path / "layer.png"
    figure = cumulative_ablation_figure(result, "layer", "mean", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(figure.axes) == len(LAYERS) and len(figure.axes[0].lines) == 3 + 1  # 3 curves and the intact line
    with pytest.raises(jn.JNeuronError, match="no curves for scope 'network'"):
        cumulative_ablation_figure(result, "network", "mean")


def test_summary_is_computed_from_the_curves(trained, ablated):
    info, result = trained[3], ablated
    rows = result.summary("zero")
    assert [r["scope"] for r in rows][:4] == ["network"] * 4 and len(rows) == 12
    for row in rows:
        index = None if row["scope"] == "network" else LAYERS.index(row["scope"])
        down = result.curve(row["measure"], "descending", "network" if index is None else "layer", "zero")
        up = result.curve(row["measure"], "ascending", "network" if index is None else "layer", "zero")
        if index is not None:
            shown = result.ks["layer"] <= result.widths[index]
            down, up = down[index][shown], up[index][shown]
        # means of at most 21 accuracies (scale 1) in the curves' dtype, computed twice
        bound = 2 * tolerance(len(down), down.dtype)
        assert_close(row["descending"], down.mean(), bound, what="descending area")
        assert_close(row["gap"], up.mean() - down.mean(), bound, 2.0, "gap")
    network = rows[:4]
    assert [r["gap"] for r in network] == sorted((r["gap"] for r in network), reverse=True)
    gain = result.area(network[0]["measure"], "descending", "network", "mean") - result.area(
        network[0]["measure"], "descending", "network", "zero")
    expected = (gain + result.area(network[0]["measure"], "ascending", "network", "mean") - result.area(
        network[0]["measure"], "ascending", "network", "zero")) / 2
    # four areas (each a mean of accuracies) combined: scale 4, computed twice
    bound = 2 * tolerance(len(result.ks["network"]), result.curve(network[0]["measure"], "descending", "network",
                                                                   "zero").dtype)
    assert_close(network[0]["balancing_gain"], expected, bound, 4.0, "balancing gain")
    text = render_summary(result, {"hidden": [12, 8], "epochs": 3, "l2": 1e-4, "seed": 0, "train_accuracy": 0.5,
                                   "test_accuracy": result.baseline, "label_entropy_bits": info.label_entropy,
                                   "one_bin": len(info.one_bin)})
    assert f"**{network[0]['measure']}** predicts best (gap {network[0]['gap']:.3f})" in text
    assert f"**{network[-1]['measure']}** predicts worst" in text and text.count("| layers/1 |") == 4


def test_errors(trained):
    model, _, test, info = trained
    with pytest.raises(jn.JNeuronError, match="scores 20 neurons"):
        jn.cumulative_ablation(model, test.images, test.labels, info, ["layers/0"])
    with pytest.raises(jn.JNeuronError, match="modes must be"):
        jn.cumulative_ablation(model, test.images, test.labels, info, LAYERS, modes=("value",))
    with pytest.raises(jn.JNeuronError, match="no curve"):
        jn.cumulative_ablation(model, test.images, test.labels, info, LAYERS, random=0, steps=2,
                               scopes=("network",), modes=("zero",)).curve("random", "random", "network", "zero")
    with pytest.raises(jn.JNeuronError, match="not a dense layer"):
        jn.balance_bias(model, "layers/0", "layers", [0], np.zeros(12))
