"""Cumulative ablation: equals separate ablations, bias balancing equals mean ablation, orders and errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jneuron as jn
from jneuron import flax as jnf
from jneuron.commands.study_information import render_summary
from jneuron.datasets import load_digits
from jneuron.models import MLP, train_classifier

LAYERS = ["layers/0", "layers/1"]


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
    for layer, following, width in (("layers/0", "layers/1", 12), ("layers/1", "head", 8)):
        means = jnf.layer_means(model, train.images, [layer])[layer]
        removed = [0, 3, 5]
        mask = np.ones(width, np.float32)
        mask[removed] = 0
        mean_ablated = jnf.ablate(model, {layer: mask}, "mean", values={layer: means})(x)
        folded = jn.balance_bias(model, layer, following, removed, means)(x)
        np.testing.assert_allclose(folded, mean_ablated, rtol=1e-5, atol=1e-5)
        zeroed = jnf.ablate(model, {layer: mask}, "zero")(x)
        assert not np.allclose(zeroed, mean_ablated, atol=1e-3)  # the fold matters
    means = jnf.layer_means(model, train.images, ["layers/0"])["layers/0"]
    np.testing.assert_array_equal(model(x), jn.balance_bias(model, "layers/0", "layers/1", [], means)(x))


def test_curves_equal_separate_ablation_curves(trained, ablated):
    model, train, test, info = trained
    result = ablated
    means = jnf.layer_means(model, train.images, LAYERS)
    for measure, direction in (("mutual_information", "descending"), ("selectivity", "ascending")):
        order = info.ranking(measure).order
        order = order if direction == "descending" else order[::-1]
        np.testing.assert_array_equal(result.orders[(measure, direction)], order)
        for scope in ("network", "layer"):
            for mode in ("zero", "mean"):
                expected = jnf.ablation_curve(model, test.images, test.labels, order, LAYERS, result.ks[scope],
                                              mode=mode, scope=scope, means=means)
                np.testing.assert_allclose(result.curve(measure, direction, scope, mode), expected.values,
                                           atol=1e-6)
                assert result.baseline == pytest.approx(expected.baseline)
    runs = result.random_runs[("network", "zero")]
    assert runs.shape == (2, len(result.ks["network"]))
    np.testing.assert_allclose(result.curve("random", "random", "network", "zero"), runs.mean(axis=0))
    assert result.ks["network"][0] == 0 and result.ks["network"][-1] == 20 and result.ks["layer"][-1] == 12
    full = result.curve("mutual_information", "descending", "network", "zero")
    assert full[0] == pytest.approx(result.baseline)
    bias_only = int(jnp.argmax(model.head.bias[...]))  # every hidden unit zeroed: the head's bias decides
    assert full[-1] == pytest.approx(float(np.mean(test.labels == bias_only)))
    assert result.area("random", "random", "layer", "mean").shape == (2,)


def test_outputs_json_and_plots(trained, tmp_path):
    model, train, test, info = trained
    result = jn.cumulative_ablation(model, test.images, test.labels, {"mi": info.ranking()}, LAYERS,
                                    random=1, steps=4, scopes=("layer",), modes=("mean",))
    assert set(result.curves) == {("mi", "descending", "layer", "mean"), ("mi", "ascending", "layer", "mean"),
                                  ("random", "random", "layer", "mean")}
    data = json.loads(result.to_json(tmp_path / "curves.json").read_text())
    assert data["layers"] == LAYERS and len(data["curves"]) == 3
    png = result.plot(tmp_path / "layer.png", "layer", "mean")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
        assert row["descending"] == pytest.approx(down.mean()) and row["gap"] == pytest.approx(up.mean() - down.mean())
    network = rows[:4]
    assert [r["gap"] for r in network] == sorted((r["gap"] for r in network), reverse=True)
    gain = result.area(network[0]["measure"], "descending", "network", "mean") - result.area(
        network[0]["measure"], "descending", "network", "zero")
    assert network[0]["balancing_gain"] == pytest.approx((gain + result.area(network[0]["measure"], "ascending",
        "network", "mean") - result.area(network[0]["measure"], "ascending", "network", "zero")) / 2)
    text = render_summary(result, {"hidden": [12, 8], "epochs": 3, "l2": 1e-4, "seed": 0, "train_accuracy": 0.5,
                                   "test_accuracy": result.baseline, "label_entropy_bits": info.label_entropy,
                                   "dead": len(info.dead)})
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
