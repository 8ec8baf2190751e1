"""Fold a chunk source into streamed co-moments (the one pass every correlation analysis shares)."""

from __future__ import annotations

import hashlib
import inspect
import io
import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jneuron.errors import JNeuronError
from jneuron.io_utils import atomic_write_bytes
from jneuron.kernels import moments as kmoments
from jneuron.kernels.moments import Stats, Tile
from jneuron.prefetch import prefetch
from jneuron.sources import Source

CHUNK_BYTES = 64 * 2**20  # default size of one chunk of all models' columns (several are in flight with the prefetch)


def default_chunk_tokens(width: int, tokens: int | None = None) -> int:
    """Tokens per chunk: about ``CHUNK_BYTES`` of float32 columns, at least 256, at most ``tokens``."""
    rows = max(256, min(65536, CHUNK_BYTES // (4 * width)))
    return max(1, min(rows, tokens)) if tokens else rows


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
    *,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 8,
    on_chunk: Callable[[int], None] | None = None,
    prefetch_depth: int = 2,
) -> Stats:
    """One pass over ``source``: co-moments with the cross-product blocks named by ``tiles``.

    Every chunk is padded to ``chunk_tokens`` rows (padding is masked), so the update compiles once.
    Chunks are read (and moved to the device) ``prefetch_depth`` ahead on a background thread while the
    device folds in the current one. Raises :class:`JNeuronError` naming the model, row and neuron of the
    first NaN or Inf.

    Args:
      checkpoint: a folder; the running statistics are saved there (atomically) every
        ``checkpoint_every`` chunks and at the end, one file per pass configuration. A later call with
        the same source layout, tiles and ``chunk_tokens`` resumes from the saved position and gives
        the same result as an uninterrupted run. Delete the folder to start over.
      on_chunk: called with the number of real rows after each chunk (progress reporting).
    """
    width = sum(source.widths)
    stats = kmoments.init(width, tiles, accumulation_dtype(source))
    done = 0
    file = None
    if checkpoint is not None:
        file = _checkpoint_file(checkpoint, source, tiles, chunk_tokens, stats)
        stats, done, finished = _load_checkpoint(file, stats)
        if finished:
            _raise_on_bad_value(stats, source)
            return stats
    for rows, chunk in prefetch(_skip(source, chunk_tokens, done), prefetch_depth, _padder(chunk_tokens)):
        stats = kmoments.update(stats, chunk, rows, tiles)
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


def _padder(chunk_tokens: int) -> Callable[[np.ndarray], tuple[int, jax.Array]]:
    def pad(chunk: np.ndarray) -> tuple[int, jax.Array]:
        rows = chunk.shape[0]
        if rows < chunk_tokens:
            chunk = np.pad(chunk, ((0, chunk_tokens - rows), (0, 0)))
        return rows, jax.device_put(chunk)

    return pad


def _skip(source: Source, chunk_tokens: int, done: int) -> Iterator[np.ndarray]:
    """The chunks after the first ``done``: seek where the source can, else read and drop them."""
    if done and "start" in inspect.signature(source.chunks).parameters:
        return source.chunks(chunk_tokens, start=done * chunk_tokens)
    return itertools.islice(source.chunks(chunk_tokens), done, None)


def _checkpoint_file(folder, source: Source, tiles, chunk_tokens: int, stats: Stats) -> Path:
    layout = {
        "names": list(source.names), "widths": [int(w) for w in source.widths],
        "tokens": getattr(source, "tokens", None), "tiles": [list(t) for t in tiles],
        "chunk_tokens": int(chunk_tokens), "dtype": str(stats.mean.hi.dtype),
    }
    digest = hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()[:16]
    return Path(folder) / f"stats-{digest}.npz"


def _load_checkpoint(file: Path, empty: Stats) -> tuple[Stats, int, bool]:
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
    return jax.tree.unflatten(treedef, [jnp.asarray(x) for x in loaded]), done, finished


def _save_checkpoint(file: Path, stats: Stats, done: int, finished: bool) -> None:
    buffer = io.BytesIO()
    leaves = {f"leaf{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(stats))}
    np.savez(buffer, chunks_done=done, finished=finished, **leaves)
    atomic_write_bytes(file, buffer.getvalue())


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
