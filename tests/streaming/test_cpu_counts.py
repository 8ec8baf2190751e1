"""The host (numpy BLAS) counting of the information measures: exact counts, equal to a numpy reference
and to the compiled kernels' counts, on random and nasty inputs."""

import jax.numpy as jnp
import numpy as np
import pytest

import jneuron as jn
from jneuron.kernels import information as kinfo
from jneuron.kernels import quantize as kquant
from jneuron.precision import follow_dtype
from jneuron.streaming import cpu_counts
from tests.tolerance import assert_close, tolerance


pytestmark = pytest.mark.filterwarnings("ignore::jneuron.DeadNeuronWarning")  # nasty() plants a constant neuron

def reference_counts(codes: np.ndarray, labels: np.ndarray, bins: int, classes: int) -> np.ndarray:
    """``(neurons, bins, classes)`` int64 by np.add.at, one token at a time."""
    counts = np.zeros((codes.shape[1], bins, classes), np.int64)
    for j in range(codes.shape[1]):
        np.add.at(counts[j], (codes[:, j], labels), 1)
    return counts


def nasty(rng, tokens: int, neurons: int, dtype=np.float32) -> np.ndarray:
    """Random data with an offset neuron, a dead (constant) one, values exactly on 0.5, and ties."""
    x = rng.random((tokens, neurons)).astype(dtype)
    x[:, 0] += dtype(1e4)
    x[:, 1] = 0
    x[::3, 2] = 0.5
    x[:, 3] = np.round(x[:, 3] * 4) / 4
    return x


@pytest.mark.parametrize("classes", [6, cpu_counts.GROUPED_CLASSES + 3])  # one-hot products, grouped rows
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode,bins", [("threshold", 2), ("uniform", 4), ("edges", 5)])
def test_counts_equal_numpy_reference_and_kernel(rng, mode, bins, dtype, classes):
    tokens, neurons = 1_037, 7
    x = nasty(rng, tokens, neurons, dtype)
    labels = rng.integers(0, classes - 1, tokens)  # the last class is absent
    if mode == "threshold":
        params = (np.full(neurons, 0.5, dtype),)
    elif mode == "uniform":
        params = (x.min(axis=0), x.max(axis=0))
    else:
        params = (np.sort(rng.choice(x.ravel(), (neurons, bins - 1)), axis=1).astype(dtype),)
    with follow_dtype(dtype):  # the kernel quantizes float64 in float64
        codes = np.asarray(kquant.apply(jnp.asarray(x), mode, tuple(jnp.asarray(p) for p in params), bins))
    rows = tokens - 5  # trailing rows are padding
    counts, sums = cpu_counts.chunk_tables(x, labels, rows, classes=classes, mode=mode, params=params, bins=bins)
    expected = reference_counts(codes[:rows].astype(np.int64), labels[:rows], bins, classes)
    np.testing.assert_array_equal(counts, expected)
    with follow_dtype(dtype):
        kernel_counts, _ = kinfo.chunk_tables(jnp.asarray(x), jnp.asarray(codes), jnp.asarray(labels), rows, None,
                                              bins=bins, classes=classes, method="segment")
    np.testing.assert_array_equal(counts, np.asarray(kernel_counts))
    exact = np.stack([x[:rows][labels[:rows] == c].astype(np.float64).sum(0) for c in range(classes)], axis=1)
    bound = tolerance(rows, dtype) * np.stack(
        [np.abs(x[:rows][labels[:rows] == c].astype(np.float64)).sum(0) for c in range(classes)], axis=1)
    assert_close(sums, exact, 1.0, bound, "class sums")


@pytest.mark.parametrize("classes", [3, cpu_counts.GROUPED_CLASSES])
def test_shift_single_row_and_non_finite(rng, classes):
    x = nasty(rng, 50, 4)
    labels = rng.integers(0, 3, 50)
    shift = x.mean(axis=0).astype(np.float32)
    _, sums = cpu_counts.chunk_tables(x, labels, 50, classes=classes, mode="threshold", params=(np.float32(0.5),),
                                      bins=2, shift=shift)
    exact = np.stack([(x[labels == c].astype(np.float64) - shift).sum(0) for c in range(classes)], axis=1)
    bound = tolerance(50, np.float32) * np.stack(
        [np.abs(x[labels == c].astype(np.float64) - shift).sum(0) for c in range(classes)], axis=1)
    assert_close(sums, exact, 1.0, bound, "shifted class sums")
    one, _ = cpu_counts.chunk_tables(x, labels, 1, classes=classes, mode="threshold", params=(np.float32(0.5),),
                                     bins=2)
    assert one.sum() == 4 and one[:, :, labels[0]].sum() == 4
    x[7, 2] = np.nan
    _, sums = cpu_counts.chunk_tables(x, labels, 50, classes=classes, mode="threshold", params=(np.float32(0.5),),
                                      bins=2)
    assert not np.isfinite(sums).all()
    assert cpu_counts.first_bad(x, 50) == (7, 2)
    assert cpu_counts.first_bad(x, 7) is None


@pytest.mark.parametrize("quantize,bins", [("threshold", 2), ("uniform", 3), ("quantile", 4)])
def test_host_counting_equals_compiled_counting(rng, quantize, bins):
    x = nasty(rng, 900, 6)
    labels = rng.integers(0, 4, 900)
    host = jn.neuron_information(x, labels, quantize=quantize, bins=bins, counting="host", chunk_tokens=256)
    segment = jn.neuron_information(x, labels, quantize=quantize, bins=bins, counting="segment", chunk_tokens=256)
    np.testing.assert_array_equal(host.counts, segment.counts)
    np.testing.assert_array_equal(host.mutual_information, segment.mutual_information)


@pytest.mark.parametrize("resolution", [64, cpu_counts.HISTOGRAM_BLOCK_BINS // 4])  # one block; blocks of 4
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_histogram_and_minmax_equal_the_kernels(rng, dtype, resolution):
    x = nasty(rng, 777, 6, dtype)
    x[:, 4] = rng.normal(size=777) * 1e-3 - 7  # a narrow negative range
    rows = 770
    with follow_dtype(dtype):
        low, high = (np.asarray(v) for v in kquant.minmax(jnp.asarray(x), rows))
        expected = np.asarray(kquant.histogram(jnp.asarray(x), rows, jnp.asarray(low), jnp.asarray(high),
                                                 resolution))
    host_low, host_high = cpu_counts.minmax(x, rows)
    np.testing.assert_array_equal(host_low, low)
    np.testing.assert_array_equal(host_high, high)
    counts = cpu_counts.histogram(x, rows, low, high, resolution)
    np.testing.assert_array_equal(counts, expected)
    assert (counts.sum(axis=1) == rows).all()
    assert counts[1, 0] == rows  # the dead neuron: everything in bin 0


def reference_codes(x: np.ndarray, info) -> np.ndarray:
    """Every token's bin from a result's quantization, in numpy (the quantizer's operations, in ``x``'s dtype)."""
    q, dtype = info.quantization, x.dtype
    if q["mode"] == "threshold":
        return (x > dtype.type(q["threshold"])).astype(np.int64)
    if q["mode"] == "quantile":
        edges = np.asarray(q["edges"], dtype)
        return (x[:, :, None] > edges[None]).sum(axis=2)
    low, high, bins = np.asarray(q["low"], dtype), np.asarray(q["high"], dtype), q["bins"]
    width = high - low
    scaled = (x - low) * (dtype.type(bins) / np.where(width > 0, width, dtype.type(1)))
    return np.clip(np.floor(np.where(width > 0, scaled, 0)), 0, bins - 1).astype(np.int64)


def padded_nasty(rng, dtype, classes=4):
    """Nasty data with invalid rows (garbage labels, NaN and huge values) mixed in, and its mask."""
    x = nasty(rng, 700, 6, dtype)
    labels = rng.integers(0, classes, 700)
    valid = rng.random(900) < 700 / 900
    valid[np.cumsum(valid) > 700] = False
    big = np.full((900, 6), np.nan, dtype)
    big[~valid, 1::2] = 1e30
    big[valid] = x[: valid.sum()]
    big_labels = np.full(900, 99)  # out of range where invalid: never read
    big_labels[valid] = labels[: valid.sum()]
    return big, big_labels, valid, x[: valid.sum()], labels[: valid.sum()]


@pytest.mark.parametrize("classes", [4, cpu_counts.GROUPED_CLASSES + 1])  # one-hot products, grouped rows
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("quantize,bins", [("threshold", 2), ("uniform", 3), ("quantile", 4)])
def test_host_equals_segment_and_numpy_with_valid_rows(rng, dtype, quantize, bins, classes):
    big, big_labels, valid, x, labels = padded_nasty(rng, dtype, classes)
    args = {"quantize": quantize, "bins": bins, "classes": classes + 1, "valid": valid, "chunk_tokens": 128}
    with follow_dtype(dtype):
        host = jn.neuron_information(big, big_labels, counting="host", **args)
        segment = jn.neuron_information(big, big_labels, counting="segment", **args)
    assert host.quantization.keys() == segment.quantization.keys()
    for name, value in host.quantization.items():  # the pre-passes' ranges and edges are the same too
        np.testing.assert_array_equal(value, segment.quantization[name])
    np.testing.assert_array_equal(host.counts, segment.counts)
    expected = reference_counts(reference_codes(x, host), labels, bins, classes + 1)
    np.testing.assert_array_equal(host.counts, expected)
    assert host.counts.sum() == 6 * len(x) and host.counts[:, :, classes].sum() == 0  # the last class is absent
    exact = np.stack([x[labels == c].astype(np.float64).mean(0) for c in range(classes)], axis=1)
    error = tolerance(len(x), dtype) * np.stack([np.abs(x[labels == c].astype(np.float64)).mean(0)
                                                 for c in range(classes)], axis=1)
    assert_close(host.class_means[:, :classes], exact, 1.0, error, "host class means")
    assert np.isnan(host.class_means[:, classes]).all()
    np.testing.assert_array_equal(host.mutual_information, segment.mutual_information)


class Killed(Exception):
    pass


@pytest.mark.parametrize("quantize", ["threshold", "quantile"])
def test_host_counting_resumes_from_checkpoint(rng, tmp_path, quantize):
    big, big_labels, valid, _, _ = padded_nasty(rng, np.float32)
    args = {"quantize": quantize, "bins": 3, "classes": 4, "valid": valid, "chunk_tokens": 64, "counting": "host"}
    read = []
    whole = jn.neuron_information(big, big_labels, on_chunk=read.append, **args)
    passes = 1 if quantize == "threshold" else 3
    assert sum(read) == 900 * passes  # on_chunk counts the rows read, invalid ones included

    def kill_after(chunks):
        def on_chunk(rows):
            kill_after.seen += 1
            if kill_after.seen == chunks:
                raise Killed
        kill_after.seen = 0
        return on_chunk

    with pytest.raises(Killed):
        jn.neuron_information(big, big_labels, checkpoint=tmp_path, on_chunk=kill_after(11 * passes), **args)
    assert list(tmp_path.glob("stats-*.npz"))
    read = []
    resumed = jn.neuron_information(big, big_labels, checkpoint=tmp_path, on_chunk=read.append, **args)
    assert 0 < sum(read) < 900 * passes  # some chunks came from the checkpoint
    np.testing.assert_array_equal(resumed.counts, whole.counts)
    np.testing.assert_array_equal(resumed.class_means, whole.class_means)
    read = []
    again = jn.neuron_information(big, big_labels, checkpoint=tmp_path, on_chunk=read.append, **args)
    assert read == []  # every pass finished: read back without a pass
    np.testing.assert_array_equal(again.counts, whole.counts)
    segment = jn.neuron_information(big, big_labels, **{**args, "counting": "segment"}, checkpoint=tmp_path)
    np.testing.assert_array_equal(segment.counts, whole.counts)  # its own checkpoint files, not the host's


def test_host_nan_report_names_layer_and_caller_row(rng, tmp_path):
    acts = {"m": {"l1": rng.random((60, 2)).astype(np.float32), "l2": rng.random((60, 3)).astype(np.float32)}}
    labels = np.arange(60) % 2
    valid = np.ones(60, bool)
    valid[[5, 20]] = False
    acts["m"]["l2"][5, 1] = np.nan  # an invalid row: ignored
    acts["m"]["l2"][41, 2] = np.inf
    for quantize in ("threshold", "quantile"):
        with pytest.raises(jn.JNeuronError, match="model 'm', layer 'l2'.*row 42, neuron"):
            jn.neuron_information(acts, labels, valid=valid, quantize=quantize, bins=3, chunk_tokens=16,
                                  counting="host")
    with pytest.raises(jn.JNeuronError, match="counting='host'"):
        jn.neuron_information(acts, labels, counting="host", devices=1)
    with pytest.raises(jn.JNeuronError, match="marked invalid"):
        jn.neuron_information(acts["m"]["l1"], labels, valid=np.zeros(60, bool), classes=2, counting="host")


def test_host_is_the_cpu_default_unless_sharded(rng, monkeypatch):
    x, labels = nasty(rng, 300, 5), rng.integers(0, 3, 300)
    calls = []
    chunk_tables = cpu_counts.chunk_tables
    monkeypatch.setattr(cpu_counts, "chunk_tables", lambda *a, **k: calls.append(1) or chunk_tables(*a, **k))
    default = jn.neuron_information(x, labels, chunk_tokens=128)
    assert len(calls) == 3  # three chunks counted on the host
    sharded = jn.neuron_information(x, labels, chunk_tokens=128, devices=1)
    assert len(calls) == 3  # sharded: the compiled segment sums
    np.testing.assert_array_equal(default.counts, sharded.counts)
