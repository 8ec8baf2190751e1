"""The CPU path of the co-moment pass: each chunk centred and multiplied by numpy on the host.

On a CPU nearly all of a pass's work is the chunk's cross-products and its centring. numpy's BLAS
multiplies about 1.5x faster than XLA's CPU matmul, and numpy centres a chunk in one subtraction into a
buffer kept from chunk to chunk, 3-5x faster than the compiled centring, which makes several passes and
writes a fresh output every time (measured on 3,847 x 4,096 chunks). Only the compensated merge stays
compiled (:func:`jneuron.kernels.moments.merge_products`).

Each chunk is centred about a point ``p`` near its mean: the float64 mean of a strided sample of about
512 of its rows, rounded to the dtype. Values close to ``p`` subtract exactly (within a factor of 2 of
it: Sterbenz), so offsets of 1e6 cost no digits, and ``p`` is off the chunk's mean by about
``sd / sqrt(512)`` whatever the order of the rows (a float32 sum down 65,536 rows would be off by
``sqrt(n) eps |offset|``, which at offsets of 1e5-1e6 is the spread itself). The chunk's exact mean is
``p + drift``, with ``drift`` the mean of the centred rows (summed in float64 by blocks), and the
products about ``p`` exceed the centred products by ``rows * drift drift^T`` (a small rank-1 part, so
nothing cancels), which the merge takes off: the statistics are those of a chunk centred on its own
mean, with one pass over the chunk. Arrays given model by model are centred straight into the buffer,
never joined first; each block of them is subtracted and its exact minima and maxima taken (which
decide the constant neurons, :mod:`jneuron.streaming.constant`) while it is in cache. A chunk holding a
NaN or Inf goes through the compiled centring, which records where the first one is.

Data too large or too small for float32 products (see :mod:`jneuron.kernels.moments`, scaling) are
found from the centred chunk's own sums of squares (no extra pass over ordinary data): such a chunk
is scaled per neuron by powers of two (and the running statistics with it) and centred again.

>>> import numpy as np
>>> from jneuron.kernels import moments as km
>>> x = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32) + 1e3
>>> tiles = (km.Tile(0, 1, 1, 3),)
>>> fold, s = HostFold(), km.init(3, tiles)
>>> for chunk in np.split(x, 4):
...     s = fold(s, chunk, 25, tiles)
>>> centred = x.astype(np.float64) - x.mean(0, dtype=np.float64)
>>> bool(np.allclose(km.cross_value64(s, 0), centred[:, :1].T @ centred[:, 1:], rtol=1e-5))
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jneuron.kernels import compensated
from jneuron.kernels import moments as kmoments
from jneuron.kernels.compensated import Pair
from jneuron.kernels.moments import Stats, Tile

ALIGNMENT = 64  # bytes: JAX's CPU client adopts a host buffer starting on this boundary without a copy
BLOCK_ROWS = 512  # rows at a time: summed in float32 (the blocks' sums are added in float64, which bounds the
# rounding), and subtracted with their extremes taken while in cache
SAMPLE_ROWS = 512  # rows (at least, strided over the chunk) whose float64 mean is the centring point


class HostFold:
    """``fold(stats, chunk, rows, tiles)``: fold a chunk's first ``rows`` rows into running statistics.

    A drop-in for :func:`jneuron.kernels.moments.update` on a CPU device. One instance serves one pass:
    it keeps the centring buffer between chunks (the products are taken before it returns, so reusing
    the buffer is safe), which saves writing into fresh pages every chunk.
    """

    def __init__(self) -> None:
        self._buffer: np.ndarray | None = None  # the centred chunk
        self._point: np.ndarray | None = None  # the point it is centred about (allocated once: see centre)
        self._sample_spread = np.zeros(0)  # of the last chunk centred: its sample's float64 spread per feature
        self._sums = np.zeros(0)  # ... and the sums of its centred rows

    def __call__(self, stats: Stats, chunk: np.ndarray | Sequence[np.ndarray], rows: int,
                 tiles: tuple[Tile, ...]) -> Stats:
        """``chunk``: a ``(tokens, width)`` array, or the models' ``(tokens, width_m)`` arrays side by side
        (then nothing joins them: each is centred straight into the chunk buffer)."""
        with np.errstate(over="ignore", invalid="ignore"):  # NaN, Inf and overflow are found, not warned about
            return self._fold(stats, chunk, rows, tiles)

    def _fold(self, stats: Stats, chunk, rows: int, tiles: tuple[Tile, ...]) -> Stats:
        dtype = np.dtype(stats.mean.hi.dtype)
        parts = [p[:rows] for p in (chunk if isinstance(chunk, (list, tuple)) else [chunk])]
        scale = None if stats.scale is None else kmoments.exponents(stats)
        part, centred, drift = self.centre(_scaled(parts, scale, dtype), rows, dtype)
        if self._needs_scaling(stats, part, rows, dtype):
            current = kmoments.exponents(stats)
            largest = np.fmax(np.asarray(part.high, np.float64), -np.asarray(part.low, np.float64))
            peak = np.ldexp(largest, -current)  # of the values as given (the chunk was read at the current scale)
            new = kmoments.choose_exponents(current, kmoments.magnitude(stats), peak)
            if stats.scale is None or (new != current).any():
                stats = kmoments.rescaled(stats, new, tiles)
                part, centred, drift = self.centre(_scaled(parts, new, dtype), rows, dtype)
        cross = tuple(
            np.matmul(centred[:, t.r0 : t.r1].T, centred[:, t.c0 : t.c1],
                      out=aligned_empty((t.r1 - t.r0, t.c1 - t.c0), centred.dtype))
            for t in tiles
        )
        return kmoments.merge_products(stats, part, cross, tiles, drift)

    def _needs_scaling(self, stats: Stats, part: Stats, rows: int, dtype: np.dtype) -> bool:
        """Whether the (scaled) chunk's spread, or its mean's distance from the running mean, is out of the
        range where float32 products are safe (a NaN or Inf in the data is reported instead)."""
        if int(part.bad_row) != kmoments.NO_BAD_ROW or not rows:
            return False
        m2 = compensated.value64(part.m2)
        spread = np.sqrt(np.maximum(m2, 0.0) / rows)
        out = kmoments.out_of_range(spread, dtype) | ~np.isfinite(compensated.value64(part.mean))
        # squares that underflowed to 0 (the sample's float64 spread says how small the values are; a
        # non-zero sum says that a neuron not seen in the sample is not all zero)
        out |= kmoments.out_of_range(self._sample_spread, dtype) | ((m2 == 0) & (self._sums != 0))
        if int(stats.count):
            jump = np.abs(compensated.value64(part.mean) - compensated.value64(stats.mean))
            out |= ~np.isfinite(jump) | (jump > 2.0 ** kmoments.range_exponent(dtype))
        return bool(out.any())

    def centre(self, chunk: np.ndarray | Sequence[np.ndarray], rows: int,
               dtype: np.dtype) -> tuple[Stats, np.ndarray, np.ndarray]:
        """The chunk's count, mean, centred sums of squares, minima and maxima; its first ``rows`` rows
        less a point ``p`` near their mean; and ``drift = mean - p`` (see
        :func:`jneuron.kernels.moments.merge_products`).

        ``p`` is the float64 mean of a strided sample of about ``SAMPLE_ROWS`` rows, rounded to the dtype.
        In one subtraction each value keeps all its digits about ``p`` (exact where ``x`` is within a
        factor of 2 of ``p``); the small drift of the result is corrected in the statistics rather than
        by a second pass over the chunk. The minima and maxima are taken of the values themselves (exact),
        block by block while each block is in cache for its subtraction.
        """
        parts = [p[:rows] for p in (chunk if isinstance(chunk, (list, tuple)) else [chunk])]
        width = sum(p.shape[1] for p in parts)
        # the point lives in a buffer allocated with the chunk's: numpy's broadcast subtraction ran 2-3x
        # slower against some freshly allocated small arrays on the benchmark machine
        shifted, point = self._buffers((rows, width), dtype)
        step = max(1, rows // SAMPLE_ROWS)
        self._sample_spread = np.zeros(width)
        low, high = np.full(width, np.inf, dtype), np.full(width, -np.inf, dtype)
        start = 0
        for p in parts:
            columns = slice(start, start + p.shape[1])
            sample = np.asarray(p[::step], np.float64)
            if len(sample):
                centre = sample.sum(axis=0) / len(sample)
                point[columns] = centre
                self._sample_spread[columns] = np.sqrt(np.mean((sample - centre) ** 2, axis=0))
            for first in range(0, rows, BLOCK_ROWS):
                block = p[first : first + BLOCK_ROWS]
                np.subtract(block, point[columns], out=shifted[first : first + BLOCK_ROWS, columns], dtype=dtype,
                            casting="same_kind")
                np.minimum(low[columns], block.min(axis=0), out=low[columns], casting="same_kind")
                np.maximum(high[columns], block.max(axis=0), out=high[columns], casting="same_kind")
            start = columns.stop
        drift, squares = np.zeros(width, np.float64), np.zeros(width, np.float64)
        for first in range(0, rows, BLOCK_ROWS):
            block = shifted[first : first + BLOCK_ROWS]
            drift += block.sum(axis=0)
            squares += np.einsum("ij,ij->j", block, block)
        self._sums = drift.copy()
        if not (np.isfinite(drift).all() and np.isfinite(squares).all()):
            # a NaN or Inf somewhere (or an overflow): let the kernel find it
            joined = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            part, centred = kmoments.centre(joined, rows, dtype)
            return part, np.asarray(centred), np.zeros(width, dtype)
        drift /= max(rows, 1)
        squares -= rows * drift * drift
        mean = _two_sum(point, drift.astype(dtype))
        m2 = squares.astype(dtype)
        count = np.asarray(rows, kmoments.count_dtype())
        none = np.asarray(kmoments.NO_BAD_ROW, kmoments.count_dtype())
        part = Stats(count, mean, Pair(m2, (squares - m2).astype(dtype)), low, high, (), none, none)
        return part, shifted, drift.astype(dtype)

    def _buffers(self, shape: tuple[int, int], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        if self._buffer is None or self._buffer.dtype != dtype or self._buffer.shape[1] != shape[1] \
                or self._buffer.shape[0] < shape[0]:
            self._buffer, self._point = aligned_empty(shape, dtype), aligned_empty(shape[1:], dtype)
        return self._buffer[: shape[0]], self._point


def _scaled(parts: list[np.ndarray], exponents: np.ndarray | None, dtype: np.dtype) -> list[np.ndarray]:
    """The parts multiplied by ``2**exponents`` (their columns side by side), in ``dtype``; as they are
    when unscaled."""
    if exponents is None:
        return parts
    out, start = [], 0
    for p in parts:
        out.append(np.ldexp(np.asarray(p, dtype), exponents[start : start + p.shape[1]]).astype(dtype, copy=False))
        start += p.shape[1]
    return out


def _two_sum(a: np.ndarray, b: np.ndarray) -> Pair:
    """``a + b`` as a pair that keeps what the rounded sum drops (Knuth's TwoSum, as in the kernels)."""
    total = a + b
    b_kept = total - a
    return Pair(total, (a - (total - b_kept)) + (b - b_kept))


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``ALIGNMENT``-byte boundary.

    JAX wraps a host numpy array as a CPU device array in place when its data is so aligned (numpy itself
    only guarantees 16 bytes, so an ordinary array is copied on every transfer); the chunk products are
    allocated here, so each is written once and merged where it lies.

    >>> aligned_empty((3, 5), np.float32).ctypes.data % ALIGNMENT
    0
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + ALIGNMENT, np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    return raw[start : start + size].view(dtype).reshape(shape)
