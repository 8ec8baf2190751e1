"""Linen support: the Linen twin of the NNX MLP gives the same captures, ablations and curves."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax_models import linen_twin

from jneuron import JNeuronError
from jneuron import flax as jnf
from jneuron.flax import linen
from jneuron.models import MLP

NNX_LAYERS = ["layers/0", "layers/1"]
LINEN_LAYERS = ["layers_0", "layers_1"]


@pytest.fixture(scope="module")
def models():
    model = MLP(12, (10, 6), 4, rngs=nnx.Rngs(5))
    for layer in (*model.layers, model.head):
        layer.bias[...] = jnp.linspace(-0.5, 0.5, layer.bias.shape[0])
    return model, linen_twin(model)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    return rng.normal(size=(80, 12)).astype(np.float32), rng.integers(0, 4, 80)


def test_same_captures(models, data):
    model, twin = models
    x, _ = data
    a = jnf.capture(model, x, NNX_LAYERS, batch_size=32)
    b = linen.capture(twin, x, LINEN_LAYERS, batch_size=32)
    for nnx_layer, linen_layer in zip(NNX_LAYERS, LINEN_LAYERS):
        np.testing.assert_allclose(a[nnx_layer], b[linen_layer], atol=1e-6)
        np.testing.assert_array_equal(a.positions[nnx_layer], b.positions[linen_layer])


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_same_ablation(models, data, mode):
    model, twin = models
    x, _ = data
    mask = (np.arange(10) % 3 > 0).astype(np.float32)
    a = jnf.ablate(model, {"layers/0": mask}, mode=mode, inputs=x)(jnp.asarray(x))
    b = linen.ablate(twin, {"layers_0": mask}, mode=mode, inputs=x)(jnp.asarray(x))
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(a, model(jnp.asarray(x)), atol=1e-3)


@pytest.mark.parametrize(("mode", "scope"), [("zero", "network"), ("mean", "layer")])
def test_same_ablation_curves(models, data, mode, scope):
    model, twin = models
    x, y = data
    order = np.random.default_rng(0).permutation(16)
    ks = [0, 2, 5, 9]
    a = jnf.ablation_curve(model, x, y, order, NNX_LAYERS, ks, mode=mode, scope=scope, metric="loss")
    b = jnf.ablation_curve(twin, x, y, order, LINEN_LAYERS, ks, mode=mode, scope=scope, metric="loss")
    np.testing.assert_allclose(a.values, b.values, rtol=1e-5)
    assert a.baseline == pytest.approx(b.baseline, rel=1e-6)


def test_linen_sweep_equals_separate_calls(models, data, rng):
    _, twin = models
    x, _ = data
    masks = (rng.random((5, 6)) > 0.5).astype(np.float32)
    swept = linen.sweep(twin, lambda out: out.sum(), x, masks={"layers_1": masks}, batch_size=2)
    for k in range(5):
        single = linen.ablate(twin, {"layers_1": masks[k]})(jnp.asarray(x))
        assert float(swept[k]) == pytest.approx(float(single.sum()), rel=1e-5, abs=1e-4)


def test_unknown_linen_layer_lists_the_layers(models, data):
    _, twin = models
    x, _ = data
    with pytest.raises(JNeuronError, match=r"no layer 'layers/0' in the Linen model.*'layers_0', 'layers_1', 'head'"):
        linen.capture(twin, x, ["layers/0"])
