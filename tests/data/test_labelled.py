"""Labelled analyses over a file or store source (jneuron.data.labelled): read chunk by chunk, the same
answer as the arrays, layers named, checkpoints bound to every label."""

import numpy as np
import pytest

import jneuron as jn

TOKENS = 900


@pytest.fixture
def stored(rng, tmp_path):
    """Two models (one with two layers) written to a store, their arrays and integer labels."""
    labels = rng.integers(0, 3, TOKENS)
    a0 = (rng.normal(size=(TOKENS, 4)) + labels[:, None]).astype(np.float32)
    a1 = rng.normal(size=(TOKENS, 3)).astype(np.float32)
    b = rng.normal(size=(TOKENS, 5)).astype(np.float32)
    path = tmp_path / "acts.zarr"
    models = {"a": {"l0": a0, "l1": a1}, "b": {"out": b}}
    with jn.StoreWriter(path) as writer:
        for model, layers in models.items():
            for layer, values in layers.items():
                writer.append(model, layer, values)
    return path, models, labels


def test_information_and_probeless_read_the_store_as_the_arrays(stored):
    path, arrays, labels = stored
    valid = np.arange(TOKENS) % 7 != 3
    source = jn.open_activations(path, valid=valid)
    from_store = jn.neuron_information(source, labels, threshold=0.0, chunk_tokens=256)
    from_arrays = jn.neuron_information(arrays, labels, threshold=0.0, valid=valid, chunk_tokens=256)
    np.testing.assert_array_equal(from_store.counts, from_arrays.counts)
    assert [from_store.neurons.label(i) for i in (0, 4, 7)] == ["a/l0/0", "a/l1/0", "b/out/0"]
    assert from_store.neurons.records() == from_arrays.neurons.records()
    store_means = jn.probeless(source, labels, chunk_tokens=256).means
    np.testing.assert_array_equal(store_means, jn.probeless(arrays, labels, valid=valid, chunk_tokens=256).means)


def test_a_changed_label_makes_a_checkpoint_stale(stored, tmp_path):
    path, _, labels = stored
    folder = tmp_path / "ck"
    first = jn.neuron_information(jn.open_activations(path), labels, threshold=0.0, chunk_tokens=256, checkpoint=folder)
    again = jn.neuron_information(jn.open_activations(path), labels, threshold=0.0, chunk_tokens=256, checkpoint=folder)
    np.testing.assert_array_equal(again.counts, first.counts)  # read back
    changed = labels.copy()
    changed[TOKENS // 2] = (changed[TOKENS // 2] + 1) % 3  # one label in the middle, far from both ends
    with pytest.warns(jn.StaleCheckpointWarning):
        redone = jn.neuron_information(jn.open_activations(path), changed, threshold=0.0, chunk_tokens=256,
                                       checkpoint=folder)
    assert redone.counts.sum() == first.counts.sum() and not np.array_equal(redone.counts, first.counts)
