"""ON-LSTM (Shen et al., ICLR 2019): ordered neurons through cumax master gates, and tree induction.

Master gates act per chunk of ``chunk_size`` neurons: ``f~ = cumax(.)`` rises and ``i~ = 1 - cumax(.)``
falls along the chunks, so high-ranking neurons keep their memory longer. With ``w = f~ * i~``:
``f^ = sigmoid(f) w + (f~ - w)``, ``i^ = sigmoid(i) w + (i~ - w)``, ``c = f^ c_prev + i^ tanh(g)``,
``h = sigmoid(o) tanh(c)``. The master-forget distance ``1 - mean(f~)`` per step drives tree induction.

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> layer = ONLSTM(3, 8, chunk_size=4, rngs=nnx.Rngs(0))
>>> out, (h, c) = layer(jnp.ones((2, 5, 3)))
>>> out.hidden.shape, out.forget_distance.shape
((2, 5, 8), (2, 5))
>>> build_tree([0.1, 0.9, 0.2, 0.5], ["the", "cat", "sat", "down"])
('the', ('cat', ('sat', 'down')))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jneuron.config import HIGHEST
from jneuron.errors import JNeuronError


def cumax(x: jax.Array, axis: int = -1) -> jax.Array:
    """Cumulative softmax: ``cumsum(softmax(x))``, rising monotonically from >0 to 1 along ``axis``."""
    return jnp.cumsum(jax.nn.softmax(x, axis=axis), axis=axis)


class StepOutput(NamedTuple):
    """Per-step outputs: hidden state and the master-gate distances (``(...,)`` each)."""

    hidden: jax.Array
    forget_distance: jax.Array
    input_distance: jax.Array


class ONLSTMCell(nnx.Module):
    """One ON-LSTM step; ``hidden`` must be a multiple of ``chunk_size``.

    The pre-activations are ``x W + h U + b``, laid out as ``[f~ (chunks), i~ (chunks), o, f, i, g]``.
    """

    def __init__(self, in_features: int, hidden: int, chunk_size: int = 10, *, rngs: nnx.Rngs):
        if hidden <= 0 or chunk_size <= 0 or hidden % chunk_size:
            raise JNeuronError(f"hidden ({hidden}) must be a positive multiple of chunk_size ({chunk_size})")
        self.hidden, self.chunk_size, self.chunks = hidden, chunk_size, hidden // chunk_size
        width = 4 * hidden + 2 * self.chunks
        self.input = nnx.Linear(in_features, width, precision=HIGHEST, rngs=rngs)
        self.recurrent = nnx.Linear(hidden, width, use_bias=False, precision=HIGHEST, rngs=rngs)

    def initial_carry(self, batch: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
        """Zero ``(h, c)`` for ``batch`` sequences."""
        return jnp.zeros((batch, self.hidden), dtype), jnp.zeros((batch, self.hidden), dtype)

    def __call__(self, carry: tuple[jax.Array, jax.Array], x: jax.Array):
        """``(h, c), x -> (h', c'), StepOutput``."""
        h, c = carry
        z = self.input(x) + self.recurrent(h)
        m = self.chunks
        f_master = cumax(z[..., :m])
        i_master = 1 - cumax(z[..., m:2 * m])
        o, f, i, g = jnp.split(z[..., 2 * m:], 4, axis=-1)
        fm = jnp.repeat(f_master, self.chunk_size, axis=-1)
        im = jnp.repeat(i_master, self.chunk_size, axis=-1)
        w = fm * im
        f_hat = jax.nn.sigmoid(f) * w + (fm - w)
        i_hat = jax.nn.sigmoid(i) * w + (im - w)
        c = f_hat * c + i_hat * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), StepOutput(h, 1 - f_master.mean(axis=-1), i_master.mean(axis=-1))

    def master_gates(self, carry: tuple[jax.Array, jax.Array], x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The chunk-level master forget and input gates ``(f~, i~)`` of one step."""
        z = self.input(x) + self.recurrent(carry[0])
        return cumax(z[..., :self.chunks]), 1 - cumax(z[..., self.chunks:2 * self.chunks])


class ONLSTM(nnx.Module):
    """An ON-LSTM layer over ``(batch, time, features)`` sequences, scanned over time with ``lax.scan``."""

    def __init__(self, in_features: int, hidden: int, chunk_size: int = 10, *, rngs: nnx.Rngs):
        self.cell = ONLSTMCell(in_features, hidden, chunk_size, rngs=rngs)

    def __call__(self, xs: jax.Array, carry: tuple[jax.Array, jax.Array] | None = None):
        """Returns ``(StepOutput with (batch, time, ...) fields, final (h, c))``."""
        if xs.ndim != 3:
            raise JNeuronError(f"expected (batch, time, features) inputs, got shape {xs.shape}")
        if carry is None:
            carry = self.cell.initial_carry(xs.shape[0], xs.dtype)
        graphdef, state = nnx.split(self.cell)

        def step(carry, x_t):
            return nnx.merge(graphdef, state)(carry, x_t)

        carry, out = jax.lax.scan(step, carry, jnp.swapaxes(xs, 0, 1))
        return StepOutput(*(jnp.swapaxes(a, 0, 1) for a in out)), carry


def build_tree(distances: Sequence[float] | np.ndarray, tokens: Sequence):
    """Greedy top-down binary tree from per-token distances (Shen et al.'s parser).

    The span splits at its largest distance (first on ties) into the left part and ``(token, right part)``;
    both parts are parsed recursively. A single token is returned as itself, pairs as tuples.
    """
    distances = np.asarray(distances, dtype=np.float64)
    if distances.shape != (len(tokens),) or len(tokens) == 0:
        raise JNeuronError(f"need one distance per token: {distances.shape} distances for {len(tokens)} tokens")
    if not np.all(np.isfinite(distances)):
        raise JNeuronError("distances contain NaN or Inf")

    def parse(lo: int, hi: int):
        if hi - lo == 1:
            return tokens[lo]
        k = lo + int(np.argmax(distances[lo:hi]))
        head = tokens[k] if k + 1 == hi else (tokens[k], parse(k + 1, hi))
        return head if k == lo else (parse(lo, k), head)

    return parse(0, len(tokens))


def tree_spans(tree, *, trivial: bool = False) -> set[tuple[int, int]]:
    """The ``(start, end)`` token spans of a tree's constituents (end exclusive).

    The tree is nested tuples over leaves that are their own positions (``build_tree(d, range(n))``).
    Unless ``trivial``, single tokens and the whole sentence are left out (the unlabeled bracket
    convention of Shen et al.'s evaluation).

    >>> sorted(tree_spans(build_tree([0.1, 0.9, 0.2, 0.5], range(4))))
    [(1, 4), (2, 4)]
    """
    spans: set[tuple[int, int]] = set()

    def walk(node) -> tuple[int, int]:
        if not isinstance(node, tuple):
            spans.add((int(node), int(node) + 1))
            return int(node), int(node) + 1
        ranges = [walk(child) for child in node]
        span = (min(r[0] for r in ranges), max(r[1] for r in ranges))
        spans.add(span)
        return span

    whole = walk(tree)
    return spans if trivial else {s for s in spans if s[1] - s[0] > 1 and s != whole}


def bracket_f1(predicted: set, reference: set) -> float:
    """Unlabeled bracket F1 of two span sets (1 when both are empty, as for a two-token sentence).

    >>> bracket_f1({(0, 2), (2, 4)}, {(0, 2), (1, 4)})
    0.5
    """
    if not predicted and not reference:
        return 1.0
    hits = len(predicted & reference)
    return 0.0 if hits == 0 else 2 * hits / (len(predicted) + len(reference))
