"""Row validity: a padded source (invalid rows full of garbage and NaN) gives the padding-free answer."""

import numpy as np
import pytest

import jneuron as jn
from jneuron import Rows
from tests.tolerance import assert_close, tolerance


def padded(rng, x, every=3):
    """``x`` with garbage rows (huge values, NaN) inserted, and the mask of the real rows."""
    tokens = len(x) + len(x) // every
    valid = np.ones(tokens, bool)
    valid[every::every + 1] = False
    valid[np.cumsum(valid) > len(x)] = False
    out = np.empty((tokens,) + x.shape[1:], x.dtype)
    out[valid] = x[: valid.sum()]
    garbage = rng.normal(size=((~valid).sum(),) + x.shape[1:]) * 1e6
    garbage[::2, 0] = np.nan
    out[~valid] = garbage
    return out, valid


def test_comoments_ignore_invalid_rows(rng):
    x = rng.normal(size=(700, 5)) + 1e3
    big, valid = padded(rng, x)
    m = jn.comoments(big, valid=valid, chunk_tokens=128)
    assert m.count == 700
    centred = x - x.mean(0)
    assert_close(m.cross, centred.T @ centred, 1.0, tolerance(700, np.float64) * np.abs(centred).T @ np.abs(centred),
                 "cross")
    chunks = [Rows(big[i:i + 100], valid[i:i + 100]) for i in range(0, len(big), 100)]
    assert jn.comoments(chunks).count == 700


def test_maxcorr_and_cka_ignore_invalid_rows(rng):
    a, b = rng.normal(size=(600, 4)), rng.normal(size=(600, 3))
    b[:, 0] = 2 * a[:, 1] + 0.1 * b[:, 0]
    (pa, valid), (pb, _) = padded(rng, a), padded(rng, b)
    whole = jn.maxcorr([a, b], names=["a", "b"])
    masked = jn.maxcorr([pa, pb], names=["a", "b"], valid=valid, chunk_tokens=100)
    assert_close(masked.scores, whole.scores, 1.0, tolerance(600, np.float64, condition=10), "maxcorr scores")
    np.testing.assert_array_equal(masked.partner_unit, whole.partner_unit)
    plain, padded_cka = jn.cka(a, b), jn.cka(pa, pb, valid=valid, chunk_tokens=100)
    assert padded_cka.tokens == 600
    assert_close(padded_cka.value, plain.value, 1.0, tolerance(600, np.float64, condition=10), "cka")


def test_information_and_probeless_ignore_invalid_rows(rng):
    x = rng.random((500, 6))
    labels = rng.integers(0, 3, 500)
    x[:, 2] = labels / 2 + 0.1
    big, valid = padded(rng, x)
    big_labels = np.full(len(big), 7)  # out of range where invalid: never counted
    big_labels[valid] = labels
    whole = jn.neuron_information(x, labels, classes=3)
    masked = jn.neuron_information(big, big_labels, classes=3, valid=valid, chunk_tokens=64)
    np.testing.assert_array_equal(masked.counts, whole.counts)
    reference = np.stack([x[labels == c].mean(0) for c in range(3)], axis=1)
    assert_close(masked.class_means, reference, 1.0, tolerance(500, np.float64) * np.abs(reference) + 1e-300,
                 "class means")
    names = np.array(["a", "b", "c", "junk"])[np.where(valid, big_labels.clip(0, 3), 3)]
    result = jn.probeless(big, names, valid=valid, chunk_tokens=64)
    assert result.classes.tolist() == ["a", "b", "c"] and result.counts.tolist() == np.bincount(labels).tolist()
    assert_close(result.means, reference.T, 1.0, tolerance(500, np.float64) * np.abs(reference.T), "probeless means")


def test_degenerate_validity(rng):
    x = rng.normal(size=(50, 3))
    with pytest.raises(jn.JNeuronError, match="marked invalid"):
        jn.comoments(x, valid=np.zeros(50, bool))
    with pytest.raises(jn.JNeuronError, match="at least 2 tokens"):
        jn.cka(x, x, valid=np.eye(1, 50, 7, dtype=bool)[0])
    with pytest.raises(jn.JNeuronError, match="boolean"):
        jn.comoments(x, valid=np.ones(50))
    with pytest.raises(jn.JNeuronError, match=r"\(50,\)"):
        jn.comoments(x, valid=np.ones(49, bool))
    bad = x.copy()
    bad[[4, 9], 1] = np.nan
    valid = np.ones(50, bool)
    valid[4] = False  # the NaN there is ignored; the one in row 9 (a valid row) is reported by its own number
    with pytest.raises(jn.JNeuronError, match="row 10, neuron 1"):
        jn.comoments(bad, valid=valid, chunk_tokens=8)
    with pytest.raises(jn.JNeuronError, match="row 10, neuron"):
        jn.neuron_information(bad, np.arange(50) % 2, valid=valid, chunk_tokens=8)
    with pytest.raises(jn.JNeuronError, match="row 10, neuron 1"):
        jn.probeless(bad, np.arange(50) % 2, valid=valid, chunk_tokens=8)
