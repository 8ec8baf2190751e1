"""Streamed co-moments: count, mean and centred cross-products, merged chunk by chunk.

Each chunk of tokens is centred on its own mean (two-pass, so offsets of 1e3 cost no digits), its
centred cross-products are taken with ``precision="highest"``, and chunks are merged with Chan et al.'s
pairwise formula::

    n = n_a + n_b,   d = mean_b - mean_a
    mean = mean_a + d * n_b / n
    M    = M_a + M_b + (n_a * n_b / n) * d d^T

All running sums are compensated :class:`~jneuron.kernels.compensated.Pair` values, so the merge keeps
float64-level accuracy even where the platform computes in float32. Counts are integers.

Data whose values are too large or too small for their products to stay in the dtype's range (float32
beyond about ``2**±42``: ``x * 1e20``, ``x * 1e-30``, one entry of ``1e30``) are *scaled*: every neuron
is multiplied by a power of two chosen from its magnitude (:func:`choose_exponents`), which is exact
in binary floating point, and the statistics kept are those of the scaled data, with the exponents in
``Stats.scale``. Scale-invariant quantities (correlations) are read in the scaled domain
(``scaled=True``); :func:`mean64`, :func:`m2_64`, :func:`range64` and :func:`cross_value64` undo the
scaling in host float64, which holds every float32 value's products. Ordinary data are never scaled
(``scale`` is None).

Beside the moments, every feature's exact minimum and maximum over the rows read (``low``, ``high``)
decide which neurons are constant (:mod:`jneuron.streaming.constant`): a minimum rounds nothing, merges
exactly, and scales exactly by a power of two, so the verdict is the same however the rows were chunked,
sharded or scaled.

Which cross-product blocks are kept is static: a tuple of :class:`Tile` ``(r0, r1, c0, c1)`` selects
``X[:, r0:r1]^T X[:, c0:c1]``. The full covariance is one tile ``(0, D, 0, D)``; MaxCorr keeps only
the blocks between different models. Per-feature sums of squares (the diagonal) are always kept.

>>> import jax.numpy as jnp, numpy as np
>>> x = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32) + 1e3
>>> tiles = (Tile(0, 3, 0, 3),)
>>> s = init(3, tiles, jnp.float32)
>>> for chunk in np.split(x, 4):
...     s = update(s, chunk, 25, tiles)
>>> cov = cross_value64(s, 0) / (int(s.count) - 1)
>>> bool(np.allclose(cov, np.cov(x.T.astype(np.float64)), atol=1e-5))
True
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jneuron.config import HIGHEST
from jneuron.kernels import compensated as comp
from jneuron.kernels.compensated import Pair

NO_BAD_ROW = -1


def count_dtype():
    """Integer dtype for token counts: int64 where JAX has it enabled, else int32 (2**31 tokens)."""
    return jnp.int64 if jax.config.read("jax_enable_x64") else jnp.int32


class Tile(NamedTuple):
    """A static block ``X[:, r0:r1]^T X[:, c0:c1]`` of the cross-product matrix."""

    r0: int
    r1: int
    c0: int
    c1: int


class Scale(NamedTuple):
    """Power-of-two exponents of scaled statistics: they are those of ``x[:, j] * 2**feature[j]``.

    ``rows[i]`` and ``cols[i]`` are the exponents of tile ``i``'s rows and columns (the tiles are static,
    so they are kept here for :func:`cross_value64`).
    """

    feature: Array
    rows: tuple[Array, ...]
    cols: tuple[Array, ...]


def make_scale(exponents, tiles: tuple[Tile, ...]) -> Scale:
    """A :class:`Scale` from per-feature integer exponents."""
    e = np.asarray(exponents, np.int32)
    return Scale(jnp.asarray(e), tuple(jnp.asarray(e[t.r0 : t.r1]) for t in tiles),
                 tuple(jnp.asarray(e[t.c0 : t.c1]) for t in tiles))


class Stats(NamedTuple):
    """Running co-moments of a ``(tokens, D)`` stream (a pytree; jit-, vmap- and shard-friendly).

    Attributes:
      count: number of tokens seen (integer).
      mean: per-feature mean, compensated, shape ``(D,)``.
      m2: per-feature centred sum of squares, compensated, shape ``(D,)``.
      low, high: per-feature minimum and maximum of the finite values read, shape ``(D,)`` (``+inf`` and
        ``-inf`` before any).
      cross: one compensated centred cross-product block per :class:`Tile`.
      bad_row, bad_col: position of the first non-finite input value seen (``-1`` if none).
      scale: None, or the :class:`Scale` of data that needed scaling (the other fields are then the
        statistics of the scaled data; see the module docstring).
    """

    count: Array
    mean: Pair
    m2: Pair
    low: Array
    high: Array
    cross: tuple[Pair, ...]
    bad_row: Array
    bad_col: Array
    scale: Scale | None = None


def init(dim: int, tiles: tuple[Tile, ...], dtype=jnp.float32) -> Stats:
    """Empty statistics for ``dim`` features and the given cross-product tiles."""
    return Stats(
        count=jnp.zeros((), count_dtype()),
        mean=comp.zeros((dim,), dtype),
        m2=comp.zeros((dim,), dtype),
        low=jnp.full((dim,), jnp.inf, dtype),
        high=jnp.full((dim,), -jnp.inf, dtype),
        cross=tuple(comp.zeros((t.r1 - t.r0, t.c1 - t.c0), dtype) for t in tiles),
        bad_row=jnp.full((), NO_BAD_ROW, count_dtype()),
        bad_col=jnp.full((), NO_BAD_ROW, count_dtype()),
    )


def chunk_stats(x: Array, n_valid: Array | int, tiles: tuple[Tile, ...], dtype=jnp.float32) -> Stats:
    """Co-moments of one chunk whose first ``n_valid`` rows are real (the rest is padding)."""
    stats, centred = centred_chunk(x, n_valid, dtype)
    cross = (jnp.matmul(centred[:, t.r0 : t.r1].T, centred[:, t.c0 : t.c1], precision=HIGHEST) for t in tiles)
    return stats._replace(cross=tuple(Pair(c, jnp.zeros_like(c)) for c in cross))


def centred_chunk(x: Array, n_valid: Array | int, dtype=jnp.float32) -> tuple[Stats, Array]:
    """One chunk's statistics without cross-products (``cross == ()``), and the chunk centred on its mean
    (padding rows and non-finite values are 0), from which the cross-products are taken."""
    x = x.astype(dtype)
    rows = jnp.arange(x.shape[0])[:, None] < n_valid
    n = jnp.asarray(n_valid, count_dtype())
    denominator = jnp.maximum(n, 1).astype(dtype)
    finite = jnp.isfinite(x)
    read = rows & finite
    clean = jnp.where(read, x, 0)
    # The residual below must be taken about exactly the rough mean it corrects, but XLA may fuse the
    # division into each use and contract it into a fused multiply-add there (not rounded, so each use sees
    # a different value). Rounding it to one bit less than the dtype's mantissa (an exact, bitwise op that
    # cannot be contracted) materializes one value; the residual absorbs the dropped bit.
    info = jnp.finfo(dtype)
    rough_mean = jax.lax.reduce_precision(clean.sum(0) / denominator, int(info.nexp), int(info.nmant) - 1)
    residual = jnp.where(rows, clean - rough_mean[None, :], 0).sum(0) / denominator
    mean_hi, mean_lo = comp.add(Pair(rough_mean, jnp.zeros_like(rough_mean)), residual)  # the chunk mean, unrounded
    centred = jnp.where(rows, (clean - mean_hi[None, :]) - mean_lo[None, :], 0)
    m2 = jnp.sum(centred * centred, axis=0)
    bad = ~finite & rows
    any_bad = bad.any()
    first_row = jnp.argmax(bad.any(axis=1))
    first_col = jnp.argmax(bad[first_row])
    stats = Stats(
        count=n,
        mean=Pair(mean_hi, mean_lo),
        m2=Pair(m2, jnp.zeros_like(m2)),
        low=jnp.min(jnp.where(read, x, jnp.inf), axis=0),
        high=jnp.max(jnp.where(read, x, -jnp.inf), axis=0),
        cross=(),
        bad_row=jnp.where(any_bad, first_row, NO_BAD_ROW).astype(count_dtype()),
        bad_col=jnp.where(any_bad, first_col, NO_BAD_ROW).astype(count_dtype()),
    )
    return stats, centred


def merge(a: Stats, b: Stats, tiles: tuple[Tile, ...]) -> Stats:
    """Chan's pairwise merge of two statistics over disjoint token sets (``a`` comes first)."""
    merged, weight, delta = _merge_vectors(a, b)
    cross = tuple(
        comp.add(comp.add_pairs(ca, cb), weight * jnp.outer(delta[t.r0 : t.r1], delta[t.c0 : t.c1]))
        for t, ca, cb in zip(tiles, a.cross, b.cross)
    )
    return merged._replace(cross=cross, scale=a.scale)


def _merge_vectors(a: Stats, b: Stats) -> tuple[Stats, Array, Array]:
    """Everything of :func:`merge` but the cross-products (left empty), and the Chan weight
    ``n_a * n_b / n`` and mean difference ``mean_b - mean_a`` the cross-products' correction needs."""
    n = a.count + b.count
    dtype = a.mean.hi.dtype
    share_b = b.count.astype(dtype) / jnp.maximum(n, 1).astype(dtype)
    weight = a.count.astype(dtype) * share_b  # n_a * n_b / n, without integer overflow
    delta = (b.mean.hi - a.mean.hi) + (b.mean.lo - a.mean.lo)
    moved = comp.add(a.mean, delta * share_b)
    a_empty = a.count == 0  # then take b's mean as it is: rounding delta would drop its low half
    mean = Pair(jnp.where(a_empty, b.mean.hi, moved.hi), jnp.where(a_empty, b.mean.lo, moved.lo))
    m2 = comp.add(comp.add_pairs(a.m2, b.m2), weight * delta * delta)
    a_has_bad = a.bad_row != NO_BAD_ROW
    b_has_bad = b.bad_row != NO_BAD_ROW
    bad_row = jnp.where(a_has_bad, a.bad_row, jnp.where(b_has_bad, b.bad_row + a.count, NO_BAD_ROW))
    bad_col = jnp.where(a_has_bad, a.bad_col, b.bad_col)
    merged = Stats(n, mean, m2, jnp.fmin(a.low, b.low), jnp.fmax(a.high, b.high), (), bad_row.astype(count_dtype()),
                   bad_col.astype(count_dtype()))
    return merged, weight, delta


@partial(jax.jit, static_argnames=("tiles",), donate_argnums=(0,))
def update(stats: Stats, x: Array, n_valid: Array | int, tiles: tuple[Tile, ...]) -> Stats:
    """Fold one chunk (first ``n_valid`` rows real) into running statistics (scaled by ``stats.scale``
    when set; :func:`rescaled` changes the scale)."""
    dtype = stats.mean.hi.dtype
    if stats.scale is not None:
        x = jnp.ldexp(jnp.asarray(x).astype(dtype), stats.scale.feature[None, :])
    return merge(stats, chunk_stats(x, n_valid, tiles, dtype), tiles)


@partial(jax.jit, static_argnames=("dtype",))
def centre(x: Array, n_valid: Array | int, dtype=jnp.float32) -> tuple[Stats, Array]:
    """Jitted :func:`centred_chunk`: the first half of an update whose products are taken elsewhere."""
    return centred_chunk(x, n_valid, dtype)


@partial(jax.jit, static_argnames=("tiles",), donate_argnums=(0,))
def merge_products(stats: Stats, chunk: Stats, cross: tuple[Array, ...], tiles: tuple[Tile, ...],
                   drift: Array) -> Stats:
    """The second half: fold a chunk's statistics and its cross-product blocks into running statistics.

    ``cross`` are the chunk's products about a point ``drift`` below its mean (zero: about the mean
    itself, as :func:`centre` gives them); they exceed the centred products by ``count * drift
    drift^T``, which is taken off here. Each product is a plain block, rounded once already: adding
    both corrections to it before the compensated add costs one more rounding of the same size and
    saves a pass over the block (the merge of two compensated statistics, :func:`merge`, needs that pass).
    """
    merged, weight, delta = _merge_vectors(stats, chunk)
    dtype = stats.mean.hi.dtype
    drift = jnp.asarray(drift, dtype)
    count = chunk.count.astype(dtype)

    def corrected(t: Tile, c: Array) -> Array:
        rows, cols = slice(t.r0, t.r1), slice(t.c0, t.c1)
        return (c.astype(dtype) - count * jnp.outer(drift[rows], drift[cols])
                + weight * jnp.outer(delta[rows], delta[cols]))

    return merged._replace(cross=tuple(comp.add(running, corrected(t, c))
                                       for t, running, c in zip(tiles, stats.cross, cross)), scale=stats.scale)


# --- scaling ---------------------------------------------------------------------------------------


def range_exponent(dtype) -> int:
    """Values (centred, or their largest) beyond ``2**±range_exponent`` are scaled: 42 for float32, so
    products stay below ``2**84`` (sums of ``2**44`` of them fit) and above ``2**-84`` (far from
    underflow); 341 for float64."""
    return int(np.finfo(dtype).maxexp) // 3


def out_of_range(size: np.ndarray, dtype) -> np.ndarray:
    """Which per-feature sizes (a spread or a largest value, in the scaled domain) need scaling."""
    limit = 2.0 ** range_exponent(dtype)
    size = np.asarray(size, np.float64)
    return ~np.isfinite(size) | (size > limit) | ((size > 0) & (size < 1 / limit))


def exponents(stats: Stats) -> np.ndarray:
    """The per-feature exponents of ``stats`` (zeros when unscaled)."""
    if stats.scale is None:
        return np.zeros(stats.mean.hi.shape[-1], np.int32)
    return np.asarray(stats.scale.feature, np.int32)


def magnitude(stats: Stats) -> np.ndarray:
    """Root mean square of each feature's values so far, unscaled (host float64; 0 before any token)."""
    count = int(stats.count)
    if count == 0:
        return np.zeros(stats.mean.hi.shape[-1])
    mean, m2 = comp.value64(stats.mean), comp.value64(stats.m2)
    rms = np.sqrt(np.maximum(m2, 0.0) / count + mean * mean)
    return np.where(np.isfinite(rms), np.ldexp(rms, -exponents(stats)), 0.0)


def choose_exponents(current: np.ndarray, running: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Exponents ``e`` putting each feature's magnitude ``max(running, peak)`` (unscaled) in ``[0.5, 1)``
    after scaling by ``2**e``; ``current`` where a feature has no magnitude yet (all zero)."""
    size = np.fmax(np.asarray(running, np.float64), np.asarray(peak, np.float64))
    size = np.where(np.isfinite(size), size, 0.0)
    _, exp = np.frexp(size)
    return np.where(size > 0, -exp, current).astype(np.int32)


def rescale(stats: Stats, shift: Array, tiles: tuple[Tile, ...]) -> Stats:
    """The statistics multiplied by ``2**shift`` per feature (means, minima, maxima), ``2**(2 shift)`` (sums of squares)
    and ``2**(shift_row + shift_col)`` (cross-products): exact in binary floating point, but for parts
    that leave the dtype's range (negligible next to the values the new scale was chosen for).
    ``scale`` is left as it is (pure; jit- and vmap-able)."""
    shift = jnp.asarray(shift, jnp.int32)

    def times(pair: Pair, e) -> Pair:
        return Pair(jnp.ldexp(pair.hi, e), jnp.ldexp(pair.lo, e))

    cross = tuple(times(c, shift[t.r0 : t.r1, None] + shift[None, t.c0 : t.c1]) for t, c in zip(tiles, stats.cross))
    return stats._replace(mean=times(stats.mean, shift), m2=times(stats.m2, 2 * shift), low=jnp.ldexp(stats.low, shift),
                          high=jnp.ldexp(stats.high, shift), cross=cross)


_rescale = jax.jit(rescale, static_argnames=("tiles",))


def rescaled(stats: Stats, new: np.ndarray, tiles: tuple[Tile, ...]) -> Stats:
    """``stats`` moved to the per-feature exponents ``new`` (scale attached)."""
    new = np.asarray(new, np.int32)
    shift = new - exponents(stats)
    moved = stats._replace(scale=None)
    if shift.any():
        moved = _rescale(moved, shift, tiles)
    return moved._replace(scale=make_scale(new, tiles))


@jax.jit
def abs_max(x: Array) -> Array:
    """Each column's largest finite ``|x|`` (padding rows are zeros, so they never count)."""
    return jnp.max(jnp.where(jnp.isfinite(x), jnp.abs(x), 0), axis=0)


def clear_caches() -> None:
    """Drop the compiled updates (one per tile layout): a run with many layouts would otherwise keep them all."""
    for function in (update, centre, merge_products, _rescale):
        function.clear_cache()


def mean64(stats: Stats, scaled: bool = False) -> np.ndarray:
    """The per-feature means as host float64 (``scaled``: of the scaled data, see :class:`Scale`)."""
    value = comp.value64(stats.mean)
    return value if scaled or stats.scale is None else np.ldexp(value, -exponents(stats))


def m2_64(stats: Stats, scaled: bool = False) -> np.ndarray:
    """The per-feature centred sums of squares as host float64 (``scaled``: of the scaled data)."""
    value = comp.value64(stats.m2)
    return value if scaled or stats.scale is None else np.ldexp(value, -2 * exponents(stats))


def range64(stats: Stats, scaled: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The per-feature minima and maxima as host float64 (``scaled``: of the scaled data; exact either way)."""
    low, high = (np.asarray(a, np.float64) for a in (stats.low, stats.high))
    if scaled or stats.scale is None:
        return low, high
    e = -exponents(stats)
    return np.ldexp(low, e), np.ldexp(high, e)


def cross_value64(stats: Stats, tile: int, scaled: bool = False) -> np.ndarray:
    """One cross-product tile as host float64 (``scaled``: of the scaled data)."""
    value = comp.value64(stats.cross[tile])
    if scaled or stats.scale is None:
        return value
    rows, cols = (np.asarray(e[tile], np.int32) for e in (stats.scale.rows, stats.scale.cols))
    return np.ldexp(value, -(rows[:, None] + cols[None, :]))
