"""Probe.evaluate through the one streamed pass: arrays, sources and chunks give the in-memory counts
exactly (integers), padding is never read, sharding and checkpoint resumption change nothing."""

import jax.numpy as jnp
import numpy as np
import pytest

import jneuron as jn
from jneuron.data.source import Rows
from jneuron.errors import JNeuronError
from jneuron.probing.probe import confusion_counts, encode_labels, metrics

CLASSES = np.array(["adj", "noun", "verb"])


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(700, 6)) + 50).astype(np.float32)
    labels = CLASSES[np.argmax(x[:, :3] - 50 + 0.8 * rng.normal(size=(700, 3)), axis=1)]
    probe = jn.train_probe(x, labels, epochs=3, learning_rate=0.05)
    return x, labels, probe


def in_memory(probe, x, labels):
    """The reference: every row's counts at once (numpy labels, one compiled confusion)."""
    weight, bias = probe._params()
    ids = jnp.asarray(encode_labels(labels, probe.classes, len(labels)))
    return metrics(confusion_counts(weight, bias, jnp.asarray(x), ids, None, len(probe.classes))[0], probe.classes)


def test_arrays_in_chunks_give_the_in_memory_counts(task):
    x, labels, probe = task
    expected = in_memory(probe, x, labels)
    assert 0.2 < expected["accuracy"] < 1  # some rows wrong: the counts can disagree
    for chunk_tokens in (None, 1, 64, 699, 5000):
        assert probe.evaluate(x, labels, chunk_tokens=chunk_tokens) == expected


def test_padded_rows_are_ignored(task):
    x, labels, probe = task
    valid = np.arange(len(x)) % 5 != 2
    padded_x = np.where(valid[:, None], x, np.nan).astype(np.float32)
    padded_labels = np.where(valid, labels, "PAD")  # not a class: never read
    expected = in_memory(probe, x[valid], labels[valid])
    assert probe.evaluate(padded_x, padded_labels, valid=valid, chunk_tokens=50) == expected
    source = jn.as_source([padded_x], valid=valid)
    assert probe.evaluate(source, padded_labels, chunk_tokens=33) == expected
    chunks = [(Rows(padded_x[i:i + 90], valid[i:i + 90]), padded_labels[i:i + 90]) for i in range(0, 700, 90)]
    assert probe.evaluate(chunks, chunk_tokens=40) == expected
    assert probe.evaluate(iter(chunks)) == expected


def test_sharded_equals_unsharded(task):
    x, labels, probe = task
    valid = np.arange(len(x)) % 7 != 0
    expected = probe.evaluate(x, labels, valid=valid, chunk_tokens=64)
    assert probe.evaluate(x, labels, valid=valid, chunk_tokens=64, devices=2) == expected
    assert expected == in_memory(probe, x[valid], labels[valid])


class Killed(Exception):
    pass


def test_checkpoint_resume_equals_uninterrupted(task, tmp_path):
    x, labels, probe = task
    whole = probe.evaluate(x, labels, chunk_tokens=50)
    seen = []

    def stop(rows):
        seen.append(rows)
        if len(seen) == 9:
            raise Killed

    with pytest.raises(Killed):
        probe.evaluate(x, labels, chunk_tokens=50, checkpoint=tmp_path, on_chunk=stop)
    assert list(tmp_path.glob("stats-*.npz"))
    read = []
    assert probe.evaluate(x, labels, chunk_tokens=50, checkpoint=tmp_path, on_chunk=read.append) == whole
    assert 0 < sum(read) < len(x)  # some chunks came from the checkpoint


def test_bad_input_is_one_line(task):
    x, labels, probe = task
    bad = labels.copy()
    bad[9] = "PAD"
    with pytest.raises(JNeuronError, match=r"row 10 \(counted from 1\)"):
        probe.evaluate(x, bad)
    broken = x.copy()
    broken[40, 2] = np.nan
    with pytest.raises(JNeuronError, match="41|40"):
        probe.evaluate(broken, labels, chunk_tokens=16)
    with pytest.raises(JNeuronError, match="neurons"):
        probe.evaluate(x[:, :5], labels)
    with pytest.raises(JNeuronError, match="labels"):
        probe.evaluate(jn.as_source([x]), labels[:-1])


def test_regression_streams_to_the_in_memory_errors(tmp_path):
    from tests.tolerance import assert_close, tolerance
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 5)).astype(np.float32)
    target = (x @ rng.normal(size=5) + 0.5 * rng.normal(size=400) + 1e3).astype(np.float32)
    probe = jn.train_probe(x, target, task="regression", epochs=3)
    out = np.asarray(probe.outputs(x), np.float64)[:, 0]
    valid = np.arange(400) % 6 != 1
    y = target.astype(np.float64)[valid]
    expected = {"tokens": int(valid.sum()), "mse": np.mean((out[valid] - y) ** 2),
                "r2": 1 - np.sum((out[valid] - y) ** 2) / np.sum((y - y.mean()) ** 2)}
    padded = np.where(valid, target, np.nan).astype(np.float32)
    bound = tolerance(400, np.float32, magnitude=3.0)
    chunks = [(Rows(x[i:i + 70], valid[i:i + 70]), padded[i:i + 70]) for i in range(0, 400, 70)]
    runs = [probe.evaluate(x, padded, valid=valid, chunk_tokens=64),
            probe.evaluate(x, padded, valid=valid, chunk_tokens=64, devices=2),
            probe.evaluate(jn.as_source([x], valid=valid), padded, chunk_tokens=50),
            probe.evaluate(chunks, chunk_tokens=30),
            probe.evaluate(iter(chunks), chunk_tokens=30)]  # a one-shot iterator: its first item is kept
    for got in runs:
        assert got["tokens"] == expected["tokens"]
        assert_close(got["mse"], expected["mse"], bound, expected["mse"], "mse")
        assert_close(got["r2"], expected["r2"], bound, 1.0, "r2")
    whole = probe.evaluate(x, padded, valid=valid, chunk_tokens=40)
    seen = []

    def stop(rows):
        seen.append(rows)
        if len(seen) == 4:
            raise Killed

    with pytest.raises(Killed):
        probe.evaluate(x, padded, valid=valid, chunk_tokens=40, checkpoint=tmp_path, on_chunk=stop)
    assert probe.evaluate(x, padded, valid=valid, chunk_tokens=40, checkpoint=tmp_path) == whole
    with pytest.raises(JNeuronError, match=r"row 4 \(counted from 1\)"):
        probe.evaluate(x, np.where(np.arange(400) == 3, np.inf, target))
