"""Which neurons are constant: the one rule every analysis applies.

A neuron is *constant* (dead) over the rows an analysis reads when all its values lie within
:data:`jneuron.config.CONSTANT_ROUNDINGS` roundings of its own magnitude::

    max - min <= CONSTANT_ROUNDINGS * eps(dtype) * max(|min|, |max|)

Exactly equal values (zeros included) are constant; a neuron of values about ``1e-30`` that vary is not
(the rule is scale-free); one at ``1e4`` that moves by a few units of its rounding is. The range is exact
(a minimum and a maximum round nothing) and combines over chunks and devices exactly, so every analysis,
streamed or in memory, sharded or not, finds the same set. Each analysis gives constant neurons its
neutral score (correlation 0, weight 0, information 0, class-mean distance 0), lists them in its result's
``dead``, ranks them last and says so once with a :class:`jneuron.errors.DeadNeuronWarning`.

A streamed statistic gets the range beside it with :func:`with_range`.

>>> import numpy as np
>>> x = np.stack([np.full(4, 3.0), 1e4 + np.array([0, 1e-3, 0, 0]), 1e-30 * np.arange(4.0)], 1).astype(np.float32)
>>> constant_neurons(x.min(0), x.max(0), np.float32).tolist()
[True, True, False]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jneuron import config
from jneuron.errors import DeadNeuronWarning
from jneuron.kernels import quantize as kquant
from jneuron.kernels import sharded as ksharded
from jneuron.streaming import cpu_counts

SHOWN = 10  # constant neurons named in a warning (the rest are counted)


def constant_neurons(low, high, dtype) -> np.ndarray:
    """Boolean mask of constant neurons from their minimum and maximum over the rows read (``dtype``: the
    precision the values are held in). A neuron that saw no row (``low = inf``) is constant."""
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    with np.errstate(invalid="ignore"):
        size = np.fmax(np.abs(low), np.abs(high))
        return (high - low) <= config.CONSTANT_ROUNDINGS * np.finfo(dtype).eps * np.where(np.isfinite(size), size, 0)


def warn_constant(what: str, labels: Sequence[str], effect: str, stacklevel: int = 2) -> None:
    """The one warning about constant neurons: ``"{what}: N constant neuron(s) {effect}: a, b and M more"``."""
    if not len(labels):
        return
    shown = ", ".join(labels[:SHOWN])
    more = f" and {len(labels) - SHOWN} more" if len(labels) > SHOWN else ""
    warnings.warn(f"{what}: {len(labels)} constant neuron(s) {effect}: {shown}{more}", DeadNeuronWarning,
                  stacklevel=stacklevel + 1)


class Ranged(NamedTuple):
    """A streamed statistic and the per-neuron minimum and maximum of the same rows."""

    state: Any
    low: Any
    high: Any


@lru_cache(maxsize=32)  # one object per statistic, so its compiled pass is reused
def with_range(reduction, width: int, dtype):
    """``reduction`` (a :class:`jneuron.kernels.sharded.Reduction`, or a host one) with the minimum and
    maximum of the chunk's first ``width`` columns kept beside its statistic (a :class:`Ranged` state), in
    ``dtype`` (the precision the values are read in, so both are exact).

    >>> import jax.numpy as jnp
    >>> total = ksharded.Reduction(init=lambda: jnp.zeros(()), chunk=lambda x, n, row0: x[:n].sum())
    >>> ranged = with_range(total, 2, jnp.float32)
    >>> state = ranged.merge(ranged.init(), ranged.chunk(jnp.array([[1.0, 5.0], [2.0, 5.0], [9.0, 9.0]]), 2, 0))
    >>> float(state.state), state.low.tolist(), state.high.tolist()
    (13.0, [1.0, 5.0], [2.0, 5.0])
    """
    host = not isinstance(reduction, ksharded.Reduction)
    xp = np if host else jnp
    add = reduction.merge or (lambda a, b: jax.tree.map(lambda u, v: u + v, a, b))

    def init():
        return Ranged(reduction.init(), xp.full(width, xp.inf, dtype), xp.full(width, -xp.inf, dtype))

    def chunk(columns, n_valid, row0, *args):
        x = columns[:, :width]
        if not host:
            low, high = kquant.minmax(x.astype(dtype), n_valid)
        elif n_valid:
            low, high = cpu_counts.minmax(x.astype(dtype, copy=False), n_valid)
        else:  # no valid row: nothing seen
            low, high = np.full(width, np.inf, dtype), np.full(width, -np.inf, dtype)
        return Ranged(reduction.chunk(columns, n_valid, row0, *args), low, high)

    def merge(a: Ranged, b: Ranged) -> Ranged:
        return Ranged(add(a.state, b.state), xp.fmin(a.low, b.low), xp.fmax(a.high, b.high))

    return type(reduction)(init, chunk, merge)

