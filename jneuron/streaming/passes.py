"""Fold a chunk source into streamed co-moments (the one pass every correlation analysis shares)."""

from __future__ import annotations

import hashlib
import inspect
import io
import itertools
import json
import os
import warnings
from collections.abc import Callable, Iterator
from functools import lru_cache, partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jneuron import config
from jneuron.data.atomic import atomic_write_bytes
from jneuron.data.source import ArraySource, IteratorSource, Source
from jneuron.errors import JNeuronError, StaleCheckpointWarning
from jneuron.kernels import moments as kmoments
from jneuron.kernels import sharded as ksharded
from jneuron.kernels.moments import Stats, Tile
from jneuron.kernels.sharded import NEURONS, TOKENS
from jneuron.precision import default_platform, working_dtype
from jneuron.streaming.cpu_fold import HostFold
from jneuron.streaming.prefetch import prefetch

CONTENT_ROWS = 1024  # rows at each end of the data whose bytes a checkpoint is bound to (with files' sizes and times)


def default_chunk_tokens(width: int, tokens: int | None = None) -> int:
    """Tokens per chunk: about :data:`jneuron.config.CHUNK_BYTES` of float32 columns (256 to 65,536 rows).

    When the token count is known, chunks are made near-equal so the padded last chunk wastes little.
    """
    rows = max(256, min(65536, config.CHUNK_BYTES // (4 * width)))
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
        (:func:`checkpoint_binding`). A later call over the same data with the same tiles,
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
        stats = _accumulate_sharded(source, tiles, chunk_tokens, mesh, on_chunk, observe, checkpoint,
                                    checkpoint_every)
        _raise_on_bad_value(stats, source)
        return stats
    width = sum(source.widths)
    stats = kmoments.init(width, tiles, working_dtype(source.dtype))
    done = 0
    file = binding = None
    if checkpoint is not None:
        file, binding = _checkpoint_file(checkpoint, source, tiles, chunk_tokens, stats.mean.hi.dtype)
        stats, done, finished, scale = _load_checkpoint(file, stats, binding, chunk_tokens, _expected_rows(source),
                                                        lambda s: int(s.count))
        if scale is not None:
            stats = stats._replace(scale=kmoments.make_scale(scale, tiles))
        if finished:
            _raise_on_bad_value(stats, source)
            return stats
    cpu = on_cpu()
    fold = HostFold() if cpu else DeviceFold()
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
            _save_stats(file, stats, done, False, binding)
    if file is not None:
        _save_stats(file, stats, done, True, binding)
    _raise_on_bad_value(stats, source)
    return stats


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


def checkpoint_binding(source: Source, chunk_tokens: int) -> tuple[dict, dict]:
    """What a checkpoint of a pass over ``source`` is bound to: ``(identity, state)``, both JSON-ready.

    ``identity`` names the data: the source's kind, model names, widths, token count and dtype; for
    files (:func:`jneuron.open_activations`), the files' resolved paths and the selected (model, layer) columns; for
    memory-mapped arrays, their files. It picks the checkpoint file, so each data set (a loop over
    layers, say) keeps its own. ``state`` says whether the data are still the same: every file's size
    and modification time (every file in a store's folder), and a blake2b hash of the first and last
    ``CONTENT_ROWS`` rows; for numpy arrays in memory also a checksum over all their bytes (about
    0.15 s per GiB), so a value changed anywhere counts. An iterator that can be read only once is
    bound to its first chunk only (the one it has already given), a re-iterable callable or other
    source to its first ``chunk_tokens`` rows, read once more.
    """
    identity = {"kind": type(source).__name__, "names": list(source.names),
                "widths": [int(w) for w in source.widths], "tokens": getattr(source, "tokens", None),
                "source_dtype": str(np.dtype(source.dtype))}
    state: dict = {}
    columns = getattr(source, "columns", None)
    if columns is not None and hasattr(source, "path"):  # a FileSource: files by path (" + " joins several)
        identity["columns"] = [[c.model, c.layer, int(c.width), str(np.dtype(c.dtype))] for c in columns]
        paths = [Path(p) for p in str(source.path).split(" + ")]
        identity["files"] = [str(p.resolve()) for p in paths]
        state["files"] = [_file_state(p) for p in paths]
    if isinstance(source, ArraySource):
        arrays = []
        for a in source.arrays:
            entry = {"shape": list(a.shape), "dtype": str(np.dtype(a.dtype))}
            if isinstance(a, np.memmap) and getattr(a, "filename", None):
                entry["file"] = str(Path(a.filename).resolve())
            arrays.append(entry)
        identity["arrays"] = arrays
        state["files"] = [_file_state(Path(e["file"])) for e in arrays if "file" in e]
        state["checksums"] = [_checksum(a) for a in source.arrays]
    state["content"] = _content_hash(source, chunk_tokens)
    return identity, state


def _file_state(path: Path) -> list:
    """``[relative path, size, mtime_ns]`` of a file, or of every file under a folder; ``[]`` if missing."""
    try:
        if not path.is_dir():
            info = path.stat()
            return [[path.name, info.st_size, info.st_mtime_ns]]
        entries = []
        for folder, _, names in sorted(os.walk(path)):
            for name in sorted(names):
                full = Path(folder) / name
                info = full.stat()
                entries.append([str(full.relative_to(path)), info.st_size, info.st_mtime_ns])
        return entries
    except OSError:
        return []


def _checksum(array) -> str | None:
    """A checksum over every byte of a numpy array held in memory (None for others: files have their
    sizes and times, device arrays are not copied to the host for it)."""
    if not isinstance(array, np.ndarray) or isinstance(array, np.memmap):
        return None
    if array.flags.c_contiguous and array.nbytes % 8 == 0:
        return str(int(np.add.reduce(array.reshape(-1).view(np.uint64), dtype=np.uint64)))
    return repr(float(np.sum(array, dtype=np.float64)))  # a strided view: its float64 sum


def _content_hash(source: Source, chunk_tokens: int) -> str:
    """blake2b of the first and last ``CONTENT_ROWS`` rows (see :func:`checkpoint_binding`)."""
    digest = hashlib.blake2b(digest_size=16)

    def add(block) -> None:
        block = np.ascontiguousarray(np.asarray(block))
        digest.update(str((block.shape, block.dtype.str)).encode())
        digest.update(block.tobytes())

    tokens = getattr(source, "tokens", None)
    rows = min(CONTENT_ROWS, chunk_tokens)
    if isinstance(source, ArraySource):
        for a in source.arrays:
            add(a[:rows])
            add(a[max(0, tokens - rows):])
    elif hasattr(source, "read") and tokens:  # a FileSource reads any token range
        add(source.read(0, min(rows, tokens)))
        add(source.read(max(0, tokens - rows), tokens))
    elif isinstance(source, IteratorSource):
        if source.first is not None:
            for part in source.first if isinstance(source.first, (tuple, list)) else [source.first]:
                add(part)
    elif source.reiterable:
        add(next(iter(source.chunks(chunk_tokens)), np.zeros((0, 0))))
    return digest.hexdigest()


def _checkpoint_file(folder, source: Source, tiles, chunk_tokens: int, dtype,
                     mesh: Mesh | None = None) -> tuple[Path, str]:
    """The checkpoint file of this pass configuration and data, and the binding it must carry."""
    identity, state = checkpoint_binding(source, chunk_tokens)
    layout = {**identity, "tiles": [list(t) for t in tiles], "chunk_tokens": int(chunk_tokens),
              "dtype": str(np.dtype(dtype))}
    if mesh is not None:  # the running state has one statistic per device
        layout["mesh"] = {str(name): int(size) for name, size in mesh.shape.items()}
    key = json.dumps(layout, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(folder) / f"stats-{digest}.npz", json.dumps({"layout": layout, "data": state}, sort_keys=True)


def _expected_rows(source: Source) -> int | None:
    """Tokens of a source read in regular chunks (then ``count == min(chunks done * rows, tokens)``)."""
    return None if isinstance(source, IteratorSource) else getattr(source, "tokens", None)


def _digest(binding: str, done: int, finished: bool, scale, leaves) -> str:
    """blake2b over everything a checkpoint holds: a changed counter or statistic does not match it."""
    digest = hashlib.blake2b(digest_size=32)
    digest.update(json.dumps([binding, int(done), bool(finished)]).encode())
    for array in ([] if scale is None else [np.asarray(scale)]) + [np.asarray(x) for x in leaves]:
        array = np.ascontiguousarray(array)
        digest.update(str((array.shape, array.dtype.str)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _load_checkpoint(file: Path, empty, binding: str, rows_per_chunk: int, tokens: int | None,
                     count_of: Callable | None = None):
    """``(state, chunks done, finished, scale exponents or None)`` from ``file``; an empty start when there
    is none or it belongs to other data (with a :class:`StaleCheckpointWarning`)."""
    if not file.is_file():
        return empty, 0, False, None
    leaves, treedef = jax.tree.flatten(empty)
    try:
        with np.load(file) as saved:
            stored = str(saved["binding"]) if "binding" in saved else None
            if stored != binding:
                _warn_stale(file, stored, binding)
                return empty, 0, False, None
            loaded = [saved[f"leaf{i}"] for i in range(len(leaves))]
            done, finished = int(saved["chunks_done"]), bool(saved["finished"])
            scale = saved["scale"] if "scale" in saved else None
            digest = str(saved["digest"])
    except Exception as error:
        raise JNeuronError(f"{file}: unreadable checkpoint (delete it to start over): {error}") from None
    if _digest(binding, done, finished, scale, loaded) != digest:
        raise JNeuronError(f"{file}: checkpoint does not match its digest (edited or damaged); delete it to "
                           "start over")
    for i, (old, new) in enumerate(zip(leaves, loaded)):
        if old.shape != new.shape or old.dtype != new.dtype:
            raise JNeuronError(f"{file}: checkpoint leaf {i} does not match this run (delete it to start over)")
    placed = [jax.device_put(x, old.sharding) for old, x in zip(leaves, loaded)]  # sharded state stays sharded
    state = jax.tree.unflatten(treedef, placed)
    if count_of is not None:
        count = count_of(state)
        expected = done * rows_per_chunk if tokens is None else min(done * rows_per_chunk, tokens)
        wrong = count > expected if tokens is None else (count != expected or (finished and count != tokens))
        if done < 0 or wrong:
            raise JNeuronError(f"{file}: checkpoint counts {count} tokens after {done} chunks of {rows_per_chunk} "
                               f"rows (of {tokens if tokens is not None else 'unknown'}); delete it to start over")
    return state, done, finished, None if scale is None else np.asarray(scale, np.int32)


def _warn_stale(file: Path, stored: str | None, binding: str) -> None:
    """One line: the checkpoint is someone else's, and what differs."""
    if stored is None:
        why = "it predates data binding"
    else:
        try:
            old, new = json.loads(stored), json.loads(binding)
            changed = [k for k in new["layout"] if old["layout"].get(k) != new["layout"][k]]
            changed += [k for k in new["data"] if old["data"].get(k) != new["data"][k]]
        except (ValueError, KeyError, TypeError, AttributeError):  # another version's binding
            changed = []
        names = {"files": "the files changed since", "content": "the data differ", "checksums": "the data differ"}
        why = ", ".join(dict.fromkeys(names.get(k, k) for k in changed)) or "its binding differs"
    warnings.warn(f"{file}: checkpoint written for other data ({why}); starting over", StaleCheckpointWarning,
                  stacklevel=4)


def _save_checkpoint(file: Path, state, done: int, finished: bool, binding: str, scale=None) -> None:
    buffer = io.BytesIO()
    leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
    extra = {} if scale is None else {"scale": np.asarray(scale, np.int32)}
    np.savez(buffer, chunks_done=done, finished=finished, binding=np.asarray(binding),
             digest=np.asarray(_digest(binding, done, finished, extra.get("scale"), leaves)), **extra,
             **{f"leaf{i}": x for i, x in enumerate(leaves)})
    atomic_write_bytes(file, buffer.getvalue())


def _save_stats(file: Path, stats: Stats, done: int, finished: bool, binding: str) -> None:
    scale = None if stats.scale is None else kmoments.exponents(stats)
    _save_checkpoint(file, stats._replace(scale=None), done, finished, binding, scale)


def constant_columns(count: int, mean: np.ndarray, m2: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Boolean mask of constant (dead) columns: spread at the level of ``dtype``'s rounding of the mean.

    Constant relative to the neuron's own magnitude: a neuron of values about ``1e-30`` that vary is
    alive; one whose values are all equal (zero included) is dead. ``mean`` and ``m2`` may be read in
    the scaled domain of :class:`jneuron.kernels.moments.Scale` (the test is scale-free).
    """
    spread = np.sqrt(np.maximum(m2, 0.0) / max(count, 1))
    return spread <= 8 * np.finfo(dtype).eps * np.abs(mean)


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
    dim = sum(source.widths)
    reduction, to_stats = _comoment_reduction(mesh, dim, tiles, dtype)
    file = binding = None
    if checkpoint is not None:
        file, binding = _checkpoint_file(checkpoint, source, tiles, chunk_tokens, dtype, mesh)
    scaling = _ShardedScaling(mesh, dim, tiles, dtype)
    total = fold_sharded(source, reduction, chunk_tokens, mesh, on_chunk=on_chunk, observe=observe,
                         checkpoint=file, checkpoint_every=checkpoint_every, binding=binding, scaling=scaling)
    stats = to_stats(jax.device_put(total, NamedSharding(mesh, P())))
    if scaling.exponents is not None:
        stats = stats._replace(scale=kmoments.make_scale(scaling.exponents, tiles))
    return stats


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


def fold_sharded(source: Source, reduction: ksharded.Reduction, chunk_tokens: int, mesh: Mesh, args: tuple = (),
                 on_chunk: Callable[[int], None] | None = None,
                 observe: Callable[[np.ndarray, int], None] | None = None, checkpoint: Path | None = None,
                 checkpoint_every: int = 8, binding: str | None = None, scaling: _ShardedScaling | None = None):
    """One pass over ``source`` folding every chunk into ``reduction`` on ``mesh``; the combined statistic.

    Each chunk (about ``chunk_tokens`` rows of this process's tokens, padded so the update compiles once)
    is split over the mesh's ``"tokens"`` axis; every device keeps its own running statistic; they are
    combined once at the end (:func:`jneuron.kernels.sharded.make_finalize`). With several processes
    (``jax.distributed``) each reads its own ``source`` and all take the same number of steps. Keep the
    same ``reduction`` object between calls: the compiled functions are cached on it. ``args`` (a tuple
    of arrays, replicated) are passed on to ``reduction.chunk`` after ``(x, n_valid, row0)``;
    ``on_chunk`` is called with the real rows of each chunk (progress reporting), ``observe`` with each
    padded host chunk and its real rows. ``checkpoint`` (a file) saves the devices' running statistics
    every ``checkpoint_every`` chunks and at the end, and resumes from it (one process only), bound to
    ``binding`` (default: the source's :func:`checkpoint_binding` and the mesh; a checkpoint of other
    data starts over with a :class:`~jneuron.errors.StaleCheckpointWarning`). ``scaling`` (co-moments
    only) scales data whose range needs it (see :mod:`jneuron.kernels.moments`).
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
        if binding is None:
            identity, data = checkpoint_binding(source, local_rows)
            binding = json.dumps({"layout": {**identity, "rows": local_rows, "mesh": dict(mesh.shape)},
                                  "data": data}, sort_keys=True)
        count_of = _sharded_count if scaling is not None else None
        state, done, finished, exponents = _load_checkpoint(checkpoint, state, binding, local_rows,
                                                            _expected_rows(source), count_of)
        if scaling is not None:
            scaling.exponents = exponents
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
        if scaling is not None:
            state, x = scaling(state, x)
        state = jax.block_until_ready(update(state, x, n_valid, row0, *args))  # bound the chunks in flight
        if observe is not None and rows:
            observe(padded, rows)
        position += rows
        done += 1
        if on_chunk is not None and rows:
            on_chunk(rows)
        if checkpoint is not None and done % max(1, checkpoint_every) == 0:
            _save_checkpoint(checkpoint, state, done, False, binding, _exponents_of(scaling))
    if checkpoint is not None and not finished:
        _save_checkpoint(checkpoint, state, done, True, binding, _exponents_of(scaling))
    return finalize(state)


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
