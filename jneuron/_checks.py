"""Input validation shared by the analyses: one clear error naming what was wrong and where."""

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
