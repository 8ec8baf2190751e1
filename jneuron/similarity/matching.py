"""Convergent learning (Li, Yosinski et al., ICLR 2016): matching neurons across two networks.

From one streamed pass (the between-net correlations and the within-net covariances):

- ``match_neurons(x, y, method="bipartite")``: a one-to-one assignment of units maximising the total
  correlation (``scipy.optimize.linear_sum_assignment``); ``method="semi"``: every unit of ``x`` takes
  its best partner in ``y`` (many-to-one; ties to the lower index).
- ``sparse_prediction(x, y)``: each unit of ``y`` predicted from all of ``x`` with an L1 penalty (LASSO
  solved from the co-moments, vmapped over a grid of penalties): a unit that one ``x`` unit predicts
  is a local code, one that needs many is distributed.

>>> import numpy as np, jneuron as jn
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(1000, 4))
>>> y = x[:, [2, 0, 3, 1]] + 0.1 * rng.normal(size=(1000, 4))
>>> m = jn.match_neurons(x, y)
>>> m.y_units.tolist(), bool(m.rho.min() > 0.99)
([1, 3, 0, 2], True)
>>> p = jn.sparse_prediction(x, y, penalties=[0.1])
>>> p.nonzero[0].tolist()
[1, 1, 1, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from jneuron.errors import JNeuronError
from jneuron.kernels import lasso as klasso
from jneuron.precision import follow_dtype
from jneuron.results import NeuronIndex, Result, to_plain
from jneuron.streaming.blocks import Blocks, stream_blocks
from jneuron.streaming.mesh import resolve_mesh
from jneuron.data.source import reads_dtype


@dataclass(frozen=True)
class Matching(Result):
    """Unit pairs between two networks.

    Attributes:
      method: ``"bipartite"`` (one-to-one) or ``"semi"`` (each x unit to its best y unit).
      x_units, y_units: matched unit indices (sorted by x unit).
      rho: the signed correlation of each pair.
      correlation: the full ``(dx, dy)`` between-net correlation matrix (dead units: 0), clipped to
        ``[-1, 1]`` (rounding can put ``|rho|`` a hair above 1).
      neurons_x, neurons_y: the units' identities.
      dead_x, dead_y: each side's constant units (:mod:`jneuron.streaming.constant`): correlation 0.
    """

    method: str
    x_units: np.ndarray
    y_units: np.ndarray
    rho: np.ndarray
    correlation: np.ndarray
    neurons_x: NeuronIndex
    neurons_y: NeuronIndex
    dead_x: np.ndarray
    dead_y: np.ndarray

    @property
    def total(self) -> float:
        """The summed correlation of the matched pairs."""
        return float(np.sum(self.rho))

    def to_dict(self) -> dict:
        """JSON-ready pairs (the correlation matrix is left out)."""
        pairs = [{"x": self.neurons_x.record(int(i)), "y": self.neurons_y.record(int(j)), "rho": float(r)}
                 for i, j, r in zip(self.x_units, self.y_units, self.rho)]
        return {"method": self.method, "total": self.total, "pairs": pairs, **_dead_records(self)}


@dataclass(frozen=True)
class SparsePrediction(Result):
    """LASSO predictions of every ``y`` unit from all ``x`` units, over a grid of penalties.

    Coefficients are in standardised units (every unit scaled to unit variance).

    Attributes:
      penalties: ``(P,)`` L1 penalties, descending.
      coef: ``(P, dx, dy)`` coefficients.
      r2: ``(P, dy)`` the fraction of each ``y`` unit's variance explained.
      nonzero: ``(P, dy)`` how many ``x`` units each prediction uses.
      kkt: ``(P,)`` the largest violation of the LASSO optimality conditions (convergence check).
      neurons_x, neurons_y: the units' identities (``y``'s order the columns of ``r2`` and ``nonzero``).
      dead_x, dead_y: each side's constant units (:mod:`jneuron.streaming.constant`): coefficient 0, R^2 0.
    """

    penalties: np.ndarray
    coef: np.ndarray
    r2: np.ndarray
    nonzero: np.ndarray
    kkt: np.ndarray
    neurons_x: NeuronIndex
    neurons_y: NeuronIndex
    dead_x: np.ndarray
    dead_y: np.ndarray

    def to_dict(self) -> dict:
        """JSON-ready summary (no coefficients)."""
        return {"penalties": to_plain(self.penalties), "r2": to_plain(self.r2), "nonzero": to_plain(self.nonzero),
                "kkt": to_plain(self.kkt), "neurons_y": self.neurons_y.records(), **_dead_records(self)}


def _dead_records(result) -> dict:
    """Both sides' constant units as neuron records."""
    return {f"dead_{side}": [getattr(result, f"neurons_{side}").record(int(i)) for i in getattr(result, f"dead_{side}")]
            for side in ("x", "y")}


@reads_dtype
def match_neurons(x, y, method: str = "bipartite", *, absolute: bool = False, names: Sequence[str] = ("x", "y"),
                  chunk_tokens: int | None = None,
                  valid=None, devices=None, mesh=None,
                  checkpoint=None, progress: bool = False, on_chunk=None) -> Matching:
    """Match the units of two networks by their correlation over the same tokens.

    Args:
      x, y: ``(tokens, units)`` activations (widths may differ), or both iterables of chunks.
      method: ``"bipartite"``: one-to-one, maximising the summed correlation (``min(dx, dy)`` pairs);
        ``"semi"``: every ``x`` unit to its most correlated ``y`` unit (several may share one).
      absolute: score pairs by ``|rho|`` instead of the signed ``rho``.
      names: the two networks' names, for the records.
      chunk_tokens: tokens per streamed chunk.
      devices, mesh: shard the pass over devices (see :func:`jneuron.maxcorr` and :mod:`jneuron.streaming.mesh`).
      valid, checkpoint, progress, on_chunk: rows that count (boolean ``(tokens,)``, array inputs), a
        checkpoint folder to resume from, a progress line on stderr, a callback with each chunk's rows
        (the one pass's keywords, see :func:`jneuron.maxcorr`).
    """
    if method not in ("bipartite", "semi"):
        raise JNeuronError(f"match_neurons: method must be 'bipartite' or 'semi', got {method!r}")
    blocks = stream_blocks([(names[0], x), (names[1], y)], [(0, 0), (0, 1), (1, 1)], chunk_tokens=chunk_tokens,
                           what="match_neurons", mesh=resolve_mesh(devices, mesh),
                           valid=valid, checkpoint=checkpoint, progress=progress, on_chunk=on_chunk)
    corr = _correlation(blocks)
    score = np.abs(corr) if absolute else corr
    if method == "bipartite":
        rows, cols = linear_sum_assignment(score, maximize=True)
    else:
        rows, cols = np.arange(corr.shape[0]), np.argmax(score, axis=1)
    neurons = [NeuronIndex.from_widths((n,), (w,)) for n, w in zip(names, blocks.widths)]
    return Matching(method, rows, cols, corr[rows, cols], corr, *neurons, blocks.dead_in(0), blocks.dead_in(1))


@reads_dtype
def sparse_prediction(x, y, penalties: Sequence[float] | None = None, *, sweeps: int = 200,
                      names: Sequence[str] = ("x", "y"), chunk_tokens: int | None = None,
                      valid=None, devices=None, mesh=None,
                      checkpoint=None, progress: bool = False, on_chunk=None) -> SparsePrediction:
    """Predict every ``y`` unit from all ``x`` units with an L1 penalty, for each penalty of a grid.

    Args:
      x, y: as for :func:`match_neurons`.
      penalties: L1 penalties (default: 12 values from the smallest one that zeroes every coefficient
        down by a factor 1000, log-spaced).
      sweeps: coordinate-descent passes over the ``x`` units.
      names: the two networks' names, for the neurons' identities.
      chunk_tokens, valid, devices, mesh, checkpoint, progress, on_chunk: as for :func:`match_neurons`.
    """
    blocks = stream_blocks([(names[0], x), (names[1], y)], [(0, 0), (0, 1), (1, 1)], chunk_tokens=chunk_tokens,
                           what="sparse_prediction", mesh=resolve_mesh(devices, mesh),
                           valid=valid, checkpoint=checkpoint, progress=progress, on_chunk=on_chunk)
    gram, cross = _standardised(blocks, 0, 0), _standardised(blocks, 0, 1)
    if penalties is None:
        top = max(float(np.abs(cross).max()), np.finfo(np.float32).tiny)
        penalties = top * np.logspace(0, -3, 12)
    penalties = np.sort(np.asarray(penalties, np.float64))[::-1]
    if penalties.ndim != 1 or len(penalties) == 0 or np.any(penalties < 0):
        raise JNeuronError(f"penalties must be a non-empty list of non-negative numbers, got {penalties}")
    with follow_dtype(blocks.accumulated_in) as dtype:
        coef, kkt = klasso.lasso_path(jnp.asarray(gram, dtype), jnp.asarray(cross, dtype),
                                      jnp.asarray(penalties, dtype), sweeps)
        coef, kkt = np.asarray(coef, np.float64), np.asarray(kkt, np.float64)
    r2 = np.clip(2 * np.einsum("xy,pxy->py", cross, coef) - np.einsum("pxy,xz,pzy->py", coef, gram, coef), 0, 1)
    neurons = [NeuronIndex.from_widths((n,), (w,)) for n, w in zip(names, blocks.widths)]
    return SparsePrediction(penalties, coef, r2, np.count_nonzero(coef, axis=1), kkt, *neurons, blocks.dead_in(0),
                            blocks.dead_in(1))


def _standardised(blocks: Blocks, i: int, j: int) -> np.ndarray:
    """Correlation block (dead units: 0, also on the diagonal)."""
    si, sj = (np.sqrt(np.diag(blocks.cov(g, g))) for g in (i, j))
    inv_i, inv_j = (np.where(s > 0, 1 / np.where(s > 0, s, 1), 0) for s in (si, sj))
    return blocks.cov(i, j) * inv_i[:, None] * inv_j[None, :]


def _correlation(blocks: Blocks) -> np.ndarray:
    return np.clip(_standardised(blocks, 0, 1), -1, 1)
