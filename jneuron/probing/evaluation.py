"""A probe's evaluation through the one streamed pass: confusion counts of every chunk's valid rows.

The labels travel beside the rows as a class-id column (:func:`jneuron.probing.probeless.labelled_source`);
each chunk adds its ``(gold, predicted)`` table, so arrays, sources and chunks of any size, sharded and
resumable, give the same integer counts as an in-memory evaluation.

>>> import numpy as np, jneuron as jn
>>> x = np.array([[1.0], [-1.0], [2.0], [-3.0]]); labels = np.array(["a", "b", "a", "a"])
>>> probe = jn.train_probe(x, labels, epochs=20)
>>> evaluation_counts(probe, x, labels, chunk_tokens=3).tolist()
[[3, 1], [2, 0], [3, 1]]
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from jneuron import config
from jneuron.data.checks import check_valid
from jneuron.data.labels import label_values
from jneuron.data.source import Rows, is_source, as_source, item_parts, source_rows
from jneuron.errors import JNeuronError
from jneuron.kernels import information as kinfo
from jneuron.kernels import probe as kp
from jneuron.kernels import sharded as ksharded
from jneuron.kernels.moments import count_dtype
from jneuron.precision import follow_dtype
from jneuron.probing.probeless import STREAMED_CLASSES, labelled_source
from jneuron.streaming.mesh import resolve_mesh
from jneuron.streaming.passes import chunk_callback, on_host, raise_on_bad_value, run_pass


def evaluation_counts(probe, x, labels=None, *, chunk_tokens: int | None = None, valid=None, devices=None,
                      mesh=None, checkpoint=None, progress: bool = False, on_chunk=None) -> np.ndarray:
    """``(3, classes)`` counts (gold tokens, correct, predicted per class) of a classification probe over
    the valid rows of ``x``, in one streamed pass (the keywords as for :meth:`jneuron.Probe.evaluate`)."""
    classes = probe.classes
    width = probe.weight.shape[1]
    data, labels = _encoded(x, labels, lambda *a: _ids(*a, classes), chunk_tokens, valid)
    rows = chunk_tokens or config.PROBE_EVALUATION_TOKENS
    source, _, values, rows = labelled_source(data, labels, None, rows, valid if hasattr(data, "shape") else None)
    if source.widths[0] != width:
        raise JNeuronError(f"activations: the probe has {width} neurons, the input has {source.widths[0]} columns")
    mesh = resolve_mesh(devices, mesh)
    capacity = len(values) if values is not None else STREAMED_CLASSES
    with follow_dtype(source.dtype) as dtype:
        params = (jnp.asarray(probe.weight, dtype)[None], jnp.asarray(probe.bias, dtype)[None])
        reduction = _reduction(width, capacity, len(classes))
        key = {"statistic": "probe_confusion", "classes": len(classes), "capacity": capacity,
               "probe": _fingerprint(probe)}
        done = run_pass(source, reduction, rows, mesh=mesh, args=params, checkpoint=checkpoint, key=key,
                        on_chunk=chunk_callback(progress, on_chunk, getattr(source, "tokens", None)))
        table, bad_row, bad_col = on_host(done.state, mesh)
    raise_on_bad_value(int(bad_row), int(bad_col), source, done.position)
    seen = np.asarray(values if values is not None else source.labels_seen(), np.int64)
    table = np.asarray(table, np.int64)[: len(seen)]  # rows: gold classes (as seen), columns: predicted
    gold, hit = np.zeros(len(classes), np.int64), np.zeros(len(classes), np.int64)
    np.add.at(gold, seen, table.sum(axis=1))
    np.add.at(hit, seen, table[np.arange(len(seen)), seen])
    return np.stack([gold, hit, table.sum(axis=0)])


def squared_errors(probe, x, targets=None, *, chunk_tokens: int | None = None, valid=None, devices=None,
                   mesh=None, checkpoint=None, progress: bool = False, on_chunk=None) -> tuple[int, float, float]:
    """``(tokens, sum of squared errors, sum of squared deviations of the targets from their mean)`` of a
    regression probe over the valid rows of ``x``, in one streamed pass (the keywords as for
    :meth:`jneuron.Probe.evaluate`). The deviations are summed about the first valid target (offsets
    cost no digits)."""
    width = probe.weight.shape[1]
    data, targets = _encoded(x, targets, _targets, chunk_tokens, valid)
    rows = chunk_tokens or config.PROBE_EVALUATION_TOKENS
    if hasattr(data, "shape"):
        source = as_source({"activations": data, TARGET: targets[:, None]}, valid=valid)
    else:
        source = as_source(lambda: (Rows((x.parts if isinstance(x, Rows) else x, y[:, None]),
                                         x.valid if isinstance(x, Rows) else None) for x, y in _pairs(data)),
                           names=["activations", TARGET])
    if source.widths[0] != width:
        raise JNeuronError(f"activations: the probe has {width} neurons, the input has {source.widths[0]} columns")
    mesh = resolve_mesh(devices, mesh)
    shift = _first_target(source, rows)
    with follow_dtype(source.dtype) as dtype:
        args = (jnp.asarray(probe.weight, dtype)[None], jnp.asarray(probe.bias, dtype)[None],
                jnp.asarray(shift, dtype))
        key = {"statistic": "probe_squared_error", "probe": _fingerprint(probe), "shift": shift}
        done = run_pass(source, _regression(width, np.dtype(dtype)), rows, mesh=mesh, args=args,
                        checkpoint=checkpoint, key=key,
                        on_chunk=chunk_callback(progress, on_chunk, getattr(source, "tokens", None)))
        sums, bad_row, bad_col = on_host(done.state, mesh)
    raise_on_bad_value(int(bad_row), int(bad_col), source, done.position)
    tokens, sse, deviation, squares = (float(v) for v in np.asarray(sums, np.float64))
    if tokens == 0:
        raise JNeuronError("activations: no valid rows to evaluate")
    return int(round(tokens)), sse, max(squares - deviation**2 / max(tokens, 1), 0.0)


TARGET = "target"  # the column of regression targets that travels beside the activations


def _first_target(source, rows: int) -> float:
    """The first chunk's first valid target (0 where it has none): the shift the target sums are taken about.
    A chunk iterator's first item is read from the source, which keeps it for the pass."""
    first = source.first if getattr(source, "first", None) is not None else next(source_rows(source, rows))
    target = np.asarray(item_parts(first)[-1])[:, -1]  # the last column of the last part
    valid = first.valid if isinstance(first, Rows) else None
    inside = np.flatnonzero(np.ones(len(target), bool) if valid is None else np.asarray(valid, bool))
    return float(target[inside[0]]) if len(inside) else 0.0


def _pairs(data):
    return data() if callable(data) else data


def _targets(values: np.ndarray, mask, start: int) -> np.ndarray:
    """Real targets as float64 (rows outside ``mask`` are not read); errors count rows from ``start``."""
    if values.dtype.kind not in "fiub":
        raise JNeuronError(f"targets: a regression probe needs real numbers, got dtype {values.dtype}")
    values = values.astype(np.float64)
    if mask is not None:
        values = np.where(np.asarray(mask, bool), values, 0.0)
    if not np.all(np.isfinite(values)):
        raise JNeuronError(f"targets: row {start + int(np.flatnonzero(~np.isfinite(values))[0]) + 1} (counted from 1) is NaN or infinite")
    return values


def _encoded(x, labels, encode, chunk_tokens, valid):
    """``(data, labels)`` for :func:`labelled_source`: an array with its labels encoded, or
    ``(rows, encoded labels)`` chunks of a source or of given pairs. ``encode(values, mask, first row)``
    encodes one chunk's labels (the labels of rows outside ``mask`` are never read)."""
    if hasattr(x, "shape") and not is_source(x):
        tokens = np.shape(x)[0]
        mask = None if valid is None else check_valid(valid, tokens)
        return x, encode(label_values(labels, "labels", tokens), mask, 0)
    if is_source(x):
        if labels is None:
            raise JNeuronError("labels: give one label per row of the source")
        source = x.with_valid(valid) if valid is not None else x
        values = label_values(labels, "labels")
        rows = chunk_tokens or config.PROBE_EVALUATION_TOKENS

        def pairs():
            start = 0
            for chunk in source_rows(source, rows):
                part = values[start:start + len(chunk.parts)]
                if len(part) != len(chunk.parts):
                    raise JNeuronError(f"labels: {len(values)} labels, the source has more rows")
                yield Rows(chunk.parts, chunk.valid), encode(part, chunk.valid, start)
                start += len(chunk.parts)
            if start != len(values):
                raise JNeuronError(f"labels: {len(values)} labels for {start} rows of the source")

        return pairs, None
    if labels is not None:
        raise JNeuronError("labels: chunks carry their own labels, as (activations, labels) pairs")
    if valid is not None:
        raise JNeuronError("valid=: give each chunk's mask with its activations, as (Rows(x, valid), labels)")
    return _encoded_pairs(x, encode), None


def _encoded_pairs(data, encode):
    """``(activations, labels)`` pairs with the labels encoded (re-iterable where ``data`` is)."""
    def encoded(items):
        start = 0
        for item in items:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise JNeuronError("expected (activations, labels) pairs")
            x, y = item
            y = label_values(y, f"labels chunk at token {start}")
            yield x, encode(y, x.valid if isinstance(x, Rows) else None, start)
            start += len(y)

    if isinstance(data, (list, tuple)) or callable(data):
        make = (lambda: iter(data)) if isinstance(data, (list, tuple)) else data
        return lambda: encoded(make())
    return encoded(iter(data))


def _ids(values: np.ndarray, mask, start: int, classes: np.ndarray) -> np.ndarray:
    """Every label's row in ``classes`` (rows outside ``mask`` are not read); errors count rows from ``start``."""
    from jneuron.probing.probe import encode_labels

    if mask is not None and len(classes):
        values = np.where(np.asarray(mask, bool), values, classes[0])
    try:
        return encode_labels(values, classes, len(values))
    except JNeuronError as error:
        raise JNeuronError(f"{error} (chunk from row {start + 1}, counted from 1)") from None


@lru_cache(maxsize=16)
def _regression(width: int, dtype: np.dtype) -> ksharded.Reduction:
    """Counted rows, squared errors, and sums of targets and squared targets about ``shift``, of a chunk's
    valid rows, with its first non-finite value."""

    def chunk(columns, n_valid, row0, weight, bias, shift):
        x, y = columns[:, :width], columns[:, width]
        inside = jnp.arange(columns.shape[0]) < n_valid
        residual = jnp.where(inside, kp.outputs((weight, bias), jnp.where(inside[:, None], x, 0), None)[:, 0, 0] - y, 0)
        deviation = jnp.where(inside, y - shift, 0)
        sums = jnp.stack([jnp.sum(inside.astype(x.dtype)), jnp.sum(residual**2), jnp.sum(deviation),
                          jnp.sum(deviation**2)])
        none = jnp.full_like(jnp.asarray(row0, count_dtype()), -1)
        row, col = jax.lax.cond(jnp.all(jnp.isfinite(columns) | ~inside[:, None]), lambda: (none, none),
                                lambda: kinfo.first_bad(columns, n_valid, row0))
        return sums, row, col

    def init():
        none = jnp.asarray(-1, count_dtype())
        return jnp.zeros(4, dtype), none, none

    return ksharded.Reduction(init, chunk, _merge)


def _merge(a, b):
    """Two chunks' statistics added; the first bad value is the one with the lower row."""
    take_a = (a[1] >= 0) & ((b[1] < 0) | (a[1] <= b[1]))
    return a[0] + b[0], jnp.where(take_a, a[1], b[1]), jnp.where(take_a, a[2], b[2])


def _fingerprint(probe) -> str:
    """A digest of the probe's weights and bias: a checkpoint resumes only the same probe's counts."""
    digest = hashlib.sha256(np.ascontiguousarray(probe.weight, np.float64).tobytes())
    digest.update(np.ascontiguousarray(probe.bias, np.float64).tobytes())
    return digest.hexdigest()


@lru_cache(maxsize=16)
def _reduction(width: int, capacity: int, classes: int) -> ksharded.Reduction:
    """The ``(gold as seen, predicted)`` counts of a chunk's valid rows, and its first non-finite value."""

    def chunk(columns, n_valid, row0, weight, bias):
        x, gold = columns[:, :width], columns[:, width].astype(jnp.int32)
        inside = (jnp.arange(columns.shape[0]) < n_valid).astype(jnp.int32)
        predicted = jnp.argmax(kp.outputs((weight, bias), jnp.where(jnp.isfinite(x), x, 0), None)[:, 0], axis=1)
        table = jnp.einsum("tg,tp->gp", jax.nn.one_hot(gold, capacity, dtype=jnp.int32) * inside[:, None],
                           jax.nn.one_hot(predicted, classes, dtype=jnp.int32))
        none = jnp.full_like(jnp.asarray(row0, count_dtype()), -1)
        row, col = jax.lax.cond(jnp.all(jnp.isfinite(x) | (inside[:, None] == 0)), lambda: (none, none),
                                lambda: kinfo.first_bad(x, n_valid, row0))
        return table, row, col

    def init():
        none = jnp.asarray(-1, count_dtype())
        return jnp.zeros((capacity, classes), jnp.int32), none, none

    return ksharded.Reduction(init, chunk, _merge)
