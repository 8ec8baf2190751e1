"""Tile reductions for cross-model correlation rankings (MaxCorr, MinCorr).

A correlation tile is ``corr[i, j]`` between the rows' neurons (one model) and the columns' neurons
(the other models, side by side). It is reduced at once to, for every row, the best partner in each
column segment (one segment per other model), and for every column, the best partner among the rows;
best means largest ``|rho|``, ties broken by the lower index. The tile itself is never kept.

>>> import jax.numpy as jnp
>>> corr = jnp.array([[0.1, -0.9, 0.3], [0.5, 0.2, -0.6]])
>>> rows = row_partners(corr, ((0, 2), (2, 3)))
>>> [int(u) for u in rows.unit[0]], [float(r) for r in rows.rho[0]]
([1, 0], [-0.8999999761581421, 0.30000001192092896])
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from jneuron.kernels import compensated as comp
from jneuron.kernels.compensated import Pair


class Partners(NamedTuple):
    """Best partners: ``unit`` (index within the partner's segment) and signed ``rho``."""

    unit: Array
    rho: Array


def correlation_tile(cross: Pair, inv_sd_rows: Array, inv_sd_cols: Array) -> Array:
    """Pearson correlations from a centred cross-product tile and inverse root sums of squares.

    Dead (constant) neurons carry ``inv_sd == 0`` and so correlate 0 with everything.
    """
    tile = comp.value(cross) * inv_sd_rows[:, None] * inv_sd_cols[None, :]
    return jnp.clip(tile, -1.0, 1.0)


def _best(corr: Array, axis: int) -> Partners:
    unit = jnp.argmax(jnp.abs(corr), axis=axis)
    rho = jnp.take_along_axis(corr, jnp.expand_dims(unit, axis), axis=axis).squeeze(axis)
    return Partners(unit, rho)


def row_partners(corr: Array, segments: tuple[tuple[int, int], ...]) -> Partners:
    """For each row, the best partner within each column segment: arrays of shape ``(rows, segments)``."""
    best = [_best(corr[:, start:stop], axis=1) for start, stop in segments]
    return Partners(jnp.stack([b.unit for b in best], 1), jnp.stack([b.rho for b in best], 1))


def column_partners(corr: Array) -> Partners:
    """For each column, the best partner among the rows: arrays of shape ``(columns,)``."""
    return _best(corr, axis=0)


@partial(jax.jit, static_argnames=("segments",))
def reduce_tile(
    cross: Pair, inv_sd_rows: Array, inv_sd_cols: Array, segments: tuple[tuple[int, int], ...]
) -> tuple[Partners, Partners]:
    """Correlate one tile and reduce it to row partners (per segment) and column partners."""
    corr = correlation_tile(cross, inv_sd_rows, inv_sd_cols)
    return row_partners(corr, segments), column_partners(corr)
