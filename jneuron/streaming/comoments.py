"""Streamed co-moments as a result people use: mean, covariance and Pearson correlation.

>>> import numpy as np, jneuron as jn
>>> x = np.random.default_rng(0).normal(size=(1000, 4)) + 1e3
>>> m = jn.comoments(np.split(x, 10))           # any iterable of (tokens, neurons) chunks
>>> bool(np.allclose(m.correlation(), np.corrcoef(x.T), atol=1e-6))
True
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from jneuron.data.checks import as_2d, check_min_tokens
from jneuron.data.source import Rows, as_source, reads_dtype
from jneuron.errors import JNeuronError
from jneuron.kernels import moments as kmoments
from jneuron.kernels.moments import Tile
from jneuron.precision import follow_dtype
from jneuron.results import NeuronIndex, Result, to_plain
from jneuron.streaming.constant import constant_neurons
from jneuron.streaming.mesh import resolve_mesh
from jneuron.streaming.passes import accumulate, chunk_callback, default_chunk_tokens


@dataclass(frozen=True)
class CoMoments(Result):
    """Count, mean, centred cross-product, minimum and maximum of ``(tokens, neurons)`` data, in host float64.

    ``cross[i, j] = sum_t (x[t, i] - mean[i]) * (x[t, j] - mean[j])``; ``low`` and ``high`` are each
    neuron's smallest and largest value (which say whether it is constant, :attr:`dead`);
    ``accumulated_in`` is the dtype of the streamed arithmetic (float64 for float64 data, else float32
    with compensated sums); ``neurons`` names the columns (default: one model ``"data"``).
    """

    count: int
    mean: np.ndarray
    cross: np.ndarray
    low: np.ndarray
    high: np.ndarray
    accumulated_in: np.dtype = np.dtype(np.float32)
    neurons: NeuronIndex | None = None

    def __post_init__(self):
        if self.neurons is None:
            object.__setattr__(self, "neurons", NeuronIndex.from_widths(("data",), (len(self.mean),)))
        elif len(self.neurons) != len(self.mean):
            raise JNeuronError(f"neurons: the index names {len(self.neurons)} neurons, the moments have {len(self.mean)}")

    def to_dict(self) -> dict:
        """Count, means, centred cross-products, minima, maxima and the neurons, as JSON-ready plain Python."""
        return {"count": self.count, "mean": to_plain(self.mean), "cross": to_plain(self.cross),
                "low": to_plain(self.low), "high": to_plain(self.high), "accumulated_in": str(self.accumulated_in),
                "neurons": self.neurons.records()}

    def covariance(self, ddof: int = 1) -> np.ndarray:
        """The covariance matrix, ``cross / (count - ddof)``."""
        check_min_tokens(self.count, "covariance", ddof + 1)
        return self.cross / (self.count - ddof)

    @property
    def dead(self) -> np.ndarray:
        """Indices of constant neurons: range within a few roundings of their magnitude in ``accumulated_in``
        (:func:`jneuron.streaming.constant.constant_neurons`)."""
        return np.flatnonzero(constant_neurons(self.low, self.high, self.accumulated_in))

    def correlation(self) -> np.ndarray:
        """Pearson correlations, clipped to ``[-1, 1]`` (rounding can put ``|rho|`` a hair above 1); a
        constant neuron correlates 0 with everything (itself included)."""
        check_min_tokens(self.count, "correlation")
        scale = np.sqrt(np.maximum(np.diag(self.cross), 0.0))
        scale[self.dead] = np.inf
        corr = self.cross / scale[:, None] / scale[None, :]
        return np.clip(corr, -1.0, 1.0)


@reads_dtype
def comoments(data, *, chunk_tokens: int | None = None, valid=None, devices=None, mesh=None,
              checkpoint=None, progress: bool = False, on_chunk=None) -> CoMoments:
    """Stream ``data`` once and return its co-moments.

    float64 data are accumulated in float64 (see :mod:`jneuron.precision`), anything else in
    compensated float32; the result is host float64 either way.

    Args:
      data: a ``(tokens, neurons)`` array (numpy, memory-mapped or JAX), or any iterable of such chunks
        (a list of arrays, a generator reading from disk, ...), all with the same number of neurons.
      chunk_tokens: tokens per compiled update (default: about 64 MiB of columns).
      devices: shard the tokens over this many devices (or these devices); see :mod:`jneuron.streaming.mesh`.
      mesh: or a ``("tokens"[, "neurons"])`` mesh; with several processes each passes its own tokens.
      valid: boolean ``(tokens,)`` mask of the rows that count (an array ``data``; chunks may come as
        ``Rows(chunk, valid)``).
      checkpoint: a folder; the running co-moments are saved there and a rerun resumes from them.
      progress: draw a progress line on stderr. on_chunk: called with the rows of each chunk read.
    """
    if hasattr(data, "shape"):
        source = as_source([as_2d(data, "data")], names=["data"], valid=valid)
    elif isinstance(data, Iterable):
        if valid is not None:
            raise JNeuronError("valid=: give each chunk's mask with it, as Rows(chunk, valid)")
        source = as_source((chunk if isinstance(chunk, Rows) else (chunk,) for chunk in data), names=["data"])
    else:
        raise JNeuronError(f"comoments: expected an array or an iterable of arrays, got {type(data).__name__}")
    width = source.widths[0]
    chunk_tokens = chunk_tokens or default_chunk_tokens(width, getattr(source, "tokens", None))
    with follow_dtype(source.dtype):
        stats = accumulate(source, (Tile(0, width, 0, width),), chunk_tokens, mesh=resolve_mesh(devices, mesh),
                           checkpoint=checkpoint,
                           on_chunk=chunk_callback(progress, on_chunk, getattr(source, "tokens", None)))
        count = int(stats.count)
        check_min_tokens(count, "comoments", 1)
        return CoMoments(count, kmoments.mean64(stats), kmoments.cross_value64(stats, 0), *kmoments.range64(stats),
                         np.dtype(stats.mean.hi.dtype))
