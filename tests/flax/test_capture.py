"""Capture on an MLP, a transformer-style encoder and a CNN: rows, positions, batching and streaming."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jneuron as jn
from jneuron import JNeuronError
from jneuron import flax as jnf
from jneuron.models import MLP
from tests.flax_models import (
    CNN,
    Encoder,
    abs_model,
    dense_chain,
    encoder_error_scale,
    forward_error_scale,
)
from tests.tolerance import assert_close, covariance_scale, tolerance


@pytest.fixture(scope="module")
def encoder():
    return Encoder(vocab=11, d=8, blocks=2, classes=3, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, 11, size=(6, 5))


def test_mlp_capture_equals_hidden(rng):
    model = MLP(12, (10, 6), 4, rngs=nnx.Rngs(1))
    x = rng.normal(size=(37, 12)).astype(np.float32)
    cap = jnf.capture(model, x, ["layers/0", "layers/1"], batch_size=8)
    chain = dense_chain(model)
    for depth, (got, want) in enumerate(zip((cap["layers/0"], cap["layers/1"]), model.hidden(jnp.asarray(x)))):
        # two float32 passes (batches of 8, and all rows at once) of layers 0..depth: fan-in 12, then 10
        scale = forward_error_scale(chain[:depth + 1], x)[1]
        assert_close(got, want, 2 * tolerance(12), scale, f"layers/{depth}")
    np.testing.assert_array_equal(cap.positions["layers/0"][:, 0], np.arange(37))
    assert cap.shapes == {"layers/0": (10,), "layers/1": (6,)}


def test_transformer_capture_rows_and_positions(encoder, tokens):
    layers = ["encoder/layers/1/mlp", "encoder/layers/0/mlp/hidden", "encoder/layers/0/attention"]
    cap = jnf.capture(encoder, tokens, layers, batch_size=4)
    assert cap["encoder/layers/1/mlp"].shape == (30, 8)
    assert cap["encoder/layers/0/mlp/hidden"].shape == (30, 16)
    where = cap.positions["encoder/layers/1/mlp"]
    np.testing.assert_array_equal(where[:7], [[0, 0], [0, 1], [0, 2], [0, 3], [0, 4], [1, 0], [1, 1]])
    # reference: run the blocks by hand and compare the second block's MLP output at (sample 4, time 3)
    mlp_out, terms, condition, scale = _by_hand(encoder, jnp.asarray(tokens))
    row = int(np.flatnonzero((where[:, 0] == 4) & (where[:, 1] == 3))[0])
    # two float32 passes; the second block's MLP output is within the encoder's scale and sums
    assert_close(cap["encoder/layers/1/mlp"][row], mlp_out[4, 3], 2 * tolerance(terms, condition=float(condition)),
                 float(scale), "second block's MLP output")
    assert cap.shapes["encoder/layers/0/attention"] == (5, 8)


@nnx.jit
def _by_hand(encoder, tokens):
    """The second block's MLP output, computed block by block (one compiled call), and the error scale."""
    x = encoder.embed(tokens)
    x = encoder.encoder["layers"][0](x)
    block = encoder.encoder["layers"][1]
    x = x + block.attention(block.norm1(x))
    return (block.mlp(block.norm2(x)), *encoder_error_scale(encoder, tokens))


def test_cnn_capture_keeps_spatial_positions(rng):
    model = CNN(3, rngs=nnx.Rngs(0))
    images = rng.normal(size=(5, 8, 8, 1)).astype(np.float32)
    cap = jnf.capture(model, images, ["convs/0", "convs/1"])
    assert cap["convs/0"].shape == (5 * 8 * 8, 4) and cap["convs/1"].shape == (5 * 4 * 4, 6)
    assert cap.shapes["convs/1"] == (4, 4, 6)
    direct = np.asarray(model.convs[0](jnp.asarray(images)))
    where = cap.positions["convs/0"]
    # two float32 passes of one 3x3x1 convolution: 9 terms, scale sum |k x| + |b|
    scale = np.asarray(abs_model(model).convs[0](jnp.abs(jnp.asarray(images))))
    assert_close(cap["convs/0"], direct[where[:, 0], where[:, 1], where[:, 2]], 2 * tolerance(9),
                 scale[where[:, 0], where[:, 1], where[:, 2]], "convs/0")


def test_capture_streams_into_comoments(rng):
    model = MLP(12, (10, 6), 4, rngs=nnx.Rngs(2))
    x = (rng.normal(size=(300, 12)) + 50).astype(np.float32)
    source = jnf.capture_source(model, x, ["layers/0", "layers/1"], batch_size=64)
    assert source.names == ("layers/0", "layers/1") and source.widths == (10, 6)
    streamed = jn.comoments(source.chunks(100))
    full = np.hstack([np.asarray(h, np.float64) for h in model.hidden(jnp.asarray(x))])
    assert streamed.count == 300
    # the streamed activations are the model's, up to two float32 passes' rounding (fan-in 12, then 10)
    acts = np.vstack(list(source.chunks(100))).astype(np.float64)
    chain = dense_chain(model)
    scale = np.hstack([forward_error_scale(chain[:1], x)[1], forward_error_scale(chain[:2], x)[1]])
    assert_close(acts, full, 2 * tolerance(12), scale, "streamed activations")
    # the statistics of those activations: float32 products over 300 tokens, chunks centred on their means
    # (so the offset of 50 costs nothing: magnitude 0); the mean may round to float32 once
    sd = acts.std(0)
    assert_close(streamed.mean, acts.mean(0), 1.0, tolerance(300) * sd + tolerance(1) * np.abs(acts.mean(0)), "mean")
    centred = acts - acts.mean(0)
    assert_close(streamed.cross, centred.T @ centred, tolerance(300), 300 * covariance_scale(acts), "cross")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jn.DeadNeuronWarning)  # the offset leaves some ReLUs dead
        streamed_rank = jn.maxcorr(source)  # layers as "models": streamed from the re-iterable source
        in_memory = jn.maxcorr({"layers/0": acts[:, :10], "layers/1": acts[:, 10:]})
    # correlations: float32 streamed against float64 in memory, natural scale 1
    assert_close(streamed_rank.scores, in_memory.scores, tolerance(300) + tolerance(300, np.float64),
                 what="maxcorr scores")


def test_capture_errors(encoder, tokens):
    with pytest.raises(JNeuronError, match=r"no layer 'encoder/layers/2'.*'encoder/layers/1/mlp'"):
        jnf.capture(encoder, tokens, ["encoder/layers/2"])
    with pytest.raises(JNeuronError, match="unique"):
        jnf.capture(encoder, tokens, ["head", "head"])
    with pytest.raises(JNeuronError, match="batch_size must be at least 1"):
        jnf.capture(encoder, tokens, ["head"], batch_size=0)
    with pytest.raises(JNeuronError, match="share their first"):
        jnf.capture(encoder, (tokens, tokens[:2]), ["head"])
