"""Sharded streamed statistics: the token axis over one mesh axis, the neuron axis over another.

Any per-chunk statistic becomes a sharded one through a :class:`Reduction`: ``init`` (the empty
statistic), ``chunk`` (the statistic of one device's shard of a chunk) and ``merge`` (how two
statistics of disjoint token sets combine; ``None`` means they simply add, like counts or gradients).
Every device keeps its own running statistic of the tokens it was handed (:func:`make_update`, no
communication per chunk); :func:`make_finalize` combines them once across the ``"tokens"`` mesh axis
inside :func:`jax.shard_map`: ``psum`` for additive statistics, an all-gather and a pairwise (Chan) merge
tree for the others, so compensated co-moments keep their float64-level accuracy and counts stay integers.

Running state is a pytree whose leaves carry two leading axes, ``(tokens shards, neuron shards)``
(only one when the mesh has no ``"neurons"`` axis), sharded over the mesh. Each device's chunk shard
comes with its own ``n_valid`` (rows that are real; the rest is padding) and ``row0`` (global index of
its first row, for error messages), so uneven token counts and several processes need nothing else.

>>> import jax, jax.numpy as jnp, numpy as np
>>> mesh = jax.make_mesh((1,), (TOKENS,))
>>> total = Reduction(init=lambda: jnp.zeros(()), chunk=lambda x, n, row0: x.sum())
>>> init, update, finalize = make_init(total, mesh), make_update(total, mesh), make_finalize(total, mesh)
>>> state = init()
>>> state = update(state, jnp.ones((4, 3)), jnp.array([4]), jnp.array([0]))
>>> float(finalize(state))
12.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jneuron.kernels import maxcorr as kmax
from jneuron.kernels import moments as kmoments
from jneuron.kernels.compensated import Pair
from jneuron.kernels.maxcorr import Partners
from jneuron.kernels.moments import NO_BAD_ROW, Stats, Tile

TOKENS = "tokens"  # the data-parallel mesh axis
NEURONS = "neurons"  # the optional mesh axis that splits cross-product rows


class Reduction(NamedTuple):
    """A streamed statistic: how to start, how to summarize one chunk shard, how to combine two."""

    init: Callable[[], Any]
    chunk: Callable[..., Any]  # (x shard, n_valid, row0, *args) -> statistic
    merge: Callable[[Any, Any], Any] | None = None  # None: statistics add (combined with psum)


def axis_size(mesh: Mesh, name: str) -> int:
    """Size of a mesh axis, 1 if the mesh does not have it."""
    return dict(mesh.shape).get(name, 1)


def _lead(mesh: Mesh) -> tuple[str, ...]:
    return (TOKENS, NEURONS) if NEURONS in mesh.axis_names else (TOKENS,)


def _combine(reduction: Reduction, a, b):
    if reduction.merge is None:
        return jax.tree.map(jnp.add, a, b)
    return reduction.merge(a, b)


def make_init(reduction: Reduction, mesh: Mesh) -> Callable:
    """A jitted ``init() -> state``: one empty statistic per device, stacked on the leading mesh axes."""
    lead = _lead(mesh)
    shape = tuple(axis_size(mesh, name) for name in lead)

    def make():
        return jax.tree.map(lambda a: jnp.broadcast_to(a, shape + a.shape), reduction.init())

    return jax.jit(make, out_shardings=NamedSharding(mesh, P(*lead)))


def make_update(reduction: Reduction, mesh: Mesh) -> Callable:
    """A jitted ``update(state, x, n_valid, row0, *args) -> state`` folding one chunk into every device's statistic.

    ``x`` is ``(tokens, features)`` sharded over ``"tokens"`` (replicated over ``"neurons"``);
    ``n_valid`` and ``row0`` hold one integer per token shard; ``args`` (parameters of the statistic,
    e.g. a probe's weights) are replicated and passed on to ``reduction.chunk``.
    """
    lead = _lead(mesh)
    depth = len(lead)

    def body(state, x, n_valid, row0, args):
        local = jax.tree.map(lambda a: a.reshape(a.shape[depth:]), state)
        merged = _combine(reduction, local, reduction.chunk(x, n_valid[0], row0[0], *args))
        return jax.tree.map(lambda a: a.reshape((1,) * depth + a.shape), merged)

    mapped = jax.shard_map(
        body, mesh=mesh, in_specs=(P(*lead), P(TOKENS), P(TOKENS), P(TOKENS), P()), out_specs=P(*lead)
    )
    rows, whole = NamedSharding(mesh, P(TOKENS)), NamedSharding(mesh, P())

    def update(state, x, n_valid, row0, *args):
        args = jax.tree.map(lambda a: jax.reshard(jnp.asarray(a), whole), args)
        return mapped(state, *(jax.reshard(jnp.asarray(a), rows) for a in (x, n_valid, row0)), args)

    return jax.jit(update, donate_argnums=0)


def make_finalize(reduction: Reduction, mesh: Mesh) -> Callable:
    """A jitted ``finalize(state)``: the devices' statistics combined over ``"tokens"``.

    The result is replicated over ``"tokens"``; with a ``"neurons"`` axis it keeps one leading axis of
    neuron shards (sharded over ``"neurons"``).
    """
    lead = _lead(mesh)
    depth = len(lead)
    shards = axis_size(mesh, TOKENS)

    def body(state):
        local = jax.tree.map(lambda a: a.reshape(a.shape[depth:]), state)
        if reduction.merge is None:
            total = jax.tree.map(lambda a: jax.lax.psum(a, TOKENS), local)
        else:
            gathered = jax.tree.map(lambda a: jax.lax.all_gather(a, TOKENS), local)
            parts = [jax.tree.map(lambda a, i=i: a[i], gathered) for i in range(shards)]
            while len(parts) > 1:  # pairwise, in token order: depth log2(shards)
                pairs = [reduction.merge(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
                parts = pairs + ([parts[-1]] if len(parts) % 2 else [])
            total = parts[0]
        return jax.tree.map(lambda a: a[None], total) if depth == 2 else total

    out = P(NEURONS) if depth == 2 else P()
    # every device merges the same gathered statistics in the same order, so the result is replicated
    # over "tokens"; all_gather does not tell the replication checker so, hence check_vma=False.
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(*lead),), out_specs=out, check_vma=False))


def shard_rows(rows: int, shard_size: int, shards: int) -> tuple[int, ...]:
    """Real rows in each of ``shards`` token shards of ``shard_size`` rows when the first ``rows`` are real."""
    return tuple(max(0, min(rows - k * shard_size, shard_size)) for k in range(shards))


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


# --- co-moments -------------------------------------------------------------------------------------


def _earliest_bad(a: Stats, b: Stats) -> tuple[Array, Array]:
    """The earlier of two global bad-value positions (rows already global, so order does not matter)."""
    a_has, b_has = a.bad_row != NO_BAD_ROW, b.bad_row != NO_BAD_ROW
    take_a = a_has & (~b_has | (a.bad_row <= b.bad_row))
    return jnp.where(take_a, a.bad_row, b.bad_row), jnp.where(take_a, a.bad_col, b.bad_col)


def band_rows(tile: Tile, neuron_shards: int) -> int:
    """Rows of ``tile`` each neuron shard computes (the last band is padded with zero rows)."""
    return _ceil(tile.r1 - tile.r0, neuron_shards)


def comoment_reduction(dim: int, tiles: tuple[Tile, ...], dtype, neuron_shards: int = 1):
    """Co-moments (:mod:`~jneuron.kernels.moments`) as a :class:`Reduction`, with their tiles banded.

    With ``neuron_shards > 1`` every tile's rows are cut into equal bands, one per ``"neurons"``
    shard; a device appends its band's columns to its chunk shard (masked past the tile's end) so the
    unchanged kernel computes only that band of the cross-product. Returns the reduction and the
    tiles it uses internally (pass them to :func:`stats_from_state`).
    """
    if neuron_shards == 1:
        inner = tiles
        extra = 0
    else:
        bands = [band_rows(t, neuron_shards) for t in tiles]
        starts = [dim + sum(bands[:i]) for i in range(len(tiles))]
        inner = tuple(Tile(s, s + b, t.c0, t.c1) for s, b, t in zip(starts, bands, tiles))
        extra = sum(bands)

    def chunk(x, n_valid, row0):
        if neuron_shards > 1:
            shard = jax.lax.axis_index(NEURONS)
            columns = [x]
            for tile, band in zip(tiles, bands):
                index = tile.r0 + shard * band + jnp.arange(band, dtype=shard.dtype)
                inside = index < tile.r1
                columns.append(jnp.where(inside[None, :], jnp.take(x, jnp.minimum(index, dim - 1), axis=1), 0))
            x = jnp.concatenate(columns, axis=1)
        stats = kmoments.chunk_stats(x, n_valid, inner, dtype)
        has_bad = stats.bad_row != NO_BAD_ROW
        return stats._replace(bad_row=jnp.where(has_bad, stats.bad_row + row0, NO_BAD_ROW).astype(stats.bad_row.dtype))

    def merge(a: Stats, b: Stats) -> Stats:
        bad_row, bad_col = _earliest_bad(a, b)
        return kmoments.merge(a, b, inner)._replace(bad_row=bad_row, bad_col=bad_col)

    reduction = Reduction(lambda: kmoments.init(dim + extra, inner, dtype), chunk, merge)
    return reduction, inner


def stats_from_state(total: Stats, dim: int, tiles: tuple[Tile, ...], mesh: Mesh) -> Stats:
    """Plain :class:`~jneuron.kernels.moments.Stats` (as one device would hold them) from a finalized state."""
    if NEURONS not in mesh.axis_names:
        return total

    def first(a):
        return a[0]

    def crop(pair: Pair, tile: Tile) -> Pair:
        return Pair(*(a.reshape((-1,) + a.shape[2:])[: tile.r1 - tile.r0] for a in pair))

    return Stats(
        count=first(total.count),
        mean=Pair(total.mean.hi[0, :dim], total.mean.lo[0, :dim]),
        m2=Pair(total.m2.hi[0, :dim], total.m2.lo[0, :dim]),
        low=total.low[0, :dim],
        high=total.high[0, :dim],
        cross=tuple(crop(pair, tile) for pair, tile in zip(total.cross, tiles)),
        bad_row=first(total.bad_row),
        bad_col=first(total.bad_col),
    )


# --- MaxCorr tile reduction over the neuron axis ----------------------------------------------------


def make_reduce_tile(mesh: Mesh, segments: tuple[tuple[int, int], ...], local: Callable | None = None) -> Callable:
    """A jitted MaxCorr tile reduction with the tile's rows split over the ``"neurons"`` mesh axis.

    Returns ``reduce(cross, inv_sd_rows, inv_sd_cols) -> (row partners, column partners)`` with the
    results of :func:`jneuron.kernels.maxcorr.reduce_tile`. Each device reduces its band of rows
    with ``local`` (default: the pure-JAX reduction); column partners are combined across bands
    with ``pmax`` of ``|rho|`` and ``pmin`` of the index (ties go to the lower row, as on one device).
    """
    shards = axis_size(mesh, NEURONS)
    local = local or (lambda cross, rows, cols: kmax.reduce_tile(cross, rows, cols, segments))

    def body(hi, lo, inv_rows, inv_cols):
        row, col = local(Pair(hi, lo), inv_rows, inv_cols)
        if shards == 1:
            return row, col
        unit = col.unit + jax.lax.axis_index(NEURONS).astype(col.unit.dtype) * hi.shape[0]
        size = jnp.abs(col.rho)
        best = jax.lax.pmax(size, NEURONS)
        chosen = jax.lax.pmin(jnp.where(size == best, unit, jnp.iinfo(unit.dtype).max), NEURONS)
        rho = jax.lax.psum(jnp.where(unit == chosen, col.rho, 0), NEURONS)
        return row, Partners(chosen, rho)

    rows_spec = P(NEURONS) if shards > 1 else P()
    mapped = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(rows_spec, rows_spec, rows_spec, P()),
        out_specs=(Partners(rows_spec, rows_spec), Partners(P(), P())),
        check_vma=False,  # a Pallas kernel inside does not declare how its outputs vary over the mesh
    )

    @jax.jit
    def reduce(cross: Pair, inv_sd_rows: Array, inv_sd_cols: Array):
        rows = cross.hi.shape[0]
        padded = shards * math.ceil(rows / shards)
        pad = ((0, padded - rows), (0, 0))
        banded, whole = NamedSharding(mesh, rows_spec), NamedSharding(mesh, P())
        hi, lo = (jax.reshard(jnp.pad(a, pad), banded) for a in cross)
        inv_rows = jax.reshard(jnp.pad(inv_sd_rows, (0, padded - rows)), banded)
        row, col = mapped(hi, lo, inv_rows, jax.reshard(jnp.asarray(inv_sd_cols), whole))
        row = jax.reshard(row, whole)
        return Partners(row.unit[:rows], row.rho[:rows]), col

    return reduce
