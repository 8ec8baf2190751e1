"""A fused Pallas kernel for the MaxCorr tile reduction: correlate and reduce without writing the tile.

:func:`reduce_tile` returns exactly what :func:`jneuron.kernels.maxcorr.reduce_tile` returns (for every
row the best partner in each column segment, for every column the best row; best is the largest
``|rho|``, ties to the lower index), but each program instance walks its band of the cross-product in
blocks, forms the correlations in registers and keeps only a running max and argmax: the correlation
tile is never written to memory. The row and column reductions are two kernels (a row band per
program, then a column band per program), each reading the cross-product once.

Blocks are powers of two (Triton's rule on GPUs); the tile is padded to whole blocks with zero inverse
deviations (correlation 0, never preferred over a real neuron, which has the lower index). On CPU it
runs in Pallas interpret mode (``interpret=True``), which is how it is tested against the pure-JAX path.

>>> import jax.numpy as jnp
>>> from jneuron.kernels.compensated import Pair
>>> cross = Pair(jnp.array([[0.1, -0.9, 0.3], [0.5, 0.2, -0.6]]), jnp.zeros((2, 3)))
>>> rows, cols = reduce_tile(cross, jnp.ones(2), jnp.ones(3), ((0, 2), (2, 3)), interpret=True)
>>> [int(u) for u in rows.unit[0]], [int(u) for u in cols.unit]
([1, 0], [1, 0, 1])
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import Array
from jax.experimental import pallas as pl

from jneuron.kernels.compensated import Pair
from jneuron.kernels.maxcorr import Partners

BLOCK_ROWS = 32
BLOCK_COLS = 128
_FAR = 2**30  # an index past any real one (argmin fill)


def _pad_to(n: int, block: int) -> int:
    return -(-n // block) * block


def _correlations(hi, lo, inv_rows, inv_cols):
    return jnp.clip((hi + lo) * inv_rows[:, None] * inv_cols[None, :], -1.0, 1.0)


def _best_along(corr: Array, candidate: Array, index: Array, axis: int):
    """Per line of ``corr`` along ``axis``: max of ``|corr|`` over candidates, its first index and signed value."""
    size = jnp.where(candidate, jnp.abs(corr), -1.0)
    best = jnp.max(size, axis=axis)
    first = jnp.min(jnp.where(size == jnp.expand_dims(best, axis), index, _FAR), axis=axis)
    rho = jnp.sum(jnp.where(index == jnp.expand_dims(first, axis), corr, 0.0), axis=axis)
    return best, first, rho


def _row_kernel(hi_ref, lo_ref, inv_rows_ref, inv_cols_ref, segment_ref, unit_ref, rho_ref, *, segments, blocks):
    rows = pl.ds(pl.program_id(0) * BLOCK_ROWS, BLOCK_ROWS)
    inv_rows = inv_rows_ref[rows]

    def step(j, carry):
        cols = pl.ds(j * BLOCK_COLS, BLOCK_COLS)
        corr = _correlations(hi_ref[rows, cols], lo_ref[rows, cols], inv_rows, inv_cols_ref[cols])
        segment = segment_ref[cols][None, :]
        index = j * BLOCK_COLS + jax.lax.broadcasted_iota(jnp.int32, (BLOCK_ROWS, BLOCK_COLS), 1)
        out = []
        for s, (best, unit, rho) in enumerate(carry):
            b, u, r = _best_along(corr, segment == s, index, axis=1)
            better = b > best  # strict: an earlier block keeps its tie
            out.append((jnp.where(better, b, best), jnp.where(better, u, unit), jnp.where(better, r, rho)))
        return tuple(out)

    start = (jnp.full((BLOCK_ROWS,), -1.0, jnp.float32), jnp.zeros((BLOCK_ROWS,), jnp.int32),
             jnp.zeros((BLOCK_ROWS,), jnp.float32))
    result = jax.lax.fori_loop(0, blocks, step, (start,) * len(segments))
    for s, ((first, _), (_, unit, rho)) in enumerate(zip(segments, result)):
        unit_ref[s, rows] = unit - first
        rho_ref[s, rows] = rho


def _column_kernel(hi_ref, lo_ref, inv_rows_ref, inv_cols_ref, unit_ref, rho_ref, *, blocks):
    cols = pl.ds(pl.program_id(0) * BLOCK_COLS, BLOCK_COLS)
    inv_cols = inv_cols_ref[cols]

    def step(i, carry):
        best, unit, rho = carry
        rows = pl.ds(i * BLOCK_ROWS, BLOCK_ROWS)
        corr = _correlations(hi_ref[rows, cols], lo_ref[rows, cols], inv_rows_ref[rows], inv_cols)
        index = i * BLOCK_ROWS + jax.lax.broadcasted_iota(jnp.int32, (BLOCK_ROWS, BLOCK_COLS), 0)
        b, u, r = _best_along(corr, index >= 0, index, axis=0)
        better = b > best
        return jnp.where(better, b, best), jnp.where(better, u, unit), jnp.where(better, r, rho)

    start = (jnp.full((BLOCK_COLS,), -1.0, jnp.float32), jnp.zeros((BLOCK_COLS,), jnp.int32),
             jnp.zeros((BLOCK_COLS,), jnp.float32))
    _, unit, rho = jax.lax.fori_loop(0, blocks, step, start)
    unit_ref[cols] = unit
    rho_ref[cols] = rho


@partial(jax.jit, static_argnames=("segments", "interpret"))
def reduce_tile(
    cross: Pair, inv_sd_rows: Array, inv_sd_cols: Array, segments: tuple[tuple[int, int], ...], interpret: bool = False
) -> tuple[Partners, Partners]:
    """Fused :func:`jneuron.kernels.maxcorr.reduce_tile` (float32): row partners per segment, column partners."""
    rows, cols = cross.hi.shape
    padded_rows, padded_cols = _pad_to(rows, BLOCK_ROWS), _pad_to(cols, BLOCK_COLS)
    pad = ((0, padded_rows - rows), (0, padded_cols - cols))
    hi, lo = (jnp.pad(a.astype(jnp.float32), pad) for a in cross)
    inv_rows = jnp.pad(inv_sd_rows.astype(jnp.float32), (0, padded_rows - rows))
    inv_cols = jnp.pad(inv_sd_cols.astype(jnp.float32), (0, padded_cols - cols))
    segment = jnp.full((padded_cols,), -1, jnp.int32)
    for s, (start, stop) in enumerate(segments):
        segment = segment.at[start:stop].set(s)
    count = len(segments)
    unit, rho = pl.pallas_call(
        partial(_row_kernel, segments=segments, blocks=padded_cols // BLOCK_COLS),
        out_shape=(jax.ShapeDtypeStruct((count, padded_rows), jnp.int32),
                   jax.ShapeDtypeStruct((count, padded_rows), jnp.float32)),
        grid=(padded_rows // BLOCK_ROWS,),
        interpret=interpret,
    )(hi, lo, inv_rows, inv_cols, segment)
    col_unit, col_rho = pl.pallas_call(
        partial(_column_kernel, blocks=padded_rows // BLOCK_ROWS),
        out_shape=(jax.ShapeDtypeStruct((padded_cols,), jnp.int32), jax.ShapeDtypeStruct((padded_cols,), jnp.float32)),
        grid=(padded_cols // BLOCK_COLS,),
        interpret=interpret,
    )(hi, lo, inv_rows, inv_cols)
    return Partners(unit.T[:rows], rho.T[:rows]), Partners(col_unit[:cols], col_rho[:cols])
