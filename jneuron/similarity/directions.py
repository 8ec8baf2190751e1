"""SVCCA/CCA direction rankings (Bau et al., ICLR 2019): canonical directions in neuron space, and erasure.

The canonical directions of one model against another (SVCCA or CCA) are ranked by their correlation,
each expressed in neuron space, so it can be read (its pattern over neurons) and erased from activations.

>>> import numpy as np, jneuron as jn
>>> rng = np.random.default_rng(0)
>>> shared = rng.normal(size=(1000, 2))
>>> a = np.hstack([shared, rng.normal(size=(1000, 2))])
>>> b = np.hstack([shared @ rng.normal(size=(2, 3)), rng.normal(size=(1000, 1))])
>>> d = jn.direction_ranking(a, b, method="cca")
>>> np.round(d.rho, 2).tolist()
[1.0, 1.0, 0.04]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jneuron.errors import JNeuronError
from jneuron.kernels import cca as kcca
from jneuron.results import NeuronIndex, Result, to_plain
from jneuron.similarity.measures import check_keep, eigenvalue_floor, prepare_side
from jneuron.streaming.blocks import stream_blocks
from jneuron.streaming.mesh import resolve_mesh
from jneuron.data.source import reads_dtype


@dataclass(frozen=True)
class DirectionRanking(Result):
    """Canonical directions of ``x`` (against ``y``), ordered by correlation, in neuron space.

    Attributes:
      method: ``"svcca"`` or ``"cca"``.
      rho: the directions' canonical correlations, descending, clipped to ``[0, 1]``.
      weights: ``(dx, k)``: direction ``i``'s activation is ``h_i = (x - mean) @ weights[:, i]``
        (unit variance, uncorrelated across directions).
      patterns: ``(dx, k)``: how each direction shows in the neurons, ``cov(x, h_i)``; activations
        decompose as ``x = mean + sum_i h_i patterns[:, i] + rest`` with ``rest`` uncorrelated with every ``h_i``.
      mean: the neurons' means.
      neurons: the identity of x's neurons.
      dead: x's constant neurons (:mod:`jneuron.streaming.constant`): weight 0 in every direction.
    """

    method: str
    rho: np.ndarray
    weights: np.ndarray
    patterns: np.ndarray
    mean: np.ndarray
    neurons: NeuronIndex
    dead: np.ndarray

    def erasure(self, k: int) -> np.ndarray:
        """``(dx, dx)`` matrix ``E`` with ``mean + (x - mean) @ E`` erasing the top ``k`` directions."""
        if not 0 <= k <= len(self.rho):
            raise JNeuronError(f"can erase 0 to {len(self.rho)} directions, got k={k}")
        return np.eye(len(self.mean)) - self.weights[:, :k] @ self.patterns[:, :k].T

    def erase(self, activations, k: int) -> np.ndarray:
        """Activations ``(tokens, dx)`` with the top ``k`` directions removed (their ``h_i`` become 0)."""
        x = np.asarray(activations, np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.mean):
            raise JNeuronError(f"erase: expected (tokens, {len(self.mean)}) activations, got shape {x.shape}")
        return self.mean + (x - self.mean) @ self.erasure(k)

    def to_dict(self, top_neurons: int = 5) -> dict:
        """Per direction: rank, rho, and the neurons with the largest ``|pattern|``."""
        out = []
        for i, rho in enumerate(self.rho):
            order = np.lexsort((np.arange(len(self.mean)), -np.abs(self.patterns[:, i])))[:top_neurons]
            out.append({"rank": i, "rho": float(rho), "neurons": [
                {**self.neurons.record(int(j)), "pattern": float(self.patterns[j, i])} for j in order]})
        return {"method": self.method, "directions": out, "rho": to_plain(self.rho),
                "dead": [self.neurons.record(int(i)) for i in self.dead]}


@reads_dtype
def direction_ranking(x, y, *, method: str = "svcca", keep: float | int = 0.99, names: Sequence[str] = ("x",),
                      rtol: float | None = None, chunk_tokens: int | None = None,
                      valid=None, devices=None, mesh=None,
                      checkpoint=None, progress: bool = False, on_chunk=None) -> DirectionRanking:
    """Rank ``x``'s SVCCA (or CCA) directions against ``y`` by canonical correlation.

    Args:
      x: one model's ``(tokens, neurons)`` activations (or an iterable of chunks).
      y: the other model(s): an array, or a sequence of arrays taken side by side (e.g. all other
        models, as Bau et al. compare one model against the rest).
      method: ``"svcca"`` (PCA keeping ``keep`` of the variance first) or ``"cca"``.
      keep: SVCCA's kept share of variance, or count.
      names: model names: ``x``'s first (it names the directions' neurons), then ``y``'s (optional).
      rtol, chunk_tokens, valid, devices, mesh, checkpoint, progress, on_chunk: see :func:`jneuron.cca`.
    """
    if method not in ("svcca", "cca"):
        raise JNeuronError(f"direction_ranking: method must be 'svcca' or 'cca', got {method!r}")
    if method == "svcca":
        check_keep(keep)
    others = list(y) if isinstance(y, Sequence) and not hasattr(y, "shape") and all(
        hasattr(v, "shape") for v in y) else [y]
    groups = [("x", x)] + [(f"y{i}", v) for i, v in enumerate(others)]
    pairs = [(i, j) for i in range(len(groups)) for j in range(i, len(groups))]
    blocks = stream_blocks(groups, pairs, chunk_tokens=chunk_tokens, what="direction_ranking",
                           mesh=resolve_mesh(devices, mesh),
                           valid=valid, checkpoint=checkpoint, progress=progress, on_chunk=on_chunk)
    rtol = eigenvalue_floor(blocks, rtol)
    ys = list(range(1, len(groups)))
    sx = prepare_side(blocks, 0, method, keep, rtol)
    cyy = blocks.cov_of(ys, ys)
    sy = kcca.prepare(cyy, rtol, keep if method == "svcca" else None, rescale=method != "svcca")
    r = kcca.correlate(sx, sy, blocks.cov_of([0], ys))
    valid = int(r.valid)
    weights = r.a[:, :valid]
    patterns = blocks.cov(0, 0) @ weights
    if isinstance(names, str) or not len(names):
        raise JNeuronError(f"names: expected a sequence of model names, x's first, got {names!r}")
    neurons = NeuronIndex.from_widths((str(names[0]),), (blocks.widths[0],))
    return DirectionRanking(method, r.rho[:valid], weights, patterns, blocks.mean[blocks.columns(0)], neurons,
                            blocks.dead_in(0))
