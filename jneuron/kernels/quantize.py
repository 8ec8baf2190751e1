"""Quantization of neuron outputs into a few integer bins, chunk by chunk (Amjad et al., 2018).

Three ways to cut a neuron's output ``x`` into bins ``0 .. bins - 1``:

- :func:`threshold`: 1 bit, ``x > t`` (``t = 0.5`` for sigmoid units, ``0`` for ReLU units: a ReLU unit at
  exactly 0 is "off").
- :func:`uniform`: ``bins`` equal-width bins over ``[low, high]`` (per neuron or shared); values outside
  the range fall into the first or last bin.
- :func:`digitize`: bins cut at per-neuron ascending ``edges`` (``bins - 1`` of them), bin = number of
  edges strictly below ``x``. Quantile bins use edges from :func:`quantile_edges`, estimated in a first
  pass by :func:`minmax` and then :func:`histogram` (a fine uniform histogram per neuron).

Every function is a pure array function of one ``(tokens, neurons)`` chunk (jit-, vmap- and
shard-friendly); partial chunks are padded and their valid row count ``n_valid`` passed in.

>>> import jax.numpy as jnp
>>> x = jnp.array([[0.2, -1.0], [0.7, 0.0], [0.5, 3.0]])
>>> threshold(x, 0.5).T.tolist()
[[0, 1, 0], [0, 0, 1]]
>>> uniform(x, jnp.array([0.0, -1.0]), jnp.array([1.0, 3.0]), 4).T.tolist()
[[0, 2, 2], [0, 1, 3]]
>>> digitize(x, jnp.array([[0.5], [0.0]])).T.tolist()
[[0, 1, 0], [0, 0, 1]]
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

CODE_DTYPE = jnp.int32


def _row(value: Array | float, x: Array) -> Array:
    """A per-neuron ``(neurons,)`` or shared scalar parameter, shaped to broadcast against ``x``."""
    value = jnp.asarray(value, x.dtype)
    return value[None, :] if value.ndim == 1 else value


def threshold(x: Array, value: Array | float) -> Array:
    """1-bit codes: 1 where ``x > value`` (per neuron or shared), else 0."""
    return (x > _row(value, x)).astype(CODE_DTYPE)


def uniform(x: Array, low: Array | float, high: Array | float, bins: int) -> Array:
    """Codes of ``bins`` equal-width bins over ``[low, high]``; outside values clip to the end bins.

    A neuron with ``high == low`` puts everything in bin 0. The top edge ``high`` belongs to the last bin.
    """
    low = _row(low, x)
    width = _row(high, x) - low
    scaled = (x - low) * (bins / jnp.where(width > 0, width, 1))
    codes = jnp.floor(jnp.where(width > 0, scaled, 0))
    return jnp.clip(codes, 0, bins - 1).astype(CODE_DTYPE)


def digitize(x: Array, edges: Array) -> Array:
    """Codes from per-neuron ascending ``edges`` of shape ``(neurons, bins - 1)``: how many edges are below ``x``."""
    return jnp.sum(x[:, :, None] > edges[None, :, :], axis=-1, dtype=CODE_DTYPE)


def minmax(x: Array, n_valid: Array | int) -> tuple[Array, Array]:
    """Per-neuron minimum and maximum over the first ``n_valid`` rows of the chunk."""
    valid = (jnp.arange(x.shape[0]) < n_valid)[:, None]
    return jnp.min(jnp.where(valid, x, jnp.inf), axis=0), jnp.max(jnp.where(valid, x, -jnp.inf), axis=0)


def histogram(x: Array, n_valid: Array | int, low: Array, high: Array, resolution: int) -> Array:
    """Per-neuron counts of ``resolution`` uniform bins over ``[low, high]``, shape ``(neurons, resolution)``."""
    codes = uniform(x, low, high, resolution)
    valid = (jnp.arange(x.shape[0]) < n_valid).astype(CODE_DTYPE)
    columns = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape)
    counts = jnp.zeros((x.shape[1], resolution), CODE_DTYPE)
    return counts.at[columns, codes].add(jnp.broadcast_to(valid[:, None], x.shape))


def quantile_edges(counts: Array, low: Array, high: Array, bins: int) -> Array:
    """Edges of ``bins`` equal-count bins from fine histograms ``(neurons, resolution)`` over ``[low, high]``.

    Edge ``i`` is the ``i / bins`` quantile, interpolated linearly inside the fine bin where the
    cumulative count crosses ``i / bins`` of the total; so it is exact to one fine bin
    (``(high - low) / resolution``). Ties (point masses) give repeated edges and empty bins.
    """
    resolution = counts.shape[1]
    cumulative = jnp.cumsum(counts, axis=1).astype(low.dtype)
    total = cumulative[:, -1:]
    targets = total * (jnp.arange(1, bins, dtype=low.dtype) / bins)[None, :]
    # first fine bin whose cumulative count reaches the target
    index = jnp.sum(cumulative[:, None, :] < targets[:, :, None], axis=-1)
    index = jnp.minimum(index, resolution - 1)
    above = jnp.take_along_axis(cumulative, index, axis=1)
    inside = jnp.take_along_axis(counts, index, axis=1).astype(low.dtype)
    below = above - inside
    fraction = jnp.where(inside > 0, (targets - below) / jnp.where(inside > 0, inside, 1), 0)
    step = (high - low)[:, None] / resolution
    return low[:, None] + (index.astype(low.dtype) + fraction) * step


def apply(x: Array, mode: str, params: tuple[Array, ...], bins: int) -> Array:
    """Codes by a named quantizer (``mode`` static): ``"threshold"`` ``(value,)``, ``"uniform"``
    ``(low, high)``, or ``"edges"`` ``(edges,)``."""
    if mode == "threshold":
        return threshold(x, params[0])
    if mode == "uniform":
        return uniform(x, params[0], params[1], bins)
    if mode == "edges":
        return digitize(x, params[0])
    raise ValueError(f"unknown quantizer mode {mode!r}")
