"""Fold a chunk source into streamed co-moments (the one pass every correlation analysis shares)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jneuron.errors import JNeuronError
from jneuron.kernels import moments as kmoments
from jneuron.kernels import sharded as ksharded
from jneuron.kernels.moments import Stats, Tile
from jneuron.kernels.sharded import NEURONS, TOKENS
from jneuron.sources import Source

CHUNK_BYTES = 64 * 2**20  # default size of one chunk of all models' columns, in bytes


def default_chunk_tokens(width: int, tokens: int | None = None) -> int:
    """Tokens per chunk: about ``CHUNK_BYTES`` of float32 columns (256 to 65,536 rows).

    When the token count is known, chunks are made near-equal so the padded last chunk wastes little.
    """
    rows = max(256, min(65536, CHUNK_BYTES // (4 * width)))
    if not tokens:
        return rows
    chunks = -(-tokens // rows)
    return -(-tokens // chunks)


def accumulation_dtype(source: Source):
    """float64 where the caller gave float64 and JAX has it enabled; else compensated float32."""
    if source.dtype == np.float64 and jax.config.read("jax_enable_x64"):
        return jnp.float64
    return jnp.float32


def accumulate(
    source: Source,
    tiles: tuple[Tile, ...],
    chunk_tokens: int,
    column_names: Sequence[str] | Callable[[int], str] | None = None,
    mesh: Mesh | None = None,
) -> Stats:
    """One pass over ``source``: co-moments with the cross-product blocks named by ``tiles``.

    Every chunk is padded to ``chunk_tokens`` rows (padding is masked), so the update compiles once.
    With a ``mesh`` (see :mod:`jneuron.sharding`) each chunk's tokens are split over its ``"tokens"``
    axis and the cross-products' rows over its ``"neurons"`` axis; with several processes each reads
    its own ``source``. Raises :class:`JNeuronError` naming the model, row and neuron of the first NaN or Inf.
    """
    if mesh is not None:
        stats = _accumulate_sharded(source, tiles, chunk_tokens, mesh)
        _raise_on_bad_value(stats, source)
        return stats
    width = sum(source.widths)
    stats = kmoments.init(width, tiles, accumulation_dtype(source))
    for chunk in source.chunks(chunk_tokens):
        rows = chunk.shape[0]
        if rows < chunk_tokens:
            chunk = np.pad(chunk, ((0, chunk_tokens - rows), (0, 0)))
        stats = kmoments.update(stats, chunk, rows, tiles)
    _raise_on_bad_value(stats, source)
    return stats


def constant_columns(count: int, mean: np.ndarray, m2: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Boolean mask of constant (dead) columns: spread at the level of ``dtype``'s rounding of the mean."""
    spread = np.sqrt(np.maximum(m2, 0.0) / max(count, 1))
    return spread <= 8 * np.finfo(dtype).eps * np.abs(mean) + np.finfo(np.float32).tiny


def _raise_on_bad_value(stats: Stats, source: Source) -> None:
    row, column = int(stats.bad_row), int(stats.bad_col)
    if row == kmoments.NO_BAD_ROW:
        return
    starts = np.cumsum((0,) + tuple(source.widths))
    model = int(np.searchsorted(starts, column, side="right") - 1)
    raise JNeuronError(
        f"model '{source.names[model]}': non-finite value (NaN or Inf) at row {row}, "
        f"neuron {column - starts[model]}; first bad row is {row}"
    )


@lru_cache(maxsize=32)
def _comoment_reduction(mesh: Mesh, dim: int, tiles: tuple[Tile, ...], dtype):
    shards = ksharded.axis_size(mesh, NEURONS)
    reduction, _ = ksharded.comoment_reduction(dim, tiles, dtype, shards)
    to_stats = jax.jit(lambda total: ksharded.stats_from_state(total, dim, tiles, mesh),
                       out_shardings=NamedSharding(mesh, P()))
    return reduction, to_stats


def _accumulate_sharded(source: Source, tiles: tuple[Tile, ...], chunk_tokens: int, mesh: Mesh) -> Stats:
    reduction, to_stats = _comoment_reduction(mesh, sum(source.widths), tiles, accumulation_dtype(source))
    return to_stats(jax.device_put(fold_sharded(source, reduction, chunk_tokens, mesh), NamedSharding(mesh, P())))


@lru_cache(maxsize=64)
def _compiled(reduction: ksharded.Reduction, mesh: Mesh):
    return (ksharded.make_init(reduction, mesh), ksharded.make_update(reduction, mesh),
            ksharded.make_finalize(reduction, mesh))


def local_token_shards(mesh: Mesh) -> int:
    """How many of the mesh's token shards live on this process's devices."""
    tokens_axis = list(mesh.axis_names).index(TOKENS)
    devices = np.moveaxis(mesh.devices, tokens_axis, 0).reshape(mesh.devices.shape[tokens_axis], -1)
    here = jax.process_index()
    return sum(any(d.process_index == here for d in row) for row in devices)


def fold_sharded(source: Source, reduction: ksharded.Reduction, chunk_tokens: int, mesh: Mesh, args: tuple = ()):
    """One pass over ``source`` folding every chunk into ``reduction`` on ``mesh``; the combined statistic.

    Each chunk (about ``chunk_tokens`` rows of this process's tokens, padded so the update compiles once)
    is split over the mesh's ``"tokens"`` axis; every device keeps its own running statistic; they are
    combined once at the end (:func:`jneuron.kernels.sharded.make_finalize`). With several processes
    (``jax.distributed``) each reads its own ``source`` and all take the same number of steps. Keep the
    same ``reduction`` object between calls: the compiled functions are cached on it. ``args`` (a tuple
    of arrays, replicated) are passed on to ``reduction.chunk`` after ``(x, n_valid, row0)``.
    """
    init, update, finalize = _compiled(reduction, mesh)
    dim = sum(source.widths)
    shards, local = ksharded.axis_size(mesh, TOKENS), local_token_shards(mesh)
    shard_size = -(-chunk_tokens // local)
    local_rows = shard_size * local
    rows_sharding = NamedSharding(mesh, P(TOKENS))
    state = init()
    position = _process_offset(source)
    for chunk in _agreed_chunks(source.chunks(local_rows)):
        rows = 0 if chunk is None else chunk.shape[0]
        padded = np.zeros((local_rows, dim), np.dtype(accumulation_dtype(source)))
        if rows:
            padded[:rows] = chunk
        n_valid = np.asarray(ksharded.shard_rows(rows, shard_size, local), kmoments.count_dtype())
        row0 = (position + shard_size * np.arange(local)).astype(kmoments.count_dtype())
        x, n_valid, row0 = (
            jax.make_array_from_process_local_data(rows_sharding, a, (a.shape[0] * shards // local,) + a.shape[1:])
            for a in (padded, n_valid, row0)
        )
        state = update(state, x, n_valid, row0, *args)
        position += rows
    return finalize(state)


def _process_offset(source: Source) -> int:
    """Global index of this process's first token: earlier processes' token counts, where all know theirs."""
    if jax.process_count() == 1:
        return 0
    counts = multihost_utils.process_allgather(np.asarray(getattr(source, "tokens", None) or -1, np.int32))
    return int(counts[: jax.process_index()].sum()) if (counts >= 0).all() else 0


def _agreed_chunks(chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray | None]:
    """This process's chunks, then ``None`` (no tokens) until every process has run out of chunks."""
    if jax.process_count() == 1:
        yield from chunks
        return
    while True:
        chunk = next(chunks, None)
        if not multihost_utils.process_allgather(np.asarray(chunk is not None)).any():
            return
        yield chunk
