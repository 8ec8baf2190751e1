"""Fold a chunk source into streamed co-moments (the one pass every correlation analysis shares)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jneuron.errors import JNeuronError
from jneuron.kernels import moments as kmoments
from jneuron.kernels.moments import Stats, Tile
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
    observe: Callable[[np.ndarray, int], None] | None = None,
) -> Stats:
    """One pass over ``source``: co-moments with the cross-product blocks named by ``tiles``.

    Every chunk is padded to ``chunk_tokens`` rows (padding is masked), so the update compiles once.
    ``observe(chunk, rows)``, if given, also sees every padded chunk (``rows`` real), for analyses that
    need statistics beyond co-moments in the same pass.
    Raises :class:`JNeuronError` naming the model, row and neuron of the first NaN or Inf.
    """
    width = sum(source.widths)
    stats = kmoments.init(width, tiles, accumulation_dtype(source))
    for chunk in source.chunks(chunk_tokens):
        rows = chunk.shape[0]
        if rows < chunk_tokens:
            chunk = np.pad(chunk, ((0, chunk_tokens - rows), (0, 0)))
        stats = kmoments.update(stats, chunk, rows, tiles)
        if observe is not None:
            observe(chunk, rows)
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
