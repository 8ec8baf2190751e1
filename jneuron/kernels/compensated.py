"""Compensated (two-float) accumulation: float64-like sums from float32 arithmetic.

A :class:`Pair` holds a value as ``hi + lo``; adding into it with :func:`add` keeps the rounding error
of every addition in ``lo`` (Neumaier's variant of Kahan summation, built on Knuth's TwoSum). On
platforms without float64 (most accelerators, or JAX with x64 off) this keeps cross-chunk sums of
co-moments accurate to about float64 level instead of losing digits with every merged chunk.

>>> import jax.numpy as jnp
>>> p = zeros((), jnp.float32)
>>> for _ in range(1000):
...     p = add(p, jnp.float32(0.1))
>>> abs(float(value64(p)) - 100.0) < 1e-5
True
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array


class Pair(NamedTuple):
    """A compensated number: the value is ``hi + lo`` with ``|lo|`` far below ``ulp(hi)``."""

    hi: Array
    lo: Array


def zeros(shape: tuple[int, ...], dtype) -> Pair:
    """A compensated zero of the given shape and dtype."""
    return Pair(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def two_sum(a: Array, b: Array) -> tuple[Array, Array]:
    """Knuth's TwoSum: ``s + err == a + b`` exactly, with ``s = fl(a + b)``."""
    s = a + b
    b_virtual = s - a
    a_virtual = s - b_virtual
    return s, (a - a_virtual) + (b - b_virtual)


def add(p: Pair, x: Array) -> Pair:
    """Add a plain array into a compensated pair.

    ``x`` is often a product (a Chan correction term). XLA may compute it in several fusions and contract
    it into a fused multiply-add in some of them only, so the ``hi`` and ``lo`` halves of the result could
    see two different values of ``x`` and disagree by a unit in the last place of ``hi``. Splitting ``x``
    into a part rounded one bit short (a bitwise operation, which nothing contracts) and its exact
    remainder keeps ``hi`` consistent; any disagreement is left in the remainder, below ``ulp(x)``.
    """
    info = jnp.finfo(x.dtype)
    x_hi = jax.lax.reduce_precision(x, int(info.nexp), int(info.nmant) - 1)
    hi, err = two_sum(p.hi, x_hi)
    return Pair(hi, p.lo + err + (x - x_hi))


def add_pairs(p: Pair, q: Pair) -> Pair:
    """Add two compensated pairs."""
    hi, err = two_sum(p.hi, q.hi)
    return Pair(hi, p.lo + q.lo + err)


def value(p: Pair) -> Array:
    """The pair rounded to its own dtype."""
    return p.hi + p.lo


def value64(p: Pair) -> np.ndarray:
    """The pair as a host float64 array (exact sum of both halves)."""
    return np.asarray(p.hi, np.float64) + np.asarray(p.lo, np.float64)
