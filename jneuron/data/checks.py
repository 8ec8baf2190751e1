"""Input validation shared by the analyses: one clear error naming what was wrong and where.

>>> import numpy as np
>>> check_valid(np.array([True, False]), 2).tolist()
[True, False]
"""

from __future__ import annotations

import numpy as np

from jneuron.errors import JNeuronError

_ACCEPTED_KINDS = "fiub"  # float, signed/unsigned int, bool


def as_2d(array, what: str):
    """Check that ``array`` is a 2-D real array ``(tokens, neurons)``; returns it unchanged (no copy)."""
    shape = getattr(array, "shape", None)
    if shape is None:
        array = np.asarray(array)
        shape = array.shape
    if len(shape) != 2:
        raise JNeuronError(f"{what}: expected a 2-D array (tokens, neurons), got shape {tuple(shape)}")
    dtype = np.dtype(getattr(array, "dtype", np.float32))
    if dtype.kind not in _ACCEPTED_KINDS and dtype.name != "bfloat16":
        raise JNeuronError(f"{what}: expected real numbers, got dtype {dtype}")
    if shape[1] == 0:
        raise JNeuronError(f"{what}: has no neurons (shape {tuple(shape)})")
    return array


def check_min_tokens(count: int, what: str, minimum: int = 2) -> None:
    """Raise unless at least ``minimum`` tokens were seen."""
    if count < minimum:
        raise JNeuronError(f"{what}: need at least {minimum} tokens, got {count}")


def check_valid(valid, tokens: int | None, what: str = "valid") -> np.ndarray:
    """A row-validity mask checked: a 1-D boolean array of ``tokens`` entries (``True``: the row counts)."""
    mask = np.asarray(valid)
    if mask.dtype != np.bool_:
        raise JNeuronError(f"{what}: expected a boolean mask (True where a row counts), got dtype {mask.dtype}")
    if mask.ndim != 1 or (tokens is not None and len(mask) != tokens):
        expected = "(tokens,)" if tokens is None else f"({tokens},)"
        raise JNeuronError(f"{what}: expected shape {expected} (one entry per row), got {mask.shape}")
    return mask


def non_finite(where: str, row: int, neuron) -> JNeuronError:
    """The one error for a NaN or Inf in the data: where (model, layer), the caller's row (``row`` counted from 0,
    shown counted from 1) and the neuron."""
    prefix = f"{where}: " if where else ""
    return JNeuronError(f"{prefix}non-finite value (NaN or Inf) at row {row + 1}, neuron {neuron} (rows counted from 1)")


def check_finite(values, what: str, row0: int = 0) -> None:
    """Raise :func:`non_finite` for the first NaN or Inf of a ``(rows, neurons)`` host array (rows from ``row0``)."""
    values = np.asarray(values)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        row, column = np.argwhere(~np.isfinite(values))[0]
        raise non_finite(what, row0 + int(row), int(column))
