"""The word-level LM: its LSTM against a float64 numpy reference, the readout transform, the trainer."""

import jax
import numpy as np
import pytest
from flax import nnx

from jneuron.errors import JNeuronError
from jneuron.models.word_lm import WordLM, perplexity, train_word_lms
from tests.tolerance import assert_close, tolerance


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _reference_hidden(model: WordLM, tokens: np.ndarray) -> np.ndarray:
    """The LSTM equations in float64 numpy (gates i, f, g, o), from a zero state."""
    table = np.asarray(model.embed.embedding[...], np.float64)
    w_in = np.asarray(model.cell.input.kernel[...], np.float64)
    b_in = np.asarray(model.cell.input.bias[...], np.float64)
    w_rec = np.asarray(model.cell.recurrent.kernel[...], np.float64)
    h = np.zeros((tokens.shape[0], model.hidden))
    c = np.zeros_like(h)
    out = []
    for t in range(tokens.shape[1]):
        i, f, g, o = np.split(table[tokens[:, t]] @ w_in + b_in + h @ w_rec, 4, axis=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        out.append(h)
    return np.stack(out, axis=1)


def test_lstm_matches_numpy_reference(rng):
    model = WordLM(30, 6, 8, rngs=nnx.Rngs(1))
    tokens = rng.integers(0, 30, (3, 5)).astype(np.int32)
    hidden, distance = model.hidden_states(tokens)
    assert distance is None
    # every step is a dot product over embed + hidden terms; the error carries through the 5 steps
    assert_close(hidden, _reference_hidden(model, tokens), tolerance(6 + 8, condition=tokens.shape[1]),
                 what="LSTM hidden states")


def test_readout_transform_acts_on_the_hidden_units(rng):
    model = WordLM(20, 4, 6, rngs=nnx.Rngs(0))
    tokens = rng.integers(0, 20, (2, 4)).astype(np.int32)
    hidden = np.asarray(model.hidden_states(tokens)[0], np.float64)
    kernel = np.asarray(model.output.kernel[...], np.float64)
    bias = np.asarray(model.output.bias[...], np.float64)
    matrix = np.diag([1, 0, 1, 1, 0, 1]).astype(np.float32)
    offset = np.array([0, 0.5, 0, 0, 0, 0], np.float32)
    erased = hidden * np.diag(matrix) + offset
    logits = model(tokens, (matrix, offset))
    scale = np.abs(erased) @ np.abs(kernel) + np.abs(bias)
    assert_close(logits, erased @ kernel + bias, tolerance(6), scale, what="transformed readout")
    identity = (np.eye(6, dtype=np.float32), np.zeros(6, np.float32))
    assert_close(model(tokens, identity), model(tokens), tolerance(6), scale, what="identity transform")


def test_onlstm_distances_are_in_unit_interval(rng):
    model = WordLM(20, 4, 8, onlstm=True, chunk_size=2, rngs=nnx.Rngs(0))
    hidden, distance = model.hidden_states(rng.integers(0, 20, (2, 6)).astype(np.int32))
    assert hidden.shape == (2, 6, 8) and distance.shape == (2, 6)
    assert bool(((distance >= 0) & (distance <= 1)).all())


def test_training_learns_and_is_seeded(rng):
    # a learnable text: each token is the previous one plus 1 (mod 12)
    starts = rng.integers(0, 12, (64, 1))
    stream = (starts + np.arange(9)) % 12
    inputs, targets = stream[:, :-1].astype(np.int32), stream[:, 1:].astype(np.int32)
    untrained = WordLM(12, 8, 16, rngs=nnx.Rngs(5))
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes float and int32
        models = train_word_lms([5, 6], inputs, targets, vocab=12, embed=8, hidden=16, epochs=30, batch_size=16,
                                learning_rate=1e-2)
        again = train_word_lms([5, 6], inputs, targets, vocab=12, embed=8, hidden=16, epochs=30, batch_size=16,
                               learning_rate=1e-2)
    before = perplexity(untrained, inputs, targets)
    after = [perplexity(m, inputs, targets) for m in models]
    assert before > 8 and max(after) < 2, (before, after)
    kernel = [np.asarray(m.output.kernel[...]) for m in (*models, *again)]
    assert not np.array_equal(kernel[0], kernel[1])  # different seeds, different models
    assert np.array_equal(kernel[0], kernel[2]) and np.array_equal(kernel[1], kernel[3])  # deterministic


def test_bad_inputs():
    model = WordLM(10, 4, 8, rngs=nnx.Rngs(0))
    with pytest.raises(JNeuronError, match=r"\(batch, time\)"):
        model.hidden_states(np.zeros(5, np.int32))
    with pytest.raises(JNeuronError, match="must be the same"):
        train_word_lms([0], np.zeros((4, 3), np.int32), np.zeros((4, 2), np.int32), vocab=10)
    with pytest.raises(JNeuronError, match="at least one batch"):
        train_word_lms([0], np.zeros((4, 3), np.int32), np.zeros((4, 3), np.int32), vocab=10, batch_size=8)
    with pytest.raises(JNeuronError, match="multiple of chunk_size"):
        WordLM(10, 4, 6, onlstm=True, chunk_size=4, rngs=nnx.Rngs(0))
