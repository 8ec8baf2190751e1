"""Ablation by masking and its sweeps: equal to weight surgery, one compilation for any mask values."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jneuron import JNeuronError
from jneuron import flax as jnf
from jneuron.models import MLP
from tests.flax_models import (
    CNN,
    Encoder,
    cnn_error_scale,
    dense_chain,
    encoder_logits_and_scale,
    encoder_terms,
    forward_error_scale,
)
from tests.tolerance import assert_close, tolerance

LAYERS = ["layers/0", "layers/1"]
FAN_IN = 12  # the MLP's longest dot product: its 12 inputs (then 10 and 6)


@pytest.fixture(scope="module")
def mlp():
    model = MLP(12, (10, 6), 4, rngs=nnx.Rngs(3))
    # non-zero biases, so zero ablation and bias balancing are not trivially equal (numpy draws them: a
    # jax.random draw compiles once per shape)
    rng = np.random.default_rng(3)
    for layer in (*model.layers, model.head):
        layer.bias[...] = jnp.asarray(rng.normal(size=layer.bias.shape) * 0.5, jnp.float32)
    return model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 12)).astype(np.float32), rng.integers(0, 4, 64)


def _forward_with_hidden(model, x, replace):
    """Reference forward pass in numpy float64; ``replace(l, h)`` edits layer l's post-activation output."""
    h = np.asarray(x, np.float64)
    for i, layer in enumerate(model.layers):
        h = np.maximum(h @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...], np.float64), 0)
        h = replace(i, h)
    return h @ np.asarray(model.head.kernel[...], np.float64) + np.asarray(model.head.bias[...], np.float64)


def _logit_scale(model, x, replace=None):
    """The logits' running error scale (``tests.flax_models.forward_error_scale``); ``replace(i, h, e)``."""
    return forward_error_scale(dense_chain(model), x, replace)[1]


def _removed(keep, fill=0.0, fill_error=0.0):
    """A ``replace`` for :func:`_logit_scale`: neurons with ``keep[i] == 0`` of layer ``i`` output ``fill``
    (or ``fill[i]``, a list per layer), with error scale ``fill_error`` (0: exact, as a zero or a value given
    in float32 is)."""
    def replace(i, h, e):
        if keep[i] is None:
            return h, e
        kept = np.asarray(keep[i]) > 0
        value = fill[i] if isinstance(fill, list) else fill
        return np.where(kept, h, value), np.where(kept, e, fill_error)
    return replace


def test_zero_ablation_equals_zeroed_kernel_columns_and_bias(mlp, data):
    x, _ = data
    mask = np.ones(10, np.float32)
    mask[[1, 4, 7]] = 0
    ablated = jnf.ablate(mlp, {"layers/0": mask})
    surgery = nnx.clone(mlp)
    surgery.layers[0].kernel[...] = surgery.layers[0].kernel[...] * jnp.asarray(mask)[None, :]
    surgery.layers[0].bias[...] = surgery.layers[0].bias[...] * jnp.asarray(mask)
    # two float32 passes of the same function: twice the bound each carries
    assert_close(ablated(jnp.asarray(x)), surgery(jnp.asarray(x)), 2 * tolerance(FAN_IN),
                 _logit_scale(mlp, x, _removed([mask, None])), "masked vs zeroed weights")
    # not rounding: the ablation must move some logit materially (1e-3 is ~100x this rounding bound)
    assert not np.allclose(ablated(jnp.asarray(x)), mlp(jnp.asarray(x)), atol=1e-3)


def test_mean_ablation_equals_bias_balanced_model(mlp, data):
    x, _ = data
    hidden = np.maximum(np.asarray(x, np.float64) @ np.asarray(mlp.layers[0].kernel[...], np.float64)
                        + np.asarray(mlp.layers[0].bias[...], np.float64), 0)
    means = {"layers/0": hidden.mean(0).astype(np.float32)}
    removed = [0, 3, 9]
    mask = np.ones(10, np.float32)
    mask[removed] = 0
    ablated = jnf.ablate(mlp, {"layers/0": mask}, mode="mean", inputs=x)
    # bias balancing (Amjad et al.): zero the removed rows of the next kernel, fold w_jk * E[t_j] into its bias
    balanced = nnx.clone(mlp)
    w = np.asarray(mlp.layers[1].kernel[...], np.float64)
    balanced.layers[1].bias[...] = jnp.asarray(np.asarray(mlp.layers[1].bias[...], np.float64)
                                               + hidden.mean(0)[removed] @ w[removed], jnp.float32)
    balanced.layers[1].kernel[...] = jnp.asarray(np.where(mask[:, None] > 0, w, 0.0), jnp.float32)
    # the masked model's means come from float32 activations, each off by tolerance * e0 (layer 0's error
    # scale), then rounded to float32; the balanced model folds exact float64 means into a float32 bias
    chain = dense_chain(mlp)
    e0 = forward_error_scale(chain[:1], x)[1]
    mean_error = e0.mean(0) + np.abs(hidden.mean(0))
    assert_close(ablated(jnp.asarray(x)), balanced(jnp.asarray(x)), 2 * tolerance(FAN_IN),
                 _logit_scale(mlp, x, _removed([mask, None], hidden.mean(0)[None], mean_error)),
                 "mean ablation vs bias balancing")
    # the means computed from inputs are the layer's mean outputs
    assert_close(jnf.layer_means(mlp, x, ["layers/0"])["layers/0"], means["layers/0"], tolerance(FAN_IN),
                 mean_error, "layer means")


def test_value_mode_and_float64_reference(mlp, data):
    x, _ = data
    values = np.linspace(-1, 1, 6).astype(np.float32)
    mask = (np.arange(6) % 2).astype(np.float32)
    ablated = jnf.ablate(mlp, {"layers/1": mask}, mode="value", values={"layers/1": values})

    def replace(i, h):
        return np.where(mask > 0, h, values) if i == 1 else h

    assert_close(ablated(jnp.asarray(x)), _forward_with_hidden(mlp, x, replace), tolerance(FAN_IN),
                 _logit_scale(mlp, x, _removed([None, mask], [None, values])), "value ablation vs float64")


def test_ablate_leaves_the_model_unchanged(mlp, data):
    x, _ = data
    before = np.asarray(mlp(jnp.asarray(x)))
    jnf.ablate(mlp, {"layers/0": np.zeros(10), "layers/1": np.zeros(6)})
    assert isinstance(mlp.layers[0], nnx.Linear) and not isinstance(mlp.layers[0], jnf.Masked)
    np.testing.assert_array_equal(mlp(jnp.asarray(x)), before)


def _sum_logits(model, x):
    return model(x).sum(axis=-1)


def test_vmapped_masks_equal_separate_calls(mlp, data, rng):
    x, _ = data
    masks = (rng.random((7, 10)) > 0.4).astype(np.float32)
    variant = jnf.ablate(mlp, {"layers/0": np.ones(10)})
    swept = jnf.sweep(variant, _sum_logits, jnp.asarray(x), masks={"layers/0": masks}, batch_size=None)
    assert swept.shape == (7, 64)
    # the sum of the 4 logits: their errors add, and the sum rounds once more per term
    scales = [_logit_scale(mlp, x, _removed([m, None])).sum(-1) for m in masks]
    for k in range(7):
        single = jnf.ablate(mlp, {"layers/0": masks[k]})
        assert_close(swept[k], _sum_logits(single, jnp.asarray(x)), 2 * tolerance(FAN_IN), scales[k],
                     f"swept vs separate, mask {k}")
    for batch_size in (3, "auto"):
        mapped = jnf.sweep(variant, _sum_logits, jnp.asarray(x), masks={"layers/0": masks}, batch_size=batch_size)
        assert_close(mapped, swept, 2 * tolerance(FAN_IN), np.stack(scales), f"batch_size={batch_size}")
    with pytest.raises(JNeuronError, match="batch_size must be a positive integer"):
        jnf.sweep(variant, _sum_logits, jnp.asarray(x), masks={"layers/0": masks}, batch_size=0)


def test_sweep_values_and_masks_over_two_layers(mlp, data, rng):
    x, _ = data
    masks = (rng.random((5, 10)) > 0.5).astype(np.float32)
    values = rng.normal(size=(5, 6)).astype(np.float32)
    variant = jnf.ablate(mlp, {"layers/0": np.ones(10), "layers/1": np.zeros(6)}, mode="value",
                         values={"layers/0": np.zeros(10), "layers/1": np.zeros(6)})
    swept = jnf.sweep(variant, _sum_logits, jnp.asarray(x), masks={"layers/0": masks}, values={"layers/1": values})
    for k in range(5):
        single = jnf.ablate(mlp, {"layers/0": masks[k], "layers/1": np.zeros(6)}, mode="value",
                            values={"layers/0": np.zeros(10), "layers/1": values[k]})
        scale = _logit_scale(mlp, x, _removed([masks[k], np.zeros(6)], [0.0, values[k]])).sum(-1)
        assert_close(swept[k], _sum_logits(single, jnp.asarray(x)), 2 * tolerance(FAN_IN), scale,
                     f"swept vs separate, variant {k}")


def test_one_trace_for_any_mask_values(mlp, data, rng):
    x, _ = data
    traced = chex.assert_max_traces(n=1)(lambda model, x: model(x).mean())
    variant = jnf.ablate(mlp, {"layers/1": np.ones(6)})
    first = jnf.sweep(variant, traced, jnp.asarray(x), masks={"layers/1": rng.random((9, 6))})
    second = jnf.sweep(variant, traced, jnp.asarray(x), masks={"layers/1": rng.random((9, 6))})
    other = jnf.ablate(mlp, {"layers/1": rng.random(6)})  # a fresh variant with other default values
    third = jnf.sweep(other, traced, jnp.asarray(x), masks={"layers/1": np.zeros((9, 6))})
    # other random masks give other means: they differ by more than two passes' rounding of a mean of logits
    # (masks in [0, 1] only shrink the intact model's error scale)
    bound = 2 * tolerance(FAN_IN * 64 * 4) * _logit_scale(mlp, x).mean()
    assert np.abs(np.asarray(first) - np.asarray(second)).max() > bound
    assert third.shape == (9,)


def test_unknown_layer_lists_the_layers(mlp):
    with pytest.raises(JNeuronError, match=r"no layer 'layers/5'.*'layers/0'.*'layers/1'"):
        jnf.ablate(mlp, {"layers/5": np.zeros(3)})


def test_wrong_mask_width_names_the_expected_width(mlp, data):
    x, _ = data
    variant = jnf.ablate(mlp, {"layers/0": np.zeros(7)})
    with pytest.raises(JNeuronError, match="layer 'layers/0': mask has 7 neurons; the layer has 10"):
        variant(jnp.asarray(x))
    with pytest.raises(JNeuronError, match="same number of variants"):
        jnf.sweep(jnf.ablate(mlp, {"layers/0": np.ones(10), "layers/1": np.ones(6)}), _sum_logits,
                  jnp.asarray(x), masks={"layers/0": np.ones((3, 10)), "layers/1": np.ones((4, 6))})


def test_mode_errors(mlp, data):
    x, _ = data
    with pytest.raises(JNeuronError, match="mode must be one of"):
        jnf.ablate(mlp, {"layers/0": np.zeros(10)}, mode="random")
    with pytest.raises(JNeuronError, match="needs the means"):
        jnf.ablate(mlp, {"layers/0": np.zeros(10)}, mode="mean")
    with pytest.raises(JNeuronError, match="missing"):
        jnf.ablate(mlp, {"layers/0": np.zeros(10)}, mode="value")


def _logits(model, x):
    return model(x)


@settings(max_examples=15)
@given(bits=st.lists(st.booleans(), min_size=4 * 16, max_size=4 * 16), mode=st.sampled_from(["zero", "mean"]))
def test_property_sweep_equals_weight_surgery(mlp, data, bits, mode):
    """Any K=4 masks over both hidden layers, zero or mean: the sweep equals a float64 numpy forward pass
    in which the removed neurons output 0 or their mean."""
    x, _ = data
    masks = np.asarray(bits, np.float32).reshape(4, 16)
    means = jnf.layer_means(mlp, x, ["layers/0", "layers/1"]) if mode == "mean" else None
    ones = {"layers/0": np.ones(10, np.float32), "layers/1": np.ones(6, np.float32)}
    variant = jnf.ablate(mlp, ones, mode="value",
                         values=means or {"layers/0": np.zeros(10, np.float32), "layers/1": np.zeros(6, np.float32)})
    swept = jnf.sweep(variant, _logits, jnp.asarray(x),
                      masks={"layers/0": masks[:, :10], "layers/1": masks[:, 10:]})
    for k in range(4):
        keep = (masks[k, :10], masks[k, 10:])

        def replace(i, h, keep=keep):
            fill = np.zeros_like(h) if means is None else np.broadcast_to(means[LAYERS[i]], h.shape)
            return np.where(keep[i] > 0, h, fill)

        # the means are the same float32 values in both passes: a removed neuron's fill is exact
        fill = 0.0 if means is None else [means[layer][None] for layer in LAYERS]
        assert_close(swept[k], _forward_with_hidden(mlp, x, replace), tolerance(FAN_IN),
                     _logit_scale(mlp, x, _removed(list(keep), fill)), f"sweep vs float64, variant {k}")


def test_cnn_channel_ablation_equals_zeroed_filter(rng):
    model = CNN(3, rngs=nnx.Rngs(1))
    model.convs[0].bias[...] = jnp.linspace(-0.3, 0.3, 4)
    images = jnp.asarray(rng.normal(size=(4, 8, 8, 1)), jnp.float32)
    mask = np.array([1, 0, 1, 0], np.float32)
    surgery = nnx.clone(model)
    surgery.convs[0].kernel[...] = surgery.convs[0].kernel[...] * jnp.asarray(mask)[None, None, None, :]
    surgery.convs[0].bias[...] = surgery.convs[0].bias[...] * jnp.asarray(mask)
    terms, scale = cnn_error_scale(model, images)  # the intact model's scale bounds the ablated one's
    assert_close(jnf.ablate(model, {"convs/0": mask})(images), surgery(images), 2 * tolerance(terms), scale,
                 "masked channels vs zeroed filters")


def test_transformer_sweep_over_positions_equals_separate_calls(rng):
    model = Encoder(vocab=9, d=8, blocks=2, classes=3, rngs=nnx.Rngs(2))
    tokens = jnp.asarray(rng.integers(0, 9, size=(3, 5)))
    layer = "encoder/layers/1/mlp/hidden"
    masks = (rng.random((4, 5, 16)) > 0.3).astype(np.float32)  # per position and neuron
    variant = jnf.ablate(model, {layer: np.ones(16)}, mode="mean", inputs=tokens)
    swept = jnf.sweep(variant, _logits, tokens, masks={layer: masks})
    means = jnf.layer_means(model, tokens, [layer])
    terms = encoder_terms(model, tokens.shape[1])
    for k in range(4):
        single = jnf.ablate(model, {layer: masks[k]}, mode="mean", values=means)
        logits, condition, scale = encoder_logits_and_scale(single, tokens)  # compiled once for the four
        assert_close(swept[k], logits, 2 * tolerance(terms, condition=float(condition)), float(scale),
                     f"swept vs separate, variant {k}")
