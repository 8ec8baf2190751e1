"""Linen support: the Linen twin of the NNX MLP gives the same captures, ablations and curves."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jneuron import JNeuronError
from jneuron import flax as jnf
from jneuron.flax import linen
from jneuron.models import MLP
from tests.flax_models import dense_chain, forward_error_scale, linen_twin
from tests.tolerance import assert_close, tolerance

NNX_LAYERS = ["layers/0", "layers/1"]
LINEN_LAYERS = ["layers_0", "layers_1"]
FAN_IN = 12  # the MLP's longest dot product: its 12 inputs (then 10 and 6)


def _loss_bound(model, x, y, keeps, mode) -> float:
    """How far two float32 passes' mean cross-entropy of one ablation can differ: each pass's logits are off by
    ``tolerance(12) * scale``, and a logit moved by ``d`` moves a row's cross-entropy by at most ``2 d`` (the
    gradient of logsumexp(z) - z_y has l1 norm 2); each pass's loss rounds relative to ``|logsumexp| + |z_y|``
    over the 80 rows. ``keeps``: per hidden layer, 0 where a neuron is removed (to 0, or to its mean, which
    each pass computes from its own float32 activations)."""
    chain = dense_chain(model)
    fills = [forward_error_scale(chain[:i + 1], x) for i in range(len(keeps))]

    def replace(i, h, e):
        keep = keeps[i] > 0
        if mode == "zero":
            return np.where(keep, h, 0.0), np.where(keep, e, 0.0)
        mean, error = fills[i][0].mean(0), fills[i][1].mean(0)
        return np.where(keep, h, mean), np.where(keep, e, error + np.abs(mean))

    logits, scale = forward_error_scale(chain, x, replace)
    top = logits.max(-1)
    lse = top + np.log(np.exp(logits - top[:, None]).sum(-1))
    magnitude = np.mean(np.abs(lse) + np.abs(logits[np.arange(len(y)), y]))
    return float(2 * (tolerance(FAN_IN) * 2 * scale.max(-1).mean() + tolerance(len(x)) * magnitude))


def _keeps(order, k, scope, widths=(10, 6)):
    """Per variant of a curve point (one for the network scope, one per layer for the layer scope), the
    keep-mask of each hidden layer."""
    def split(removed):
        keep = np.ones(sum(widths))
        keep[removed] = 0
        return np.split(keep, np.cumsum(widths)[:-1])

    if scope == "network":
        return [split(order[:k])]
    starts = np.cumsum((0, *widths))
    return [split(order[(order >= a) & (order < b)][:k]) for a, b in zip(starts[:-1], starts[1:])]


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
    chain = dense_chain(model)
    for depth, (nnx_layer, linen_layer) in enumerate(zip(NNX_LAYERS, LINEN_LAYERS)):
        # two float32 passes of layers 0..depth
        assert_close(a[nnx_layer], b[linen_layer], 2 * tolerance(FAN_IN),
                     forward_error_scale(chain[:depth + 1], x)[1], nnx_layer)
        np.testing.assert_array_equal(a.positions[nnx_layer], b.positions[linen_layer])


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_same_ablation(models, data, mode):
    model, twin = models
    x, _ = data
    mask = (np.arange(10) % 3 > 0).astype(np.float32)
    a = jnf.ablate(model, {"layers/0": mask}, mode=mode, inputs=x)(jnp.asarray(x))
    b = linen.ablate(twin, {"layers_0": mask}, mode=mode, inputs=x)(jnp.asarray(x))
    # two float32 passes; a mean comes from each pass's own float32 layer-0 activations (mean error scale,
    # then a float32 rounding of the mean)
    h, e = forward_error_scale(dense_chain(model)[:1], x)

    def replace(i, hidden, error):
        if i != 0:
            return hidden, error
        fill = h.mean(0) if mode == "mean" else 0.0
        fill_error = e.mean(0) + np.abs(h.mean(0)) if mode == "mean" else 0.0
        return np.where(mask > 0, hidden, fill), np.where(mask > 0, error, fill_error)

    assert_close(a, b, 2 * tolerance(FAN_IN), forward_error_scale(dense_chain(model), x, replace)[1],
                 f"{mode} ablation, NNX vs Linen")
    # not rounding: the ablation must move some logit materially (1e-3 is ~100x this rounding bound)
    assert not np.allclose(a, model(jnp.asarray(x)), atol=1e-3)


@pytest.mark.parametrize(("mode", "scope"), [("zero", "network"), ("mean", "layer")])
def test_same_ablation_curves(models, data, mode, scope):
    model, twin = models
    x, y = data
    order = np.random.default_rng(0).permutation(16)
    ks = [0, 2, 5, 9]
    a = jnf.ablation_curve(model, x, y, order, NNX_LAYERS, ks, mode=mode, scope=scope, metric="loss")
    b = jnf.ablation_curve(twin, x, y, order, LINEN_LAYERS, ks, mode=mode, scope=scope, metric="loss")
    bounds = np.array([[_loss_bound(model, x, y, keeps, mode) for keeps in _keeps(order, k, scope)] for k in ks]).T
    assert_close(a.values, b.values, 1.0, bounds.reshape(a.values.shape), "loss curve, NNX vs Linen")
    assert_close(a.baseline, b.baseline, 1.0, bounds.flat[0], "intact loss")  # k = 0 removes nothing


def test_linen_sweep_equals_separate_calls(models, data, rng):
    model, twin = models
    x, _ = data
    masks = (rng.random((5, 6)) > 0.5).astype(np.float32)
    swept = linen.sweep(twin, lambda out: out.sum(), x, masks={"layers_1": masks}, batch_size=2)
    for k in range(5):
        single = linen.ablate(twin, {"layers_1": masks[k]})(jnp.asarray(x))
        # the sum of 80 x 4 logits: their errors add up, and the sum rounds over 320 terms
        scale = forward_error_scale(dense_chain(model), x, lambda i, h, e, k=k: (h * masks[k], e * masks[k]) if i == 1
                                    else (h, e))[1]
        assert_close(float(swept[k]), float(single.sum()), 2 * tolerance(80 * 4), scale.sum(), f"variant {k}")


def test_unknown_linen_layer_lists_the_layers(models, data):
    _, twin = models
    x, _ = data
    with pytest.raises(JNeuronError, match=r"no layer 'layers/0' in the Linen model.*'layers_0', 'layers_1', 'head'"):
        linen.capture(twin, x, ["layers/0"])
