"""Fold a chunk source into streamed co-moments (the one pass every correlation analysis shares)."""

from __future__ import annotations

import hashlib
import inspect
import io
import itertools
import json
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jneuron.errors import JNeuronError
from jneuron.host_fold import HostFold
from jneuron.io_utils import atomic_write_bytes
from jneuron.kernels import moments as kmoments
from jneuron.kernels import sharded as ksharded
from jneuron.kernels.moments import Stats, Tile
from jneuron.kernels.sharded import NEURONS, TOKENS
from jneuron.precision import default_platform, working_dtype
from jneuron.prefetch import prefetch
from jneuron.sources import ArraySource, Source

CHUNK_BYTES = 64 * 2**20  # default size of one chunk of all models' columns (several are in flight with the prefetch)


def default_chunk_tokens(width: int, tokens: int | None = None) -> int:
    """Tokens per chunk: about ``CHUNK_BYTES`` of float32 columns (256 to 65,536 rows).

    When the token count is known, chunks are made near-equal so the padded last chunk wastes little.
    """
    rows = max(256, min(65536, CHUNK_BYTES // (4 * width)))
    if not tokens:
        return rows
    chunks = -(-tokens // rows)
    return -(-tokens // chunks)


def accumulate(
    source: Source,
    tiles: tuple[Tile, ...],
    chunk_tokens: int,
    *,
    mesh: Mesh | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 8,
    on_chunk: Callable[[int], None] | None = None,
    observe: Callable[[np.ndarray, int], None] | None = None,
    prefetch_depth: int | None = None,
) -> Stats:
    """One pass over ``source``: co-moments with the cross-product blocks named by ``tiles``.

    Every chunk is padded to ``chunk_tokens`` rows (padding is masked), so the update compiles once.
    Chunks are read ``prefetch_depth`` ahead on a background thread while the device folds in the current
    one (default: 2 where reading may wait on files or a user's iterator, 1 for arrays in memory, where
    a deeper queue would only hold more chunks). With a ``mesh`` (see :mod:`jneuron.sharding`) each chunk's tokens
    are split over its ``"tokens"`` axis and the cross-products' rows over its ``"neurons"`` axis; with
    several processes each reads its own ``source``. Raises :class:`JNeuronError` naming the model, row
    and neuron of the first NaN or Inf. The statistics are float64 for a float64 ``source`` inside
    :func:`jneuron.precision.follow_dtype`, else compensated float32 (see
    :func:`jneuron.precision.working_dtype`).

    Args:
      mesh: shard the pass over this mesh.
      checkpoint: a folder; the running statistics are saved there (atomically) every
        ``checkpoint_every`` chunks and at the end, one file per pass configuration. A later call with
        the same source layout, tiles, ``chunk_tokens`` and mesh shape resumes from the saved position
        and gives the same result as an uninterrupted run. Delete the folder to start over. Not with
        ``observe`` (the observer's own state is not saved) nor with several processes.
      on_chunk: called with the number of real rows after each chunk (progress reporting).
      observe: ``observe(chunk, rows)`` also sees every padded host chunk (``rows`` real), for analyses
        that need statistics beyond co-moments in the same pass (with a mesh, this process's chunks).
    """
    if checkpoint is not None and observe is not None:
        raise JNeuronError("checkpoint= cannot be combined with observe=: the observer's state is not saved")
    if mesh is not None:
        stats = _accumulate_sharded(source, tiles, chunk_tokens, mesh, on_chunk, observe, checkpoint,
                                    checkpoint_every)
        _raise_on_bad_value(stats, source)
        return stats
    width = sum(source.widths)
    stats = kmoments.init(width, tiles, working_dtype(source.dtype))
    done = 0
    file = None
    if checkpoint is not None:
        file = _checkpoint_file(checkpoint, source, tiles, chunk_tokens, stats.mean.hi.dtype)
        stats, done, finished = _load_checkpoint(file, stats)
        if finished:
            _raise_on_bad_value(stats, source)
            return stats
    cpu = on_cpu()
    fold = HostFold() if cpu else kmoments.update
    if cpu and observe is None and in_memory(source):
        # numpy arrays in memory: each model's rows are centred straight into the fold's buffer, so there
        # is nothing to read ahead (and no joined copy competing with the BLAS for the cores)
        chunks = ((len(parts[0]), parts) for parts in source.parts(chunk_tokens, start=done * chunk_tokens))
    else:
        depth = prefetch_depth or (1 if in_memory(source) else 2)
        chunks = prefetch(_skip(source, chunk_tokens, done), depth, _padder(chunk_tokens))
    for rows, chunk in chunks:
        stats = fold(stats, chunk, rows, tiles)
        if observe is not None:
            observe(chunk, rows)
        # Wait for this update before taking the next chunk: the read-ahead thread keeps I/O overlapped,
        # and without the wait JAX's asynchronous dispatch would queue every chunk read so far in memory.
        stats = jax.block_until_ready(stats)
        done += 1
        if on_chunk is not None:
            on_chunk(rows)
        if file is not None and done % max(1, checkpoint_every) == 0:
            _save_checkpoint(file, stats, done, finished=False)
    if file is not None:
        _save_checkpoint(file, stats, done, finished=True)
    _raise_on_bad_value(stats, source)
    return stats


def in_memory(source: Source) -> bool:
    """Whether reading ``source`` is only copying: numpy arrays held in memory (not memory-mapped files)."""
    return isinstance(source, ArraySource) and all(
        isinstance(a, np.ndarray) and not isinstance(a, np.memmap) for a in source.arrays)


def on_cpu() -> bool:
    """Whether JAX computes on the CPU here (its default device)."""
    return default_platform() == "cpu"


def _padder(chunk_tokens: int) -> Callable[[np.ndarray], tuple[int, np.ndarray]]:
    """Pad a chunk to ``chunk_tokens`` rows on the read-ahead thread.

    The chunk stays a host array: JAX's configuration (``jax.enable_x64`` contexts) is thread-local, so
    moving it to the device here would silently cast float64 to float32; the caller's thread does that.
    """

    def pad(chunk: np.ndarray) -> tuple[int, np.ndarray]:
        rows = chunk.shape[0]
        if rows < chunk_tokens:
            chunk = np.pad(chunk, ((0, chunk_tokens - rows), (0, 0)))
        return rows, chunk

    return pad


def _skip(source: Source, chunk_tokens: int, done: int) -> Iterator[np.ndarray]:
    """The chunks after the first ``done``: seek where the source can, else read and drop them."""
    if done and "start" in inspect.signature(source.chunks).parameters:
        return source.chunks(chunk_tokens, start=done * chunk_tokens)
    return itertools.islice(source.chunks(chunk_tokens), done, None)


def _checkpoint_file(folder, source: Source, tiles, chunk_tokens: int, dtype, mesh: Mesh | None = None) -> Path:
    layout = {
        "names": list(source.names), "widths": [int(w) for w in source.widths],
        "tokens": getattr(source, "tokens", None), "tiles": [list(t) for t in tiles],
        "chunk_tokens": int(chunk_tokens), "dtype": str(np.dtype(dtype)),
    }
    if mesh is not None:  # the running state has one statistic per device
        layout["mesh"] = {str(name): int(size) for name, size in mesh.shape.items()}
    digest = hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()[:16]
    return Path(folder) / f"stats-{digest}.npz"


def _load_checkpoint(file: Path, empty):
    if not file.is_file():
        return empty, 0, False
    leaves, treedef = jax.tree.flatten(empty)
    try:
        with np.load(file) as saved:
            loaded = [saved[f"leaf{i}"] for i in range(len(leaves))]
            done, finished = int(saved["chunks_done"]), bool(saved["finished"])
    except Exception as error:
        raise JNeuronError(f"{file}: unreadable checkpoint (delete it to start over): {error}") from None
    for i, (old, new) in enumerate(zip(leaves, loaded)):
        if old.shape != new.shape or old.dtype != new.dtype:
            raise JNeuronError(f"{file}: checkpoint leaf {i} does not match this run (delete it to start over)")
    placed = [jax.device_put(x, old.sharding) for old, x in zip(leaves, loaded)]  # sharded state stays sharded
    return jax.tree.unflatten(treedef, placed), done, finished


def _save_checkpoint(file: Path, stats, done: int, finished: bool) -> None:
    buffer = io.BytesIO()
    leaves = {f"leaf{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(stats))}
    np.savez(buffer, chunks_done=done, finished=finished, **leaves)
    atomic_write_bytes(file, buffer.getvalue())


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


def _accumulate_sharded(source: Source, tiles: tuple[Tile, ...], chunk_tokens: int, mesh: Mesh, on_chunk, observe,
                        checkpoint, checkpoint_every: int) -> Stats:
    dtype = working_dtype(source.dtype)
    reduction, to_stats = _comoment_reduction(mesh, sum(source.widths), tiles, dtype)
    file = None if checkpoint is None else _checkpoint_file(checkpoint, source, tiles, chunk_tokens, dtype, mesh)
    total = fold_sharded(source, reduction, chunk_tokens, mesh, on_chunk=on_chunk, observe=observe,
                         checkpoint=file, checkpoint_every=checkpoint_every)
    return to_stats(jax.device_put(total, NamedSharding(mesh, P())))


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


def fold_sharded(source: Source, reduction: ksharded.Reduction, chunk_tokens: int, mesh: Mesh, args: tuple = (),
                 on_chunk: Callable[[int], None] | None = None,
                 observe: Callable[[np.ndarray, int], None] | None = None, checkpoint: Path | None = None,
                 checkpoint_every: int = 8):
    """One pass over ``source`` folding every chunk into ``reduction`` on ``mesh``; the combined statistic.

    Each chunk (about ``chunk_tokens`` rows of this process's tokens, padded so the update compiles once)
    is split over the mesh's ``"tokens"`` axis; every device keeps its own running statistic; they are
    combined once at the end (:func:`jneuron.kernels.sharded.make_finalize`). With several processes
    (``jax.distributed``) each reads its own ``source`` and all take the same number of steps. Keep the
    same ``reduction`` object between calls: the compiled functions are cached on it. ``args`` (a tuple
    of arrays, replicated) are passed on to ``reduction.chunk`` after ``(x, n_valid, row0)``;
    ``on_chunk`` is called with the real rows of each chunk (progress reporting), ``observe`` with each
    padded host chunk and its real rows. ``checkpoint`` (a file) saves the devices' running statistics
    every ``checkpoint_every`` chunks and at the end, and resumes from it (one process only).
    """
    init, update, finalize = _compiled(reduction, mesh)
    dim = sum(source.widths)
    shards, local = ksharded.axis_size(mesh, TOKENS), local_token_shards(mesh)
    shard_size = -(-chunk_tokens // local)
    local_rows = shard_size * local
    rows_sharding = NamedSharding(mesh, P(TOKENS))
    state, done, finished = init(), 0, False
    if checkpoint is not None:
        if jax.process_count() > 1:
            raise JNeuronError("checkpoint= is not supported when several processes share the pass")
        state, done, finished = _load_checkpoint(checkpoint, state)
    position = _process_offset(source) + done * local_rows
    for chunk in () if finished else _agreed_chunks(_skip(source, local_rows, done)):
        rows = 0 if chunk is None else chunk.shape[0]
        padded = np.zeros((local_rows, dim), np.dtype(working_dtype(source.dtype)))
        if rows:
            padded[:rows] = chunk
        n_valid = np.asarray(ksharded.shard_rows(rows, shard_size, local), kmoments.count_dtype())
        row0 = (position + shard_size * np.arange(local)).astype(kmoments.count_dtype())
        x, n_valid, row0 = (
            jax.make_array_from_process_local_data(rows_sharding, a, (a.shape[0] * shards // local,) + a.shape[1:])
            for a in (padded, n_valid, row0)
        )
        state = jax.block_until_ready(update(state, x, n_valid, row0, *args))  # bound the chunks in flight
        if observe is not None and rows:
            observe(padded, rows)
        position += rows
        done += 1
        if on_chunk is not None and rows:
            on_chunk(rows)
        if checkpoint is not None and done % max(1, checkpoint_every) == 0:
            _save_checkpoint(checkpoint, state, done, finished=False)
    if checkpoint is not None and not finished:
        _save_checkpoint(checkpoint, state, done, finished=True)
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
