"""Probeless neuron ranking (Antverg & Belinkov, ICLR 2022): no probe, only class-mean activations.

A neuron's overall score is the sum over pairs of classes of ``|mean_c - mean_c'|``; its score for one class
``c`` is the sum over the other classes of ``|mean_c - mean_c'|`` (NeuroX ``probeless``). The class means
come from one streamed pass of per-class sums, so the data never has to fit in memory.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y = rng.integers(0, 3, 900); x = rng.normal(size=(900, 5)).astype(np.float32); x[:, 4] += 2.0 * y
>>> result = probeless(x, y)
>>> int(result.overall.order[0]), int(result.per_class[2].order[0])
(4, 4)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from jneuron.data.checks import as_2d, check_valid
from jneuron.data.labelled import LABELS, LabelledSource, activation_source
from jneuron.data.labels import label_values
from jneuron.data.source import (
    Rows,
    float_dtype,
    reads_dtype,
    requested_dtype,
    source_rows,
)
from jneuron.errors import JNeuronError
from jneuron.kernels import compensated as comp
from jneuron.kernels import information as kinfo
from jneuron.kernels import probe as kp
from jneuron.kernels import sharded as ksharded
from jneuron.precision import follow_dtype
from jneuron.results import NeuronIndex, Ranking, Result, to_plain
from jneuron.streaming.constant import constant_neurons, warn_constant, with_range
from jneuron.streaming.mesh import resolve_mesh
from jneuron.streaming.passes import chunk_callback, on_host, raise_on_bad_value, run_pass


@dataclass(frozen=True)
class Probeless(Result):
    """Class means and the rankings built from them.

    Attributes:
      classes: label values, sorted. counts: tokens per class. means: ``(classes, neurons)`` float64.
      overall: neurons by the summed pairwise distance of class means (higher first).
      per_class: class label -> neurons by the summed distance of that class's mean to the others.
    """

    classes: np.ndarray
    counts: np.ndarray
    means: np.ndarray
    overall: Ranking
    per_class: dict

    @property
    def neurons(self) -> NeuronIndex:
        """The identity of every neuron (the columns of ``means``)."""
        return self.overall.neurons

    @property
    def dead(self) -> np.ndarray:
        """Constant neurons (:mod:`jneuron.streaming.constant`): score 0, ranked last."""
        return self.overall.dead

    def to_dict(self) -> dict:
        """Classes, counts, means and every ranking, as JSON-ready plain Python."""
        return {"classes": to_plain(self.classes), "counts": to_plain(self.counts), "means": to_plain(self.means),
                "neurons": self.neurons.records(), "overall": self.overall.to_dict(),
                "per_class": {str(c): r.to_dict() for c, r in self.per_class.items()}}


STREAMED_CLASSES = 1024  # distinct labels a stream of (activations, labels) chunks may hold (the tables' width)


def class_means(data, labels=None, *, names=None, chunk_tokens: int = 16384, valid=None, devices=None, mesh=None,
                checkpoint=None, progress: bool = False, on_chunk=None):
    """Per-class token counts and mean activations (float64), in one streamed pass (the one pass of
    :func:`jneuron.streaming.passes.run_pass`: sharded, resumable, with progress).

    The sums run in the activations' precision (float64 for float64 input, see :mod:`jneuron.precision`;
    else float32 with compensated sums) about a per-neuron shift, the first chunk's mean rounded to that
    precision, which is added back exactly: offsets cost no digits.

    Args:
      data: activations ``(tokens, neurons)`` (or models: a sequence or mapping of arrays, a mapping of
        model to layer to array) with ``labels``, or (``labels=None``) an iterable of
        ``(activations_chunk, labels_chunk)`` pairs (``activations_chunk`` may be ``Rows(x, valid)``), or
        a callable returning one.
      labels: one label per activation row (strings or integers), or None.
      names: model names (default: the mapping's keys, or ``model``).
      chunk_tokens: rows summed per compiled step.
      valid: boolean ``(tokens,)`` mask of the rows that count (with array ``data``).
      devices, mesh: shard the tokens over these devices or this mesh (see :mod:`jneuron.streaming.mesh`).
      checkpoint: a folder; the running sums are saved there, and a rerun resumes from them.
      progress: draw a progress line on stderr. on_chunk: called with the rows of each chunk read.

    Returns:
      ``(classes, counts, means)``: sorted label values, tokens per class, ``(classes, neurons)`` means.

    >>> x = np.array([[1e4 + 1.0], [1e4 + 3.0], [1e4 - 2.0]], np.float32)
    >>> classes, counts, means = class_means(x, ["a", "a", "b"])
    >>> classes.tolist(), counts.tolist(), means[:, 0].tolist()
    (['a', 'b'], [2, 1], [10002.0, 9998.0])
    """
    classes, counts, means, _, _ = _class_means(data, labels, names, chunk_tokens, valid,
                                                resolve_mesh(devices, mesh), checkpoint, progress, on_chunk)
    return classes, counts, means


def _class_means(data, labels, names, chunk_tokens, valid, mesh, checkpoint, progress, on_chunk):
    source, neurons, values, rows = labelled_source(data, labels, names, chunk_tokens, valid)
    width = len(neurons)
    callback = chunk_callback(progress, on_chunk, getattr(source, "tokens", None))
    with follow_dtype(source.dtype) as dtype:
        first = _first_rows(source, rows, width)
        if not len(first):
            raise JNeuronError("activations: no tokens")
        shift = first.mean(axis=0).astype(dtype)
        capacity = len(values) if values is not None else STREAMED_CLASSES
        counting = "segment" if jax.default_backend() == "cpu" else "contract"
        reduction = with_range(_reduction(width, capacity, jnp.dtype(dtype), counting), width, jnp.dtype(dtype))
        key = {"statistic": "class_sums", "classes": capacity, "shift": np.asarray(shift, np.float64).tolist()}
        done = run_pass(source, reduction, rows, mesh=mesh, args=(jnp.asarray(shift),),
                        on_chunk=callback, checkpoint=checkpoint, key=key)
        ranged = on_host(done.state, mesh)
        total = ranged.state
        raise_on_bad_value(int(total.bad_row), int(total.bad_col), source, done.position)
    counts = np.asarray(total.counts, np.int64)[0].sum(axis=0)
    sums = comp.value64(total.sums).T
    labels_seen = values if values is not None else source.labels_seen()
    present = np.flatnonzero(counts[: len(labels_seen)])
    order = np.argsort(np.asarray(labels_seen)[present], kind="stable")
    keep = present[order]
    classes = np.asarray(labels_seen)[keep]
    count = counts[keep]
    means = sums[keep] / count[:, None] + np.asarray(shift, np.float64)[None, :]
    return classes, count, means, neurons, np.flatnonzero(constant_neurons(ranged.low, ranged.high, dtype))


@lru_cache(maxsize=16)
def _reduction(width: int, classes: int, dtype, counting: str) -> ksharded.Reduction:
    """Per-class sums of ``x - shift`` and token counts (:func:`jneuron.kernels.probe.class_sums`) as a
    reduction of the one pass."""

    def chunk(columns, n_valid, row0, shift):
        x, ids = columns[:, :width], columns[:, width].astype(jnp.int32)
        return kp.class_sums(x, ids, n_valid, row0, shift, classes=classes, method=counting)

    def init():
        empty = kinfo.init(width, 1, classes, dtype)
        return empty._replace(counts=empty.counts[:1])

    return ksharded.Reduction(init, chunk, kinfo.merge)


def _first_rows(source, rows: int, width: int) -> np.ndarray:
    """The valid rows of the first chunk (float64, without the labels): the shift is their mean."""
    first = source.first_rows(rows) if hasattr(source, "first_rows") else next(source_rows(source, rows))
    values = np.asarray(first.parts[:, :width], np.float64)
    return values if first.valid is None else values[first.valid]


def labelled_source(data, labels, names, chunk_tokens: int, valid):
    """The activations with class ids as one more column, the neurons, the sorted label values (None
    when they come with the chunks) and the rows per chunk."""
    if labels is not None:
        source, neurons = activation_source(data, names, valid, lone_name="model")
        tokens, mask = source.tokens, source.valid
        values = label_values(labels, "labels", tokens)
        classes = np.unique(values if mask is None else values[mask])
        ids = np.searchsorted(classes, values) if len(classes) else np.zeros(tokens, np.int64)
        if mask is not None:
            ids = np.where(mask, ids, 0)
        return LabelledSource(source, ids), neurons, classes, max(1, min(chunk_tokens, tokens))
    if valid is not None:
        raise JNeuronError("valid=: give each chunk's mask with its activations, as (Rows(x, valid), y)")
    source = _LabelledChunks(data, names)
    return source, source.neurons, None, chunk_tokens


class _LabelledChunks:
    """``(activations, labels)`` chunks as a source: labels become class ids in order of first appearance
    (at most :data:`STREAMED_CLASSES`), carried as one more column."""

    def __init__(self, data, names):
        if isinstance(data, (list, tuple)):
            self._make, self.reiterable = (lambda: iter(data)), True
        elif callable(data):
            self._make, self.reiterable = data, True
        else:
            once = iter(data)
            self._make, self.reiterable = (lambda: once), False
        self._pending: list = []
        self._ids: dict = {}
        items = iter(self._make())
        first = next(_nonempty(items), None)
        if first is None:
            raise JNeuronError("activations: no tokens")
        self._pending = [(first, items)]
        x = first[0].parts if isinstance(first[0], Rows) else first[0]
        width = as_2d(x, "activations chunk").shape[1]
        model = (list(names) if names is not None else ["model"])[0]
        self.neurons = NeuronIndex.from_widths((model,), (width,))
        self.names = (model, LABELS)
        self.widths = (width, 1)
        self.dtype = requested_dtype(float_dtype(np.asarray(x).dtype))
        self.tokens = None

    def labels_seen(self) -> list:
        return list(self._ids)

    def first_rows(self, rows: int) -> Rows:
        (x, y), _ = self._pending[0] if self._pending else (next(_nonempty(iter(self._make()))), None)
        return self._rows(x, y, 0)

    def rows(self, chunk_tokens: int):
        if self._pending:
            first, rest = self._pending.pop()
            items = itertools.chain([first], rest)
        else:
            items = _nonempty(iter(self._make()))
        self._ids.clear()
        seen = 0
        for x, y in items:
            rows = self._rows(x, y, seen)
            seen += len(rows.parts)
            for start in range(0, len(rows.parts), chunk_tokens):
                yield Rows(rows.parts[start:start + chunk_tokens],
                           None if rows.valid is None else rows.valid[start:start + chunk_tokens])

    def chunks(self, chunk_tokens: int):
        for rows in self.rows(chunk_tokens):
            yield rows.parts

    def _rows(self, x, y, seen: int) -> Rows:
        mask = x.valid if isinstance(x, Rows) else None
        x = as_2d(x.parts if isinstance(x, Rows) else x, "activations chunk")
        if x.shape[1] != self.widths[0]:
            raise JNeuronError(f"activations chunk at token {seen}: {x.shape[1]} neurons, expected {self.widths[0]}")
        y = label_values(y, f"labels chunk at token {seen}", x.shape[0])
        ids = np.empty(len(y), np.int64)
        for i, label in enumerate(y.tolist()):
            ids[i] = self._ids.setdefault(label, len(self._ids))
        if len(self._ids) > STREAMED_CLASSES:
            raise JNeuronError(f"labels: more than {STREAMED_CLASSES} distinct labels in the chunks")
        values = np.concatenate([np.asarray(x, self.dtype), ids.astype(self.dtype)[:, None]], axis=1)
        return Rows(values, None if mask is None else check_valid(mask, len(y), f"chunk at token {seen}: valid"))


def _nonempty(items):
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise JNeuronError("expected (activations, labels) pairs")
        if len(item[1]):
            yield item


def pairwise_distance_sums(means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sum_{c<c'} |m_c - m_c'|`` per neuron and ``sum_{c'} |m_c - m_c'|`` per class and neuron, by sorting
    the class means of each neuron (``O(C log C)`` per neuron instead of ``O(C^2)``)."""
    order = np.argsort(means, axis=0, kind="stable")
    ranked = np.take_along_axis(means, order, axis=0)
    count = means.shape[0]
    k = np.arange(count, dtype=np.float64)[:, None]
    prefix = np.cumsum(ranked, axis=0) - ranked  # sum of the smaller means
    suffix = ranked.sum(axis=0, keepdims=True) - prefix - ranked  # sum of the larger means
    per_sorted = (k * ranked - prefix) + (suffix - (count - 1 - k) * ranked)
    per_class = np.empty_like(per_sorted)
    np.put_along_axis(per_class, order, per_sorted, axis=0)
    return per_class.sum(axis=0) / 2, per_class


@reads_dtype
def probeless(data, labels=None, *, names=None, chunk_tokens: int = 16384, valid=None, devices=None, mesh=None,
              checkpoint=None, progress: bool = False, on_chunk=None) -> Probeless:
    """Rank neurons by how far apart the class means are, overall and per class (higher first, ties by index).

    Args:
      data: activations ``(tokens, neurons)`` (or several models, see :func:`class_means`) with ``labels``
        (strings or integers), or an iterable of ``(activations_chunk, labels_chunk)`` pairs (streamed;
        ``labels=None``).
      labels: one label per row, or None.
      names: model names (default: the mapping's keys, or ``model``), or a :class:`~jneuron.NeuronIndex`
        naming every column (as :func:`jneuron.train_probe` takes it).
      chunk_tokens, valid, devices, mesh, checkpoint, progress, on_chunk: the one pass's keywords (see
        :func:`class_means`).
    """
    index = names if isinstance(names, NeuronIndex) else None
    classes, counts, means, neurons, dead = _class_means(data, labels, None if index else names, chunk_tokens,
                                                         valid, resolve_mesh(devices, mesh), checkpoint, progress,
                                                         on_chunk)
    if index is not None:
        if len(index) != len(neurons):
            raise JNeuronError(f"names: the index names {len(index)} neurons, the activations have {len(neurons)}")
        neurons = index
    if len(classes) < 2:
        raise JNeuronError(f"labels: probeless ranking needs at least 2 classes, got {classes.tolist()}")
    overall, per_class = pairwise_distance_sums(means)
    overall[dead], per_class[:, dead] = 0.0, 0.0  # rounding-level differences of a constant neuron's means
    warn_constant("probeless", [neurons.label(int(i)) for i in dead], "score 0", 3)
    return Probeless(
        classes, counts, means, Ranking("probeless", overall, neurons, dead=dead),
        {c: Ranking(f"probeless[{c}]", per_class[i], neurons, dead=dead) for i, c in enumerate(classes.tolist())})
