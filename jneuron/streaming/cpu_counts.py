"""The CPU path of the information measures' counting: joint counts and class sums by numpy on the host.

On a CPU, XLA's segment sums and one-hot contractions run far below the machine's limits (a 1,000,000 x
4,096 chunk stream with 45 classes took 10x the time of reading it). Here each chunk costs one
comparison pass per bin edge into a float buffer of 0/1 indicators and one matrix product of those
indicators with the one-hot labels through numpy's BLAS (sums of 0/1 values in float32 are exact
integers up to ``2**24`` rows, so the counts are exact), plus one product of the activations with the
one-hot labels for the class sums. Those products take ``2 n d c`` flops for ``c`` classes; from
:data:`GROUPED_CLASSES` classes on, the chunk's rows are put in class order instead (one gather) and each
class's rows are counted (``np.count_nonzero`` of the indicators) and summed: ``n d`` additions a table.

The quantizers are those of :mod:`jneuron.kernels.quantize`, written out in numpy with the same
operations in the same dtype, so the bins (and the counts) are identical. With ``bins > 2`` the products
count ``code >= b`` for ``b = 1 .. bins - 1`` (one indicator per edge, no codes array); the per-bin counts
are their differences, and bin 0 is each class's total less the rest.

>>> import numpy as np
>>> x = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6]], np.float32)
>>> counts, sums = chunk_tables(x, np.array([0, 1, 1]), 3, classes=2, mode="threshold",
...                             params=(np.float32(0.5),), bins=2)
>>> counts[0].tolist(), counts[1].tolist()     # neuron 0: class 0 has 1 token in bin 1, class 1 one in each
([[0, 1], [1, 1]], [[1, 0], [0, 2]])
>>> sums.round(2).tolist()
[[0.9, 0.9], [0.1, 1.4]]
"""

from __future__ import annotations

import numpy as np

MAX_CHUNK_ROWS = 2**24  # float32 sums of 0/1 indicators stay exact integers up to here
HISTOGRAM_BLOCK_BINS = 2**17  # histogram bins counted at once (1 MiB of int64 counts)
GROUPED_CLASSES = 8  # from this many classes on, rows grouped by class are summed instead of multiplied


def chunk_tables(x: np.ndarray, labels: np.ndarray, rows: int, *, classes: int, mode: str,
                 params: tuple, bins: int, shift: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact joint counts of (bin, class) and per-class sums of ``x - shift`` over a chunk's first ``rows`` rows.

    The same tables as :func:`jneuron.kernels.information.chunk_tables` (after its quantizer
    :func:`jneuron.kernels.quantize.apply`), computed on the host by numpy's BLAS.

    Args:
      x: activations ``(tokens, neurons)``, float32 or float64 (the dtype the products are taken in);
        rows from ``rows`` on are ignored.
      labels: integer classes ``(tokens,)``, each in ``[0, classes)``.
      rows: how many leading rows count (at most ``2**24``).
      classes: number of classes.
      mode: the quantizer: ``"threshold"`` with ``params = (value,)``, ``"uniform"`` with
        ``(low, high)``, or ``"edges"`` with ``(edges,)`` of shape ``(neurons, bins - 1)`` ascending;
        each value a scalar or per-neuron array.
      params: the quantizer's parameters (numpy or JAX arrays; they are read in ``x``'s dtype).
      bins: number of bins (2 for ``"threshold"``).
      shift: ``(neurons,)`` subtracted before the class sums (keeps the digits of data with a large
        offset), or ``None`` to sum ``x`` as it is.

    Returns:
      ``counts (neurons, bins, classes)`` int64 and ``sums (neurons, classes)`` float64. A NaN or Inf in
      the data shows as a non-finite sum (:func:`first_bad` says where).
    """
    if rows > MAX_CHUNK_ROWS:
        raise ValueError(f"chunk of {rows} rows is over {MAX_CHUNK_ROWS}: float32 counts would not be exact")
    tables = _grouped_tables if classes >= GROUPED_CLASSES else _tables
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and Inf are found by the caller, not warned about
        return tables(x, labels, rows, classes, mode, params, bins, shift)


def _grouped_tables(x, labels, rows, classes, mode, params, bins, shift):
    """:func:`_tables` with the rows grouped by class: per class and edge one count of the indicators and
    one sum of the values over the class's rows (``n d`` additions where the products take ``2 n d c`` flops)."""
    labels = np.asarray(labels[:rows])
    dtype = np.result_type(x.dtype, np.float32)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(classes + 1))
    groups = [(c, bounds[c], bounds[c + 1]) for c in range(classes) if bounds[c + 1] > bounds[c]]
    grouped = np.asarray(x[:rows][order], dtype)  # a copy of the chunk, rows in class order
    at_least = np.zeros((bins, x.shape[1], classes), np.int64)  # at_least[b]: tokens with code >= b
    at_least[0] = np.diff(bounds)[None, :]
    indicator = np.empty(grouped.shape, bool)
    for b, edge in enumerate(_edge_tests(grouped, mode, params, bins, dtype), start=1):
        edge(indicator)
        for c, start, stop in groups:
            at_least[b, :, c] = np.count_nonzero(indicator[start:stop], axis=0)
    counts = np.empty_like(at_least)
    counts[:-1] = at_least[:-1] - at_least[1:]
    counts[-1] = at_least[-1]
    if shift is not None:
        np.subtract(grouped, np.asarray(shift, dtype)[None, :], out=grouped)
    sums = np.zeros((x.shape[1], classes), np.float64)
    for c, start, stop in groups:
        sums[:, c] = grouped[start:stop].sum(axis=0)
    return counts.transpose(1, 0, 2), sums


def _tables(x, labels, rows, classes, mode, params, bins, shift):
    x, labels = x[:rows], np.asarray(labels[:rows])
    dtype = np.result_type(x.dtype, np.float32)
    x = np.asarray(x, dtype)
    onehot = np.zeros((rows, classes), dtype)
    onehot[np.arange(rows), labels] = 1
    totals = np.bincount(labels, minlength=classes)[:classes].astype(np.int64)
    indicator = np.empty_like(x)
    at_least = np.empty((bins, x.shape[1], classes), np.int64)  # at_least[b]: tokens with code >= b
    at_least[0] = totals[None, :]
    for b, edge in enumerate(_edge_tests(x, mode, params, bins, dtype), start=1):
        edge(indicator)
        at_least[b] = np.rint(indicator.T @ onehot).astype(np.int64)
    counts = np.empty_like(at_least)
    counts[:-1] = at_least[:-1] - at_least[1:]
    counts[-1] = at_least[-1]
    values = x if shift is None else np.subtract(x, np.asarray(shift, dtype)[None, :], out=indicator)
    sums = (values.T @ onehot).astype(np.float64)
    return counts.transpose(1, 0, 2), sums


def _edge_tests(x: np.ndarray, mode: str, params: tuple, bins: int, dtype):
    """For ``b = 1 .. bins - 1``, a function writing the 0/1 indicator of ``code >= b`` into a buffer."""

    def row(value):
        value = np.asarray(value, dtype)
        return value[None, :] if value.ndim == 1 else value

    if mode == "threshold":
        value = row(params[0])
        return [lambda out: np.greater(x, value, out=out)]
    if mode == "edges":
        edges = np.asarray(params[0], dtype)  # (neurons, bins - 1), ascending: code >= b iff x > edges[:, b-1]
        return [lambda out, e=edges[:, b - 1][None, :]: np.greater(x, e, out=out) for b in range(1, bins)]
    if mode == "uniform":
        scaled = _scaled(x, params[0], params[1], bins, dtype)
        return [lambda out, b=b: np.greater_equal(scaled, dtype.type(b), out=out) for b in range(1, bins)]
    raise ValueError(f"unknown quantizer mode {mode!r}")


def _scaled(x: np.ndarray, low, high, bins: int, dtype) -> np.ndarray:
    """``where(width > 0, (x - low) * (bins / width), 0)`` in ``dtype``, the operations of
    :func:`jneuron.kernels.quantize.uniform` before its floor and clip (so the bins are identical)."""
    low = np.asarray(low, dtype)
    width = np.asarray(high, dtype) - low
    low, width = (v[None, :] if v.ndim == 1 else v for v in (low, width))
    factor = dtype.type(bins) / np.where(width > 0, width, dtype.type(1))
    scaled = np.subtract(x, low, dtype=dtype)
    np.multiply(scaled, factor, out=scaled)
    flat = np.broadcast_to(width > 0, (1, x.shape[1]))[0]
    if not flat.all():
        scaled[:, ~flat] = 0
    return scaled


def minmax(x: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-neuron minimum and maximum over the first ``rows`` rows (NaN where a column holds one), as
    :func:`jneuron.kernels.quantize.minmax`."""
    with np.errstate(invalid="ignore"):
        return x[:rows].min(axis=0), x[:rows].max(axis=0)


def histogram(x: np.ndarray, rows: int, low, high, resolution: int) -> np.ndarray:
    """Per-neuron counts of ``resolution`` equal bins over ``[low, high]`` of the first ``rows`` rows, int64
    ``(neurons, resolution)``: :func:`jneuron.kernels.quantize.histogram` by ``np.bincount``, a block of
    neurons at a time (their counts stay in cache: twice as fast as one count over every neuron)."""
    dtype = np.result_type(x.dtype, np.float32)
    neurons = x.shape[1]
    low, high = (np.broadcast_to(np.asarray(v, dtype), (neurons,)) for v in (low, high))
    block = max(1, HISTOGRAM_BLOCK_BINS // resolution)
    counts = np.empty((neurons, resolution), np.int64)
    for j in range(0, neurons, block):
        part = slice(j, j + block)
        counts[part] = _histogram_block(np.asarray(x[:rows, part], dtype), low[part], high[part], resolution)
    return counts


def _histogram_block(x: np.ndarray, low: np.ndarray, high: np.ndarray, resolution: int) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):  # a NaN is reported by the counting pass
        scaled = _scaled(x, low, high, resolution, x.dtype)
        np.floor(scaled, out=scaled)
        np.clip(scaled, 0, resolution - 1, out=scaled)
        flat = scaled.astype(np.intp)
    np.clip(flat, 0, resolution - 1, out=flat)  # (a NaN's cast lands anywhere: keep it in its neuron's row)
    neurons = x.shape[1]
    flat += (np.arange(neurons, dtype=np.intp) * resolution)[None, :]
    return np.bincount(flat.ravel(), minlength=neurons * resolution).reshape(neurons, resolution)


def first_bad(x: np.ndarray, rows: int) -> tuple[int, int] | None:
    """``(row, column)`` of the first NaN or Inf among the first ``rows`` rows (row-major order), or None."""
    bad = ~np.isfinite(x[:rows])
    if not bad.any():
        return None
    flat = int(np.argmax(bad.reshape(-1)))
    return divmod(flat, x.shape[1])
