"""The one streaming pass: a chunk source folded into running statistics, chunk by chunk.

Every streamed analysis runs here: co-moments (:func:`accumulate`; correlations, CCA, CKA, LinReg,
matching) and any other :class:`jneuron.kernels.sharded.Reduction` (:func:`run_pass`; information
counts, probeless class sums, neuron statistics). Both read ahead on a background thread, shard the tokens
over a mesh (``devices=`` / ``mesh=``), save and resume checkpoints (a folder, see
:mod:`jneuron.streaming.checkpoint`), report progress (``on_chunk``), drop the rows a source marks
invalid (:class:`jneuron.data.source.Rows`) before a chunk is padded to its compiled shape, and name the
model, neuron and caller's row of the first NaN or Inf. A :class:`HostReduction` is folded by numpy on
the host instead, with the same rows, progress, checkpoints and positions (the CPU route of analyses
that numpy counts faster than compiled code).

>>> import numpy as np, jax.numpy as jnp, jneuron as jn
>>> from jneuron.kernels.sharded import Reduction
>>> total = Reduction(init=lambda: jnp.zeros(2), chunk=lambda x, n, row0: x.sum(0))
>>> x = np.arange(10.0, dtype=np.float32).reshape(5, 2)
>>> valid = np.array([True, True, False, True, True])
>>> run_pass(jn.as_source([x], valid=valid), total, 2).state.tolist()
[16.0, 20.0]
"""

from __future__ import annotations

import bisect
import inspect
import itertools
from collections.abc import Callable, Iterator
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jneuron import config
from jneuron.data.checks import non_finite
from jneuron.data.source import ArraySource, Rows, Source, source_rows
from jneuron.errors import JNeuronError
from jneuron.kernels import moments as kmoments
from jneuron.kernels import sharded as ksharded
from jneuron.kernels.moments import Stats, Tile
from jneuron.kernels.sharded import NEURONS, TOKENS
from jneuron.precision import default_platform, working_dtype
from jneuron.streaming import checkpoint as ckpt
from jneuron.streaming.cpu_fold import HostFold
from jneuron.streaming.prefetch import prefetch



def default_chunk_tokens(width: int, tokens: int | None = None) -> int:
    """Tokens per chunk: about :data:`jneuron.config.CHUNK_BYTES` of float32 columns (256 to 65,536 rows).

    When the token count is known, chunks are made near-equal so the padded last chunk wastes little.
    """
    rows = max(256, min(65536, config.CHUNK_BYTES // (4 * width)))
    if not tokens:
        return rows
    chunks = -(-tokens // rows)
    return -(-tokens // chunks)


def chunk_callback(progress: bool, on_chunk: Callable[[int], None] | None, total: int | None,
                   what: str = "tokens") -> Callable[[int], None] | None:
    """The pass's ``on_chunk``: the caller's callback and, with ``progress``, a progress line on stderr."""
    callbacks = [] if on_chunk is None else [on_chunk]
    if progress:
        from jneuron.cli.progress import (
            Progress,  # the one progress line, shared with the command line
        )

        callbacks.append(Progress(total, enabled=True))
    if not callbacks:
        return None
    if len(callbacks) == 1:
        return callbacks[0]

    def both(rows: int) -> None:
        for callback in callbacks:
            callback(rows)

    return both


class Position:
    """Where the pass is in the caller's rows: invalid rows are dropped before a chunk is folded, so the
    statistics count ``counted`` rows of the ``read`` rows read; :meth:`caller_row` maps a counted row
    (as the kernels report it) back to the caller's row."""

    def __init__(self, counted: int = 0, read: int = 0):
        self.counted, self.read = counted, read
        self._resumed = (counted, read)
        self._starts: list[int] = []
        self._chunks: list[tuple[int, np.ndarray | None]] = []

    def take(self, rows: Rows) -> np.ndarray:
        """The valid rows of a chunk (the chunk itself when all are valid), recorded."""
        values = rows.parts
        valid = rows.valid
        mask = None if valid is None or valid.all() else valid
        kept = values if mask is None else values[mask]
        self._starts.append(self.counted)
        self._chunks.append((self.read, None if mask is None else np.packbits(mask)))  # a bit per row read
        self.counted += len(kept)
        self.read += len(values)
        return kept

    def caller_row(self, row: int) -> int:
        """The caller's row of counted row ``row``."""
        i = bisect.bisect_right(self._starts, row) - 1
        if i < 0:  # before a resumed pass's first chunk: where no row was invalid, the offset is known
            return row + self._resumed[1] - self._resumed[0]
        origin, packed = self._chunks[i]
        offset = row - self._starts[i]
        return origin + (offset if packed is None else int(np.flatnonzero(np.unpackbits(packed))[offset]))

    def check_some_valid(self) -> None:
        """Raise when rows were read but every one was marked invalid."""
        if self.read and not self.counted:
            raise JNeuronError(f"every one of the {self.read} rows is marked invalid (valid=False): no rows to analyse")


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
    a deeper queue would only hold more chunks). With a ``mesh`` (see :mod:`jneuron.streaming.mesh`) each chunk's tokens
    are split over its ``"tokens"`` axis and the cross-products' rows over its ``"neurons"`` axis; with
    several processes each reads its own ``source``. Raises :class:`JNeuronError` naming the model, row
    and neuron of the first NaN or Inf. The statistics are float64 for a float64 ``source`` inside
    :func:`jneuron.precision.follow_dtype`, else compensated float32 (see
    :func:`jneuron.precision.working_dtype`).

    Args:
      mesh: shard the pass over this mesh.
      checkpoint: a folder; the running statistics are saved there (atomically) every
        ``checkpoint_every`` chunks and at the end, one file per pass configuration and data
        (:func:`jneuron.streaming.checkpoint.checkpoint_binding`). A later call over the same data with the same tiles,
        ``chunk_tokens``, dtype and mesh shape resumes from the saved position and gives the same result
        as an uninterrupted run (bit for bit); a finished checkpoint is read back without a pass. A
        checkpoint written for other data (other arrays of the same shapes, a file changed since) is
        never used: the pass starts over with a :class:`~jneuron.errors.StaleCheckpointWarning`. A
        checkpoint whose counters or statistics do not match its digest is a :class:`JNeuronError`.
        Not with ``observe`` (the observer's own state is not saved) nor with several processes.
      on_chunk: called with the number of real rows after each chunk (progress reporting).
      observe: ``observe(chunk, rows)`` also sees every padded host chunk (``rows`` real), for analyses
        that need statistics beyond co-moments in the same pass (with a mesh, this process's chunks).
    """
    if checkpoint is not None and observe is not None:
        raise JNeuronError("checkpoint= cannot be combined with observe=: the observer's state is not saved")
    if mesh is not None:
        stats, position = _accumulate_sharded(source, tiles, chunk_tokens, mesh, on_chunk, observe, checkpoint,
                                              checkpoint_every)
        raise_on_bad_value(int(stats.bad_row), int(stats.bad_col), source, position)
        return stats
    width = sum(source.widths)
    stats = kmoments.init(width, tiles, working_dtype(source.dtype))
    done, position = 0, Position()
    file = binding = None
    if checkpoint is not None:
        file, binding = ckpt.checkpoint_file(checkpoint, source, tiles, chunk_tokens, stats.mean.hi.dtype)
        stats, done, finished, scale, saved = ckpt.load_checkpoint(
            file, stats, binding, chunk_tokens, ckpt.expected_rows(source), lambda s: int(s.count), position=True)
        position = Position(*saved)
        if scale is not None:
            stats = stats._replace(scale=kmoments.make_scale(scale, tiles))
        if finished:
            raise_on_bad_value(int(stats.bad_row), int(stats.bad_col), source, position)
            return stats
    cpu = on_cpu()
    fold = HostFold() if cpu else DeviceFold()
    if cpu and observe is None and in_memory(source) and source.valid is None:
        # numpy arrays in memory: each model's rows are centred straight into the fold's buffer, so there
        # is nothing to read ahead (and no joined copy competing with the BLAS for the cores)
        chunks = ((len(parts[0]), len(parts[0]), parts)
                  for parts in source.parts(chunk_tokens, start=done * chunk_tokens))
    else:
        depth = prefetch_depth or (1 if in_memory(source) else 2)
        chunks = prefetch(rows_after(source, chunk_tokens, done), depth, _padder(chunk_tokens, position))
    for rows, read, chunk in chunks:
        if rows:
            stats = fold(stats, chunk, rows, tiles)
            if observe is not None:
                observe(chunk, rows)
        # Wait for this update before taking the next chunk: the read-ahead thread keeps I/O overlapped,
        # and without the wait JAX's asynchronous dispatch would queue every chunk read so far in memory.
        stats = jax.block_until_ready(stats)
        done += 1
        if on_chunk is not None:
            on_chunk(read)
        if file is not None and done % max(1, checkpoint_every) == 0:
            ckpt.save_stats(file, stats, done, False, binding, _counted(position, stats))
    if file is not None:
        ckpt.save_stats(file, stats, done, True, binding, _counted(position, stats))
    raise_on_bad_value(int(stats.bad_row), int(stats.bad_col), source, position)
    position.check_some_valid()
    return stats


def _counted(position: Position, stats: Stats) -> tuple[int, int]:
    """``(rows counted, rows read)`` for a checkpoint (the in-memory path reads without a :class:`Position`)."""
    if position.read:
        return position.counted, position.read
    return int(stats.count), int(stats.count)


class DeviceFold:
    """``fold(stats, chunk, rows, tiles)``: :func:`jneuron.kernels.moments.update` on an accelerator, with
    the data scaled by powers of two where their range needs it (see :mod:`jneuron.kernels.moments`).

    Each chunk's largest values are taken on the device (one reduction, next to the chunk's products);
    ordinary data are never scaled.
    """

    def __call__(self, stats: Stats, chunk, rows: int, tiles: tuple[Tile, ...]) -> Stats:
        x = jnp.asarray(chunk)
        peak = np.asarray(kmoments.abs_max(x), np.float64)
        current = kmoments.exponents(stats)
        if kmoments.out_of_range(np.ldexp(peak, current), stats.mean.hi.dtype).any():
            new = kmoments.choose_exponents(current, kmoments.magnitude(stats), peak)
            if stats.scale is None or (new != current).any():
                stats = kmoments.rescaled(stats, new, tiles)
        return kmoments.update(stats, x, rows, tiles)


def in_memory(source: Source) -> bool:
    """Whether reading ``source`` is only copying: numpy arrays held in memory (not memory-mapped files)."""
    return isinstance(source, ArraySource) and all(
        isinstance(a, np.ndarray) and not isinstance(a, np.memmap) for a in source.arrays)


def on_cpu() -> bool:
    """Whether JAX computes on the CPU here (its default device)."""
    return default_platform() == "cpu"


def _padder(chunk_tokens: int, position: Position) -> Callable[[Rows], tuple[int, int, np.ndarray]]:
    """Drop a chunk's invalid rows and pad it to ``chunk_tokens`` rows on the read-ahead thread:
    ``(rows counted, rows read, padded chunk)``.

    The chunk stays a host array: JAX's configuration (``jax.enable_x64`` contexts) is thread-local, so
    moving it to the device here would silently cast float64 to float32; the caller's thread does that.
    """

    def pad(rows: Rows) -> tuple[int, int, np.ndarray]:
        chunk = position.take(rows)
        kept = chunk.shape[0]
        if kept < chunk_tokens:
            chunk = np.pad(chunk, ((0, chunk_tokens - kept), (0, 0)))
        return kept, len(rows.parts), chunk

    return pad


def rows_after(source: Source, chunk_tokens: int, done: int) -> Iterator[Rows]:
    """The chunks (:class:`Rows`) after the first ``done``: seek where the source can, else read and drop them."""
    method = getattr(source, "rows", None) or source.chunks
    if done and "start" in inspect.signature(method).parameters:
        return source_rows(source, chunk_tokens, start=done * chunk_tokens)
    return itertools.islice(source_rows(source, chunk_tokens), done, None)


def raise_on_bad_value(row: int, column: int, source: Source, position: Position, neurons=None) -> None:
    """The error naming the model (and layer), the caller's row and the neuron of the first NaN or Inf
    (``row`` as the kernels count it, < 0 for none); ``neurons``: a NeuronIndex naming every column."""
    if row < 0 or row == kmoments.NO_BAD_ROW:
        return
    starts = np.cumsum((0,) + tuple(source.widths))
    model = int(np.searchsorted(starts, column, side="right") - 1)
    where = f"model '{source.names[model]}'"
    neuron = column - int(starts[model])
    if neurons is not None and column < len(neurons):
        record = neurons.record(column)
        where = f"model '{record['model']}'" + (f", layer '{record['layer']}'" if record["layer"] else "")
        neuron = neurons.label(column)
    else:
        layers = getattr(source, "layers", None)
        if isinstance(layers, dict) and source.names[model] in layers:
            edge = 0
            for layer, width in layers[source.names[model]]:
                if neuron < edge + width:
                    where += f", layer '{layer}'" if layer else ""
                    break
                edge += width
    raise non_finite(where, position.caller_row(row), neuron)


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
    dim = sum(source.widths)
    reduction, to_stats = _comoment_reduction(mesh, dim, tiles, dtype)
    binding = None
    if checkpoint is not None:
        checkpoint, binding = ckpt.checkpoint_file(checkpoint, source, tiles, chunk_tokens, dtype, mesh)
    scaling = _ShardedScaling(mesh, dim, tiles, dtype)
    done = run_pass(source, reduction, chunk_tokens, mesh=mesh, on_chunk=on_chunk, observe=observe,
                    checkpoint=checkpoint, checkpoint_every=checkpoint_every, binding=binding, scaling=scaling)
    stats = to_stats(jax.device_put(done.state, NamedSharding(mesh, P())))
    if scaling.exponents is not None:
        stats = stats._replace(scale=kmoments.make_scale(scaling.exponents, tiles))
    return stats, done.position


class _ShardedScaling:
    """The power-of-two scaling of :mod:`jneuron.kernels.moments` for the sharded co-moment state.

    Every chunk's largest values are taken on the mesh (one reduction); when they leave the range, the
    exponents are chosen on the host (the same on every process) and every device's running statistics
    are moved to them. With a ``"neurons"`` axis each neuron shard also holds its bands of the tiles'
    rows as extra features, which move with the columns they copy.
    """

    def __init__(self, mesh: Mesh, dim: int, tiles: tuple[Tile, ...], dtype):
        self.mesh, self.dim, self.tiles, self.dtype = mesh, dim, tiles, np.dtype(dtype)
        self.exponents: np.ndarray | None = None
        self.shards = ksharded.axis_size(mesh, NEURONS)
        _, self.inner = ksharded.comoment_reduction(dim, tiles, dtype, self.shards)
        self.lead = (TOKENS, NEURONS) if NEURONS in mesh.axis_names else (TOKENS,)

    def __call__(self, state, x):
        peak = _replicated_host(kmoments.abs_max(x)).astype(np.float64)
        current = np.zeros(self.dim, np.int32) if self.exponents is None else self.exponents
        if kmoments.out_of_range(np.ldexp(peak, current), self.dtype).any():
            running = np.ldexp(_replicated_host(_state_magnitude(state, self.dim, len(self.lead))).astype(np.float64),
                               -current)
            new = kmoments.choose_exponents(current, np.where(np.isfinite(running), running, 0.0), peak)
            if self.exponents is None or (new != current).any():
                shifts = self._shifts(new - current)  # with neuron shards, one row per shard (sharded alike)
                shifts = jax.device_put(shifts, NamedSharding(self.mesh, P(NEURONS) if shifts.ndim == 2 else P()))
                state = _rescale_state(state, shifts, self.inner, len(self.lead), NamedSharding(self.mesh, P(*self.lead)))
                self.exponents = new
        if self.exponents is not None:
            x = _scale_columns(x, jnp.asarray(self.exponents), NamedSharding(self.mesh, P(TOKENS)))
        return state, x

    def _shifts(self, shift: np.ndarray) -> np.ndarray:
        """Per-feature shifts of every neuron shard's state (its extra band features follow their columns)."""
        if self.shards == 1:
            return shift.astype(np.int32)
        rows = []
        for k in range(self.shards):
            extra = [shift[np.minimum(t.r0 + k * ksharded.band_rows(t, self.shards) + np.arange(
                ksharded.band_rows(t, self.shards)), self.dim - 1)] for t in self.tiles]
            rows.append(np.concatenate([shift] + extra))
        return np.stack(rows).astype(np.int32)


def _replicated_host(array) -> np.ndarray:
    """A replicated (or single-device) array's value on this host, with one process or several."""
    return np.asarray(array.addressable_shards[0].data)


@partial(jax.jit, static_argnames=("dim", "depth"))
def _state_magnitude(state: Stats, dim: int, depth: int):
    """The largest root mean square of each feature over the devices' statistics (scaled domain): an upper
    bound of the pass's root mean square so far."""
    count = state.count.astype(state.mean.hi.dtype)[..., None]
    mean, m2 = state.mean.hi + state.mean.lo, state.m2.hi + state.m2.lo
    rms = jnp.sqrt(jnp.where(count > 0, jnp.maximum(m2, 0) / jnp.maximum(count, 1) + mean * mean, 0))
    return jnp.max(rms.reshape((-1, rms.shape[-1])), axis=0)[:dim]


@partial(jax.jit, static_argnames=("tiles", "depth", "sharding"))
def _rescale_state(state: Stats, shifts, tiles: tuple[Tile, ...], depth: int, sharding):
    def one(stats, shift):
        return kmoments.rescale(stats, shift, tiles)

    if depth == 1:
        fold = jax.vmap(one, in_axes=(0, None))  # over token shards
    elif shifts.ndim == 2:  # each neuron shard has its own band features
        fold = jax.vmap(jax.vmap(one), in_axes=(0, None))
    else:
        fold = jax.vmap(jax.vmap(one, in_axes=(0, None)), in_axes=(0, None))
    moved = fold(state, shifts)
    return jax.reshard(moved, sharding)


@partial(jax.jit, static_argnames=("sharding",))
def _scale_columns(x, exponents, sharding):
    return jax.reshard(jnp.ldexp(x, exponents[None, :]), sharding)


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


class PassResult(NamedTuple):
    """What :func:`run_pass` returns: the combined statistic and where the pass's rows came from."""

    state: Any
    position: Position


def on_host(state, mesh: Mesh | None):
    """A pass's combined statistic (:attr:`PassResult.state`) as numpy arrays, one copy kept of what every
    neuron shard of the mesh holds alike (each saw the same tokens)."""
    state = jax.tree.map(np.asarray, state)
    return jax.tree.map(lambda a: a[0], state) if mesh is not None and NEURONS in mesh.axis_names else state


class HostReduction(NamedTuple):
    """A streamed statistic folded on the host: :func:`run_pass` hands ``chunk`` each chunk's valid rows
    as a numpy array (no padding, no device copy) and keeps the running statistic as numpy arrays, for
    statistics that numpy (its BLAS, ``np.bincount``) computes faster on a CPU than compiled code.

    ``merge(running, chunk statistic)`` combines them in order (``None``: they add); the statistic's
    leaves are saved by the same checkpoint code as a device state.

    >>> import numpy as np, jneuron as jn
    >>> total = HostReduction(init=lambda: np.zeros(2), chunk=lambda x, n, row0: x.sum(0))
    >>> run_pass(jn.as_source([np.arange(6.0).reshape(3, 2)]), total, 2).state.tolist()
    [6.0, 9.0]
    """

    init: Callable[[], Any]
    chunk: Callable[..., Any]  # (x: the chunk's valid rows, n_valid, row0, *args) -> statistic
    merge: Callable[[Any, Any], Any] | None = None


def run_pass(source: Source, reduction: ksharded.Reduction | HostReduction, chunk_tokens: int, *,
             mesh: Mesh | None = None,
             args: tuple = (), on_chunk: Callable[[int], None] | None = None,
             observe: Callable[[np.ndarray, int], None] | None = None, checkpoint: str | Path | None = None,
             checkpoint_every: int = 8, key: dict | None = None, binding: str | None = None,
             scaling: _ShardedScaling | None = None) -> PassResult:
    """One pass over ``source`` folding every chunk into ``reduction``; the combined statistic.

    Each chunk (about ``chunk_tokens`` rows of this process's tokens, its invalid rows dropped, padded so
    the update compiles once) is split over the mesh's ``"tokens"`` axis (one device when ``mesh`` is
    None); every device keeps its own running statistic; they are combined once at the end
    (:func:`jneuron.kernels.sharded.make_finalize`). With several processes (``jax.distributed``) each
    reads its own ``source`` and all take the same number of steps. Keep the same ``reduction`` object
    between calls: the compiled functions are cached on it.

    Args:
      args: arrays passed on (replicated) to ``reduction.chunk`` after ``(x, n_valid, row0)``; ``row0``
        counts the rows the pass keeps (map it back with ``result.position.caller_row``).
      on_chunk: called with the rows read of each chunk (progress reporting).
      observe: called with each padded host chunk and its counted rows.
      checkpoint: a folder: the devices' running statistics are saved there every ``checkpoint_every``
        chunks and at the end, and a rerun over the same data and ``key`` resumes from them (one process
        only); a checkpoint of other data starts over with a :class:`~jneuron.errors.StaleCheckpointWarning`
        (see :mod:`jneuron.streaming.checkpoint`).
      key: what else the statistic depends on (JSON-ready: its parameters), part of the checkpoint's binding.
      binding, scaling: the co-moment pass's own (``checkpoint`` is then its file): see :func:`accumulate`.

    A :class:`HostReduction` runs on this process's host alone (no ``mesh``, one process), with
    everything else the same: valid rows, ``on_chunk``, checkpoints, ``result.position``.
    """
    if isinstance(reduction, HostReduction):
        return _run_host_pass(source, reduction, chunk_tokens, mesh, args, on_chunk, observe, checkpoint,
                              checkpoint_every, key)
    mesh = mesh if mesh is not None else _one_device_mesh()
    init, update, finalize = _compiled(reduction, mesh)
    dim = sum(source.widths)
    shards, local = ksharded.axis_size(mesh, TOKENS), local_token_shards(mesh)
    shard_size = -(-chunk_tokens // local)
    local_rows = shard_size * local
    rows_sharding = NamedSharding(mesh, P(TOKENS))
    state, done, finished, saved = init(), 0, False, (0, 0)
    file = None
    if checkpoint is not None:
        if jax.process_count() > 1:
            raise JNeuronError("checkpoint= is not supported when several processes share the pass")
        if binding is None:
            file, binding = ckpt.checkpoint_file(checkpoint, source, (), local_rows, working_dtype(source.dtype),
                                                 mesh, key)
        else:
            file = Path(checkpoint)
        count_of = _sharded_count if scaling is not None else None
        state, done, finished, exponents, saved = ckpt.load_checkpoint(
            file, state, binding, local_rows, ckpt.expected_rows(source), count_of, position=True)
        if scaling is not None:
            scaling.exponents = exponents
    offset = _process_offset(source)
    position = Position(saved[0] + offset, saved[1] + offset)
    for rows_in in () if finished else _agreed_chunks(rows_after(source, local_rows, done)):
        chunk = None if rows_in is None else position.take(rows_in)
        rows = 0 if chunk is None else chunk.shape[0]
        padded = np.zeros((local_rows, dim), np.dtype(working_dtype(source.dtype)))
        if rows:
            padded[:rows] = chunk
        n_valid = np.asarray(ksharded.shard_rows(rows, shard_size, local), kmoments.count_dtype())
        row0 = (position.counted - rows + shard_size * np.arange(local)).astype(kmoments.count_dtype())
        x, n_valid, row0 = (
            jax.make_array_from_process_local_data(rows_sharding, a, (a.shape[0] * shards // local,) + a.shape[1:])
            for a in (padded, n_valid, row0)
        )
        if scaling is not None:
            state, x = scaling(state, x)
        state = jax.block_until_ready(update(state, x, n_valid, row0, *args))  # bound the chunks in flight
        if observe is not None and rows:
            observe(padded, rows)
        done += 1
        if on_chunk is not None and rows_in is not None and len(rows_in.parts):
            on_chunk(len(rows_in.parts))
        if file is not None and done % max(1, checkpoint_every) == 0:
            ckpt.save_checkpoint(file, state, done, False, binding, _exponents_of(scaling),
                                 (position.counted, position.read))
    if file is not None and not finished:
        ckpt.save_checkpoint(file, state, done, True, binding, _exponents_of(scaling),
                             (position.counted, position.read))
    if not finished:
        position.check_some_valid()
    return PassResult(finalize(state), position)


def _run_host_pass(source: Source, reduction: HostReduction, chunk_tokens: int, mesh, args, on_chunk, observe,
                   checkpoint, checkpoint_every: int, key) -> PassResult:
    """:func:`run_pass` of a :class:`HostReduction`: numpy chunks folded on this host, in order."""
    if mesh is not None or jax.process_count() > 1:
        raise JNeuronError("a host reduction runs on this process alone: not with a mesh or several processes")
    dtype = np.dtype(working_dtype(source.dtype))
    state, done, finished, saved = reduction.init(), 0, False, (0, 0)
    file = binding = None
    if checkpoint is not None:
        file, binding = ckpt.checkpoint_file(checkpoint, source, (), chunk_tokens, dtype, None, key)
        state, done, finished, _, saved = ckpt.load_checkpoint(
            file, state, binding, chunk_tokens, ckpt.expected_rows(source), position=True)
    position = Position(*saved)
    merge = reduction.merge or (lambda a, b: jax.tree.map(np.add, a, b))
    for rows_in in () if finished else rows_after(source, chunk_tokens, done):
        chunk = np.asarray(position.take(rows_in), dtype)
        rows = chunk.shape[0]
        if rows:
            state = merge(state, reduction.chunk(chunk, rows, position.counted - rows, *args))
            if observe is not None:
                observe(chunk, rows)
        done += 1
        if on_chunk is not None and len(rows_in.parts):
            on_chunk(len(rows_in.parts))
        if file is not None and done % max(1, checkpoint_every) == 0:
            ckpt.save_checkpoint(file, state, done, False, binding, None, (position.counted, position.read))
    if file is not None and not finished:
        ckpt.save_checkpoint(file, state, done, True, binding, None, (position.counted, position.read))
    if not finished:
        position.check_some_valid()
    return PassResult(state, position)


@lru_cache(maxsize=1)
def _one_device_mesh() -> Mesh:
    """The default device alone, as a ``("tokens",)`` mesh (the unsharded pass)."""
    return jax.make_mesh((1,), (TOKENS,), axis_types=(AxisType.Explicit,), devices=jax.devices()[:1])


def _exponents_of(scaling: _ShardedScaling | None):
    return None if scaling is None else scaling.exponents


def _sharded_count(state: Stats) -> int:
    """Tokens in a sharded co-moment state (one process): the token shards' counts (of one neuron shard)."""
    count = np.asarray(state.count)
    return int(count.reshape(count.shape[0], -1)[:, 0].sum())


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
