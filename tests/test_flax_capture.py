"""Capture on an MLP, a transformer-style encoder and a CNN: rows, positions, batching and streaming."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax_models import CNN, Encoder

import jneuron as jn
from jneuron import JNeuronError
from jneuron import flax as jnf
from jneuron.models import MLP


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
    for got, want in zip((cap["layers/0"], cap["layers/1"]), model.hidden(jnp.asarray(x))):
        np.testing.assert_allclose(got, want, atol=1e-6)
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
    x = encoder.embed(jnp.asarray(tokens))
    x = encoder.encoder["layers"][0](x)
    block = encoder.encoder["layers"][1]
    x = x + block.attention(block.norm1(x))
    mlp_out = np.asarray(block.mlp(block.norm2(x)))
    row = int(np.flatnonzero((where[:, 0] == 4) & (where[:, 1] == 3))[0])
    np.testing.assert_allclose(cap["encoder/layers/1/mlp"][row], mlp_out[4, 3], atol=1e-5)
    assert cap.shapes["encoder/layers/0/attention"] == (5, 8)


def test_cnn_capture_keeps_spatial_positions(rng):
    model = CNN(3, rngs=nnx.Rngs(0))
    images = rng.normal(size=(5, 8, 8, 1)).astype(np.float32)
    cap = jnf.capture(model, images, ["convs/0", "convs/1"])
    assert cap["convs/0"].shape == (5 * 8 * 8, 4) and cap["convs/1"].shape == (5 * 4 * 4, 6)
    assert cap.shapes["convs/1"] == (4, 4, 6)
    direct = np.asarray(model.convs[0](jnp.asarray(images)))
    where = cap.positions["convs/0"]
    np.testing.assert_allclose(cap["convs/0"], direct[where[:, 0], where[:, 1], where[:, 2]], atol=1e-5)


def test_capture_streams_into_comoments(rng):
    model = MLP(12, (10, 6), 4, rngs=nnx.Rngs(2))
    x = (rng.normal(size=(300, 12)) + 50).astype(np.float32)
    source = jnf.capture_source(model, x, ["layers/0", "layers/1"], batch_size=64)
    assert source.names == ("layers/0", "layers/1") and source.widths == (10, 6)
    streamed = jn.comoments(source.chunks(100))
    full = np.hstack([np.asarray(h, np.float64) for h in model.hidden(jnp.asarray(x))])
    assert streamed.count == 300
    np.testing.assert_allclose(streamed.mean, full.mean(0), rtol=1e-5, atol=1e-5)
    centred = full - full.mean(0)
    np.testing.assert_allclose(streamed.cross, centred.T @ centred, rtol=1e-4, atol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jn.DeadNeuronWarning)  # the offset leaves some ReLUs dead
        streamed_rank = jn.maxcorr(source)  # layers as "models": streamed from the re-iterable source
        in_memory = jn.maxcorr({"layers/0": full[:, :10], "layers/1": full[:, 10:]})
    np.testing.assert_allclose(streamed_rank.scores, in_memory.scores, atol=1e-5)


def test_capture_errors(encoder, tokens):
    with pytest.raises(JNeuronError, match=r"no layer 'encoder/layers/2'.*'encoder/layers/1/mlp'"):
        jnf.capture(encoder, tokens, ["encoder/layers/2"])
    with pytest.raises(JNeuronError, match="unique"):
        jnf.capture(encoder, tokens, ["head", "head"])
    with pytest.raises(JNeuronError, match="batch_size must be at least 1"):
        jnf.capture(encoder, tokens, ["head"], batch_size=0)
    with pytest.raises(JNeuronError, match="share their first"):
        jnf.capture(encoder, (tokens, tokens[:2]), ["head"])
