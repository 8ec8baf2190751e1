"""Cumulative ablation: equals separate ablations, bias balancing equals mean ablation, orders and errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jneuron as jn
from jneuron import flax as jnf
from jneuron.datasets import load_digits
from jneuron.models import MLP, train_classifier

LAYERS = ["layers/0", "layers/1"]


@pytest.fixture(scope="module")
def trained():
    digits = load_digits()
    train, test = digits.split(seed=0)
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes float and int32
        model = train_classifier(MLP(64, (12, 8), 10, rngs=nnx.Rngs(0), activation=jax.nn.sigmoid),
                                 train.images, train.labels, epochs=4, weight_decay=1e-4)
    hidden = {layer: np.asarray(h) for layer, h in zip(LAYERS, model.hidden(jnp.asarray(train.images)))}
    info = jn.neuron_information({"mlp": hidden}, train.labels)
    return model, train, test, info


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


def test_curves_equal_separate_ablation_curves(trained):
    model, train, test, info = trained
    result = jn.cumulative_ablation(model, test.images, test.labels, info, LAYERS, random=2, steps=6,
                                    reference=train.images)
    means = jnf.layer_means(model, train.images, LAYERS)
    for measure in ("mutual_information", "selectivity"):
        for direction in ("descending", "ascending"):
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
