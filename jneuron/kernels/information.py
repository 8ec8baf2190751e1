"""Per-neuron information measures from exact joint counts of (quantized output, class).

Counting. For a chunk of codes ``(tokens, neurons)`` (from :mod:`jneuron.kernels.quantize`) and
integer labels, :func:`chunk_tables` returns the joint counts ``n[j, b, c]`` (tokens of class ``c`` whose
neuron ``j`` fell in bin ``b``) and the per-class sums of the raw activations. With
``method="contract"`` each is one contraction with the one-hot labels (``precision=HIGHEST``):
``onehot(labels)^T`` against the indicators of bins ``1 .. bins - 1``, and against the raw activations
(indicator sums are exact integers in float32 up to ``2**24`` tokens per chunk). With
``method="segment"`` they are integer (exact) and float segment sums over the labels. Bin 0 is the class
total minus the other bins, so 1-bit counts cost one pass. Counts are returned as integers, so
per-chunk (and per-device, ``jax.lax.psum``) tables add exactly.

Measures (all neurons at once, ``0 log 0 = 0``, in bits for ``base=2``):

- entropy ``H(T_j) = -sum_b p(b) log p(b)``;
- mutual information ``I(T_j; Y) = sum_{b,c} p(b, c) log(p(b, c) / (p(b) p(c)))``;
- KL selectivity ``max_c D(P(T_j | Y=c) || P(T_j))`` over classes that occur
  (``I = sum_c p(c) D(P(T_j | c) || P(T_j))``);
- Morcos et al.'s class selectivity index ``(mu_max - mu_-max) / (mu_max + mu_-max + eps)`` from per-class
  means of the raw activations (``mu_-max``: mean of the other occurring classes' means; ``eps``
  (default :data:`SELECTIVITY_EPS`) keeps an all-zero (dead) unit at 0 instead of 0/0).

The measures work on numpy arrays (host, e.g. float64) or JAX arrays alike.

>>> import numpy as np
>>> labels = np.array([0, 0, 1, 1])
>>> codes = np.array([[0, 1], [0, 0], [1, 1], [1, 0]])   # neuron 0 copies the label, neuron 1 does not
>>> counts = np.asarray(joint_counts(codes, labels, 4, bins=2, classes=2))
>>> counts[0].tolist(), counts[1].tolist()
([[2, 0], [0, 2]], [[1, 1], [1, 1]])
>>> mutual_information(counts.astype(float)).tolist()
[1.0, 0.0]
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jneuron.config import HIGHEST
from jneuron.kernels import compensated as comp
from jneuron.kernels import quantize
from jneuron.kernels.compensated import Pair
from jneuron.kernels.moments import count_dtype

SELECTIVITY_EPS = 1e-7
SUM_BLOCKS = 16  # segment sums of floats add this many row blocks separately (shorter rounding chains)
MAX_CHUNK_TOKENS = 2**24  # float32 sums of 0/1 indicators stay exact integers up to here


def _onehot_labels(labels: Array, n_valid: Array | int, classes: int, dtype) -> Array:
    labels = jnp.asarray(labels)
    valid = jnp.arange(labels.shape[0]) < n_valid
    return ((labels[:, None] == jnp.arange(classes, dtype=labels.dtype)[None, :]) & valid[:, None]).astype(dtype)


def _indicators(codes: Array, bins: int, dtype) -> Array:
    """``(tokens, neurons * (bins - 1))`` indicators of bins ``1 .. bins - 1``, neuron-major."""
    codes = jnp.asarray(codes)
    if bins == 2:
        return codes.astype(dtype)
    hits = codes[:, :, None] == jnp.arange(1, bins, dtype=codes.dtype)[None, None, :]
    return hits.reshape(codes.shape[0], -1).astype(dtype)


def _complete(upper: Array, class_totals: Array, neurons: int, bins: int) -> Array:
    """Joint counts ``(neurons, bins, classes)`` from ``(classes, neurons * (bins - 1))`` counts of bins ``1 ..``."""
    upper = upper.T.reshape(neurons, bins - 1, -1)
    first = class_totals[None, None, :] - jnp.sum(upper, axis=1, keepdims=True, dtype=upper.dtype)
    return jnp.concatenate([first, upper], axis=1)


def _contract(onehot: Array, columns: Array) -> Array:
    """``onehot^T @ columns``: ``(classes, columns)`` (the orientation XLA's CPU dot runs fastest)."""
    return jax.lax.dot_general(onehot, columns, (((0,), (0,)), ((), ())), precision=HIGHEST)


def joint_counts(codes: Array, labels: Array, n_valid: Array | int, *, bins: int, classes: int) -> Array:
    """Integer joint counts ``(neurons, bins, classes)`` over the first ``n_valid`` rows of a chunk."""
    onehot = _onehot_labels(labels, n_valid, classes, jnp.float32)
    upper = jnp.rint(_contract(onehot, _indicators(codes, bins, jnp.float32))).astype(jnp.int32)
    totals = jnp.rint(jnp.sum(onehot, axis=0)).astype(jnp.int32)
    return _complete(upper, totals, codes.shape[1], bins)


def chunk_tables(x: Array, codes: Array, labels: Array, n_valid: Array | int, shift: Array | None, *, bins: int,
                 classes: int, method: str = "contract") -> tuple[Array, Array]:
    """Joint counts and per-class sums of ``x - shift`` for one chunk.

    Args:
      x: raw activations ``(tokens, neurons)``; rows from ``n_valid`` on are padding.
      codes: their bins ``(tokens, neurons)``, integers in ``[0, bins)``.
      labels: integer classes ``(tokens,)`` in ``[0, classes)``.
      shift: ``(neurons,)`` subtracted before summing (a rough mean keeps float sums accurate when the
        activations carry a large offset), or ``None`` to sum ``x`` as it is (one memory pass fewer).
      method: ``"contract"``: two contractions with the one-hot labels (``precision=HIGHEST``; the fast
        path on matrix units: GPU, TPU); ``"segment"``: integer and float segment sums over the labels
        (scatter-adds, one memory pass each; the fast path on CPU). Both give the same exact counts.

    Returns:
      ``counts (neurons, bins, classes)`` int32 and ``sums (neurons, classes)`` in ``x``'s dtype.
    """
    values = x if shift is None else x - shift[None, :]
    if method == "segment":
        # padding rows go to an extra segment that is dropped
        labels = jnp.asarray(labels)
        target = jnp.where(jnp.arange(labels.shape[0]) < n_valid, labels, jnp.asarray(classes, labels.dtype))

        def segment(data):
            return jax.ops.segment_sum(data, target, num_segments=classes + 1)[:classes]

        upper = segment(_indicators(codes, bins, jnp.int32))
        totals = segment(jnp.ones(labels.shape, jnp.int32))
        # float sums: SUM_BLOCKS row blocks summed separately (short sequential sums), then added
        blocks = min(SUM_BLOCKS, labels.shape[0])
        block = -(-labels.shape[0] // blocks)
        slots = (jnp.arange(labels.shape[0], dtype=target.dtype) // block) * (classes + 1) + target
        partial_sums = jax.ops.segment_sum(values, slots, num_segments=blocks * (classes + 1))
        sums = partial_sums.reshape(blocks, classes + 1, -1)[:, :classes].sum(axis=0)
    elif method == "contract":
        onehot = _onehot_labels(labels, n_valid, classes, x.dtype)
        upper = jnp.rint(_contract(onehot, _indicators(codes, bins, x.dtype))).astype(jnp.int32)
        totals = jnp.rint(jnp.sum(onehot, axis=0)).astype(jnp.int32)
        sums = _contract(onehot, values)
    else:
        raise ValueError(f"unknown counting method {method!r}; expected 'contract' or 'segment'")
    return _complete(upper, totals, x.shape[1], bins), sums.T


def _namespace(array):
    return np if isinstance(array, np.ndarray) else jnp


def _float(counts, xp):
    """Counts as floats (host float64, or JAX's default float), so products of counts cannot overflow."""
    if xp is np:
        return np.asarray(counts, np.float64)
    return counts if jnp.issubdtype(counts.dtype, jnp.floating) else counts.astype(jnp.float32)


def _plogp_sum(p, axis, xp):
    """``sum p log p`` along ``axis`` with ``0 log 0 = 0`` (natural log)."""
    return xp.sum(p * xp.log(xp.where(p > 0, p, 1)), axis=axis)


def entropy(counts, base: float = 2.0):
    """``H(T_j)`` from joint counts ``(neurons, bins, classes)`` (or marginal counts ``(neurons, bins)``)."""
    xp = _namespace(counts)
    counts = _float(counts, xp)
    marginal = counts.sum(axis=2) if counts.ndim == 3 else counts
    p = marginal / xp.maximum(marginal.sum(axis=1, keepdims=True), 1)
    return (0.0 - _plogp_sum(p, 1, xp)) / math.log(base)


def label_entropy(counts, base: float = 2.0):
    """``H(Y)`` of the labels behind joint counts ``(neurons, bins, classes)`` (one value)."""
    xp = _namespace(counts)
    counts = _float(counts, xp)
    classes = counts[0].sum(axis=0)
    p = classes / xp.maximum(classes.sum(), 1)
    return (0.0 - _plogp_sum(p, 0, xp)) / math.log(base)


def kl_per_class(counts, base: float = 2.0):
    """``D(P(T_j | Y=c) || P(T_j))`` per neuron and class ``(neurons, classes)``; 0 for absent classes."""
    xp = _namespace(counts)
    counts = _float(counts, xp)
    marginal = counts.sum(axis=2, keepdims=True)  # (neurons, bins, 1)
    per_class = counts.sum(axis=1, keepdims=True)  # (neurons, 1, classes)
    total = xp.maximum(marginal.sum(axis=1, keepdims=True), 1)
    p_given = counts / xp.maximum(per_class, 1)
    ratio = xp.where(counts > 0, p_given * total / xp.maximum(marginal, 1), 1)
    return xp.sum(p_given * xp.log(ratio), axis=1) / math.log(base)


def kl_selectivity(counts, base: float = 2.0):
    """``max_c D(P(T_j | Y=c) || P(T_j))`` over the classes that occur."""
    xp = _namespace(counts)
    counts = _float(counts, xp)
    present = counts[0].sum(axis=0) > 0
    return xp.max(xp.where(present[None, :], kl_per_class(counts, base), -xp.inf), axis=1)


def mutual_information(counts, base: float = 2.0):
    """``I(T_j; Y)`` from joint counts ``(neurons, bins, classes)``, by the direct sum (no ``H - H`` cancellation)."""
    xp = _namespace(counts)
    counts = _float(counts, xp)
    marginal = counts.sum(axis=2, keepdims=True)
    per_class = counts.sum(axis=1, keepdims=True)
    total = xp.maximum(marginal.sum(axis=1, keepdims=True), 1)
    ratio = xp.where(counts > 0, counts * total / xp.maximum(marginal * per_class, 1), 1)
    return xp.sum(counts / total * xp.log(ratio), axis=(1, 2)) / math.log(base)


def class_selectivity(class_means, class_counts, eps: float = SELECTIVITY_EPS):
    """Morcos et al.'s index per neuron from ``class_means (neurons, classes)`` over occurring classes.

    ``class_counts (classes,)`` marks which classes occur (at least two must). The index is meant for
    non-negative outputs (ReLU, sigmoid), where it lies in ``[0, 1]``.
    """
    xp = _namespace(class_means)
    present = class_counts > 0
    means = xp.where(present[None, :], class_means, -xp.inf)
    top = xp.argmax(means, axis=1)
    mu_max = xp.take_along_axis(means, top[:, None], axis=1)[:, 0]
    others = present[None, :] & (xp.arange(class_means.shape[1])[None, :] != top[:, None])
    mu_rest = xp.sum(xp.where(others, class_means, 0), axis=1) / xp.maximum(xp.sum(others, axis=1), 1).astype(
        class_means.dtype)
    return (mu_max - mu_rest) / (mu_max + mu_rest + eps)


class Tables(NamedTuple):
    """Running tables of a labelled ``(tokens, neurons)`` stream (a pytree; jit-, vmap- and psum-friendly).

    Attributes:
      counts: joint counts ``(neurons, bins, classes)``, int32 (flush to the host before ``2**31`` tokens).
      sums: compensated per-class sums of ``x - shift``, ``(neurons, classes)``.
      bad_row, bad_col: first non-finite input value seen (``-1`` if none); rows count from ``row0``.
    """

    counts: Array
    sums: Pair
    bad_row: Array
    bad_col: Array


def init(neurons: int, bins: int, classes: int, dtype=jnp.float32) -> Tables:
    """Empty tables."""
    return Tables(jnp.zeros((neurons, bins, classes), jnp.int32), comp.zeros((neurons, classes), dtype),
                  jnp.array(-1, count_dtype()), jnp.array(-1, count_dtype()))


def first_bad(x: Array, n_valid: Array | int, row0: Array) -> tuple[Array, Array]:
    bad = (~jnp.isfinite(x)) & (jnp.arange(x.shape[0]) < n_valid)[:, None]
    flat = jnp.argmax(bad.reshape(-1))
    return (row0 + flat // x.shape[1]).astype(count_dtype()), (flat % x.shape[1]).astype(count_dtype())


def chunk_statistics(x: Array, labels: Array, n_valid: Array | int, row0: Array, shift: Array | None,
                     params: tuple[Array, ...], *, mode: str, bins: int, classes: int,
                     method: str = "contract") -> Tables:
    """The tables of one chunk alone: quantized joint counts, class sums, and its first bad value."""
    codes = quantize.apply(x, mode, params, bins)
    counts, sums = chunk_tables(x, codes, labels, n_valid, shift, bins=bins, classes=classes, method=method)
    none = jnp.full_like(jnp.asarray(row0, count_dtype()), -1)  # varies over the same mesh axes as row0
    row, col = jax.lax.cond(jnp.all(jnp.isfinite(sums)), lambda: (none, none),
                            lambda: first_bad(x, n_valid, row0))
    return Tables(counts, Pair(sums, jnp.zeros_like(sums)), row, col)


def merge(a: Tables, b: Tables) -> Tables:
    """Tables of two disjoint token sets combined; the first bad value is the one with the lower row."""
    take_a = (a.bad_row >= 0) & ((b.bad_row < 0) | (a.bad_row <= b.bad_row))
    return Tables(a.counts + b.counts, comp.add_pairs(a.sums, b.sums),
                  jnp.where(take_a, a.bad_row, b.bad_row), jnp.where(take_a, a.bad_col, b.bad_col))


@partial(jax.jit, static_argnames=("mode", "bins", "classes", "method"), donate_argnums=(0,))
def update(tables: Tables, x: Array, labels: Array, n_valid: Array | int, row0: Array, shift: Array | None,
           params: tuple[Array, ...], *, mode: str, bins: int, classes: int, method: str = "contract") -> Tables:
    """Quantize one chunk (:func:`jneuron.kernels.quantize.apply`) and add its tables (:func:`chunk_tables`)."""
    chunk = chunk_statistics(x, labels, n_valid, row0, shift, params, mode=mode, bins=bins, classes=classes,
                             method=method)
    return merge(tables, chunk)
