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

import jax
import jax.numpy as jnp
import numpy as np

from jneuron.data.checks import as_2d
from jneuron.data.source import float_dtype
from jneuron.errors import JNeuronError
from jneuron.kernels import probe as kp
from jneuron.precision import follow_dtype
from jneuron.results import NeuronIndex, Ranking

_class_sums = jax.jit(kp.class_sums, static_argnames=("classes",))


@dataclass(frozen=True)
class Probeless:
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


def _chunks(data, labels, chunk_tokens: int):
    """The non-empty ``(activations, labels)`` chunks, checked, each with the index of its first row."""
    if labels is None:
        pairs = data
    else:
        acts = as_2d(data, "activations")
        values = np.asarray(labels)
        if values.ndim != 1 or len(values) != acts.shape[0]:
            raise JNeuronError(f"labels: expected {acts.shape[0]} labels (one per activation row), "
                               f"got shape {values.shape}")
        pairs = ((acts[start:start + chunk_tokens], values[start:start + chunk_tokens])
                 for start in range(0, acts.shape[0], chunk_tokens))
    seen = 0
    for x, y in pairs:
        x = as_2d(x, "activations chunk")
        y = np.asarray(y)
        if y.dtype.kind == "O":
            y = y.astype(str)
        if y.ndim != 1 or len(y) != x.shape[0]:
            raise JNeuronError(f"labels chunk at token {seen}: expected {x.shape[0]} labels, got shape {y.shape}")
        if len(y):
            yield x, y, seen
            seen += len(y)


def class_means(data, labels=None, *, chunk_tokens: int = 16384):
    """Per-class token counts and mean activations (float64), in one streamed pass.

    The sums run in the activations' precision (float64 for float64 input, see :mod:`jneuron.precision`;
    else float32) about a per-neuron shift, the first chunk's mean rounded to that precision, which is
    added back exactly: offsets cost no digits.

    Args:
      data: activations ``(tokens, neurons)`` with ``labels``, or (``labels=None``) an iterable of
        ``(activations_chunk, labels_chunk)`` pairs.
      labels: one label per activation row (strings or integers), or None.
      chunk_tokens: rows summed per compiled step when ``data`` is one array.

    Returns:
      ``(classes, counts, means)``: sorted label values, tokens per class, ``(classes, neurons)`` means.

    >>> x = np.array([[1e4 + 1.0], [1e4 + 3.0], [1e4 - 2.0]], np.float32)
    >>> classes, counts, means = class_means(x, ["a", "a", "b"])
    >>> classes.tolist(), counts.tolist(), means[:, 0].tolist()
    (['a', 'b'], [2, 1], [10002.0, 9998.0])
    """
    chunks = _chunks(data, labels, chunk_tokens)
    first = next(chunks, None)
    if first is None:
        raise JNeuronError("activations: no tokens")
    with follow_dtype(float_dtype(first[0].dtype)) as dtype:
        sums, counts, shift = _class_sums_pass(itertools.chain([first], chunks), dtype)
    classes = np.array(sorted(counts))
    count = np.array([counts[c] for c in classes.tolist()], np.int64)
    means = np.stack([sums[c] for c in classes.tolist()]) / count[:, None] + shift[None, :]
    return classes, count, means


def _class_sums_pass(chunks, dtype: np.dtype) -> tuple[dict, dict, np.ndarray]:
    """Host float64 sums of ``x - shift`` and token counts per label, and ``shift`` (exactly the value
    subtracted on the device: the first chunk's mean rounded to ``dtype``)."""
    sums: dict = {}
    counts: dict = {}
    shift = None
    for x, y, seen in chunks:
        chunk = np.asarray(x, dtype)
        bad = ~np.isfinite(chunk)
        if bad.any():
            row, column = np.argwhere(bad)[0]
            raise JNeuronError(f"activations: NaN or Inf at row {seen + row}, neuron {column}")
        if shift is None:
            shift = chunk.mean(axis=0, dtype=np.float64).astype(dtype)
        elif chunk.shape[1] != len(shift):
            raise JNeuronError(f"activations chunk at token {seen}: {chunk.shape[1]} neurons, expected {len(shift)}")
        present, local = np.unique(y, return_inverse=True)
        slots = 1 << max(0, int(len(present) - 1).bit_length())  # few shapes, few compilations
        rows = 1 << max(0, int(len(y) - 1).bit_length())
        padded = np.zeros((rows, chunk.shape[1]), dtype)
        padded[: len(y)] = chunk
        ids = np.zeros(rows, np.int32)
        ids[: len(y)] = local
        valid = np.zeros(rows, dtype)
        valid[: len(y)] = 1
        part, _ = _class_sums(jnp.asarray(padded), jnp.asarray(ids), jnp.asarray(valid), jnp.asarray(shift),
                              classes=slots)
        part = np.asarray(part, np.float64)
        for slot, label in enumerate(present.tolist()):
            sums[label] = sums.get(label, 0.0) + part[slot]
            counts[label] = counts.get(label, 0) + int(np.sum(local == slot))
    return sums, counts, shift.astype(np.float64)


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


def probeless(data, labels=None, *, chunk_tokens: int = 16384, neurons: NeuronIndex | None = None) -> Probeless:
    """Rank neurons by how far apart the class means are, overall and per class (higher first, ties by index).

    Args:
      data: activations ``(tokens, neurons)`` with ``labels`` (strings or integers), or an iterable of
        ``(activations_chunk, labels_chunk)`` pairs (streamed; ``labels=None``).
      neurons: identity of the columns (default: one model ``"model"``).
    """
    classes, counts, means = class_means(data, labels, chunk_tokens=chunk_tokens)
    if len(classes) < 2:
        raise JNeuronError(f"labels: probeless ranking needs at least 2 classes, got {classes.tolist()}")
    neurons = neurons if neurons is not None else NeuronIndex.from_widths(("model",), (means.shape[1],))
    if len(neurons) != means.shape[1]:
        raise JNeuronError(f"neurons: the index names {len(neurons)} neurons, the activations have {means.shape[1]}")
    overall, per_class = pairwise_distance_sums(means)
    return Probeless(
        classes, counts, means, Ranking("probeless", overall, neurons),
        {c: Ranking(f"probeless[{c}]", per_class[i], neurons) for i, c in enumerate(classes.tolist())})
