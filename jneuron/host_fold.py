"""The CPU path of the co-moment pass: each chunk centred and multiplied by numpy on the host.

On a CPU nearly all of a pass's work is the chunk's cross-products and its centring. numpy's BLAS
multiplies about 1.5x faster than XLA's CPU matmul, and numpy centres a chunk in one subtraction into a
buffer kept from chunk to chunk, 3-5x faster than the compiled centring, which makes several passes and
writes a fresh output every time (measured on 3,847 x 4,096 chunks). Only the compensated merge stays
compiled (:func:`jneuron.kernels.moments.merge_products`).

Each chunk is centred about its rough mean ``p`` (its rows summed in the working dtype); values close to
``p`` subtract exactly, so offsets of 1e3 cost no digits. The chunk's exact mean is ``p + drift``, with
``drift`` the mean of the centred rows (summed in float64 by blocks), and the products about ``p``
exceed the centred products by ``rows * drift drift^T``, which the merge takes off: the statistics are
those of a chunk centred on its own mean, with one pass over the chunk instead of two. Arrays given
model by model are centred straight into the buffer, never joined first. A chunk holding a NaN or Inf
goes through the compiled centring, which records where the first one is.

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

from jneuron.aligned import aligned_empty
from jneuron.kernels import moments as kmoments
from jneuron.kernels.compensated import Pair
from jneuron.kernels.moments import Stats, Tile

BLOCK_ROWS = 512  # rows summed in float32 at a time (the blocks' sums are added in float64): bounds the rounding


class HostFold:
    """``fold(stats, chunk, rows, tiles)``: fold a chunk's first ``rows`` rows into running statistics.

    A drop-in for :func:`jneuron.kernels.moments.update` on a CPU device. One instance serves one pass:
    it keeps the centring buffer between chunks (the products are taken before it returns, so reusing
    the buffer is safe), which saves writing into fresh pages every chunk.
    """

    def __init__(self) -> None:
        self._buffer: np.ndarray | None = None  # the centred chunk
        self._point: np.ndarray | None = None  # the point it is centred about (allocated once: see centre)

    def __call__(self, stats: Stats, chunk: np.ndarray | Sequence[np.ndarray], rows: int,
                 tiles: tuple[Tile, ...]) -> Stats:
        """``chunk``: a ``(tokens, width)`` array, or the models' ``(tokens, width_m)`` arrays side by side
        (then nothing joins them: each is centred straight into the chunk buffer)."""
        part, centred, drift = self.centre(chunk, rows, np.dtype(stats.mean.hi.dtype))
        cross = tuple(
            np.matmul(centred[:, t.r0 : t.r1].T, centred[:, t.c0 : t.c1],
                      out=aligned_empty((t.r1 - t.r0, t.c1 - t.c0), centred.dtype))
            for t in tiles
        )
        return kmoments.merge_products(stats, part, cross, tiles, drift)

    def centre(self, chunk: np.ndarray | Sequence[np.ndarray], rows: int,
               dtype: np.dtype) -> tuple[Stats, np.ndarray, np.ndarray]:
        """The chunk's count, mean and centred sums of squares; its first ``rows`` rows less a point
        ``p`` near their mean; and ``drift = mean - p`` (see :func:`jneuron.kernels.moments.merge_products`).

        ``p`` is the rough mean. In one subtraction each value keeps all its digits about ``p`` (exact
        where ``x`` is within a factor of 2 of ``p``); the small drift of the result is corrected in
        the statistics rather than by a second pass over the chunk.
        """
        parts = [p[:rows] for p in (chunk if isinstance(chunk, (list, tuple)) else [chunk])]
        width = sum(p.shape[1] for p in parts)
        n = dtype.type(max(rows, 1))
        sums = np.concatenate([p.sum(axis=0, dtype=dtype) for p in parts])
        if not np.isfinite(sums).all():  # a NaN or Inf somewhere (or an overflow): let the kernel find it
            joined = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            part, centred = kmoments.centre(joined, rows, dtype)
            return part, np.asarray(centred), np.zeros(width, dtype)
        # the point lives in a buffer allocated with the chunk's: numpy's broadcast subtraction ran 2-3x
        # slower against some freshly allocated small arrays on the benchmark machine
        shifted, point = self._buffers((rows, width), dtype)
        np.divide(sums, n, out=point)
        start = 0
        for p in parts:
            columns = slice(start, start + p.shape[1])
            np.subtract(p, point[columns], out=shifted[:, columns], dtype=dtype, casting="same_kind")
            start = columns.stop
        drift, squares = np.zeros(width, np.float64), np.zeros(width, np.float64)
        for first in range(0, rows, BLOCK_ROWS):
            block = shifted[first : first + BLOCK_ROWS]
            drift += block.sum(axis=0)
            squares += np.einsum("ij,ij->j", block, block)
        drift /= rows
        squares -= rows * drift * drift
        mean = _two_sum(point, drift.astype(dtype))
        m2 = squares.astype(dtype)
        count = np.asarray(rows, kmoments.count_dtype())
        none = np.asarray(kmoments.NO_BAD_ROW, kmoments.count_dtype())
        part = Stats(count, mean, Pair(m2, (squares - m2).astype(dtype)), (), none, none)
        return part, shifted, drift.astype(dtype)

    def _buffers(self, shape: tuple[int, int], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        if self._buffer is None or self._buffer.dtype != dtype or self._buffer.shape[1] != shape[1] \
                or self._buffer.shape[0] < shape[0]:
            self._buffer, self._point = aligned_empty(shape, dtype), aligned_empty(shape[1:], dtype)
        return self._buffer[: shape[0]], self._point


def _two_sum(a: np.ndarray, b: np.ndarray) -> Pair:
    """``a + b`` as a pair that keeps what the rounded sum drops (Knuth's TwoSum, as in the kernels)."""
    total = a + b
    b_kept = total - a
    return Pair(total, (a - (total - b_kept)) + (b - b_kept))
