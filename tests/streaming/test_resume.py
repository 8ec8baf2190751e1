"""Checkpoints of the one pass: a run killed mid-pass and rerun equals an uninterrupted run."""

import numpy as np
import pytest

import jneuron as jn


class Killed(Exception):
    pass


def stop_after(chunks):
    seen = []

    def on_chunk(rows):
        seen.append(rows)
        if len(seen) == chunks:
            raise Killed

    return on_chunk


@pytest.mark.parametrize("quantize", ["threshold", "quantile"])
def test_neuron_information_resumes(rng, tmp_path, quantize):
    x = rng.random((1000, 5)).astype(np.float32)
    labels = rng.integers(0, 3, 1000)
    args = {"classes": 3, "quantize": quantize, "bins": 3, "chunk_tokens": 64}
    whole = jn.neuron_information(x, labels, **args)
    with pytest.raises(Killed):
        jn.neuron_information(x, labels, checkpoint=tmp_path, on_chunk=stop_after(11), **args)
    assert list(tmp_path.glob("stats-*.npz"))
    read = []
    resumed = jn.neuron_information(x, labels, checkpoint=tmp_path, on_chunk=read.append, **args)
    assert sum(read) < 1000 * (2 if quantize == "threshold" else 3)  # some chunks came from the checkpoint
    np.testing.assert_array_equal(resumed.counts, whole.counts)
    np.testing.assert_array_equal(resumed.class_means, whole.class_means)
    again = jn.neuron_information(x, labels, checkpoint=tmp_path, on_chunk=read.append, **args)
    np.testing.assert_array_equal(again.mutual_information, whole.mutual_information)


def test_probeless_resumes(rng, tmp_path):
    x = rng.normal(size=(900, 7)).astype(np.float32) + 100
    labels = np.array(["x", "y", "z"])[rng.integers(0, 3, 900)]
    whole = jn.probeless(x, labels, chunk_tokens=50)
    with pytest.raises(Killed):
        jn.probeless(x, labels, chunk_tokens=50, checkpoint=tmp_path, on_chunk=stop_after(9))
    read = []
    resumed = jn.probeless(x, labels, chunk_tokens=50, checkpoint=tmp_path, on_chunk=read.append)
    assert 0 < sum(read) < 900
    np.testing.assert_array_equal(resumed.means, whole.means)
    np.testing.assert_array_equal(resumed.overall.order, whole.overall.order)
    chunks = [(x[i:i + 100], labels[i:i + 100]) for i in range(0, 900, 100)]  # re-iterable chunks resume too
    streamed = jn.probeless(chunks, chunk_tokens=50)
    with pytest.raises(Killed):
        jn.probeless(chunks, chunk_tokens=50, checkpoint=tmp_path / "chunks", on_chunk=stop_after(5))
    again = jn.probeless(chunks, chunk_tokens=50, checkpoint=tmp_path / "chunks")
    np.testing.assert_array_equal(again.means, streamed.means)


def test_masked_pass_resumes_naming_the_callers_row(rng, tmp_path):
    x = rng.normal(size=(600, 3))
    valid = rng.random(600) > 0.3
    x[~valid] = np.nan  # never counted
    whole = jn.comoments(x, valid=valid, chunk_tokens=50)
    with pytest.raises(Killed):
        jn.comoments(x, valid=valid, chunk_tokens=50, checkpoint=tmp_path, on_chunk=stop_after(8))
    resumed = jn.comoments(x, valid=valid, chunk_tokens=50, checkpoint=tmp_path)
    np.testing.assert_array_equal(resumed.cross, whole.cross)
    assert resumed.count == valid.sum()
