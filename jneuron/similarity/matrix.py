"""Layer-by-layer (or checkpoint-by-checkpoint) similarity matrices from one streamed pass.

All layers' covariance blocks are accumulated together in a single pass (only the blocks the matrix
needs); each layer is whitened once, and every pair then costs one small SVD in host float64.

>>> import numpy as np, jneuron as jn
>>> rng = np.random.default_rng(0)
>>> h0 = rng.normal(size=(1000, 8))
>>> layers = {"l0": h0, "l1": np.tanh(h0 @ rng.normal(size=(8, 8))), "noise": rng.normal(size=(1000, 8))}
>>> m = jn.similarity_matrix(layers, metric="cka")
>>> m.names_a, np.round(m.values[0], 2).tolist()
(('l0', 'l1', 'noise'), [1.0, 0.65, 0.01])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jneuron.errors import JNeuronError
from jneuron.kernels import cca as kcca
from jneuron.results import _plain
from jneuron.similarity.measures import (
    _check_keep,
    _cka_value,
    _pwcca_result,
    _rtol,
    prepare_side,
)
from jneuron.streaming.blocks import stream_blocks
from jneuron.streaming.mesh import resolve_mesh

METRICS = ("cca", "svcca", "pwcca", "cka", "cka_debiased")
_SYMMETRIC = ("cca", "svcca", "cka", "cka_debiased")


@dataclass(frozen=True)
class SimilarityMatrix:
    """Similarity of every layer in ``names_a`` (rows) with every layer in ``names_b`` (columns).

    Attributes:
      metric: one of ``"cca"`` (mean canonical correlation), ``"svcca"`` (mean rho after the SVD
        step), ``"pwcca"`` (weights from the row layer), ``"cka"``, ``"cka_debiased"``.
      values: ``(len(names_a), len(names_b))`` similarities, each within its metric's bounds (``[0, 1]``;
        debiased CKA at most 1).
      names_a, names_b: layer names.
      tokens: tokens seen.
      kept_a, kept_b: per layer, the dimensions kept by the whitening (SVCCA: the principal directions).
    """

    metric: str
    values: np.ndarray
    names_a: tuple[str, ...]
    names_b: tuple[str, ...]
    tokens: int
    kept_a: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    kept_b: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {"metric": self.metric, "names_a": list(self.names_a), "names_b": list(self.names_b),
                "values": _plain(self.values), "tokens": self.tokens, "kept_a": _plain(self.kept_a),
                "kept_b": _plain(self.kept_b)}

    def plot(self, path: str | Path | None = None, **kwargs):
        """A heatmap (see :func:`jneuron.report.heatmap.plot_similarity`)."""
        from jneuron.report.heatmap import plot_similarity

        return plot_similarity(self, path, **kwargs)


def similarity_matrix(layers_a, layers_b=None, metric: str = "svcca", *, keep: float | int = 0.99,
                      rtol: float | None = None, chunk_tokens: int | None = None, devices=None,
                      mesh=None) -> SimilarityMatrix:
    """Similarity between every pair of layers, from one streamed pass over the tokens.

    Args:
      layers_a: a mapping of name to layer, or a sequence of layers; each layer a ``(tokens, neurons)``
        array (memory-mapped is fine), or every layer an iterable of chunks (zipped token by token); or a
        chunk source whose models are the layers (e.g. ``jnf.capture_source``: one model pass).
      layers_b: the layers to compare with (e.g. another checkpoint's); ``None`` compares ``layers_a``
        with itself (symmetric metrics then compute each pair once).
      metric: ``"svcca"``, ``"cca"``, ``"pwcca"``, ``"cka"`` or ``"cka_debiased"``.
      keep: SVCCA's kept share of variance, or count (see :func:`jneuron.svcca`).
      rtol: relative eigenvalue floor of the whitening (see :func:`jneuron.cca`).
      chunk_tokens: tokens per streamed chunk.
      devices, mesh: shard the pass over devices (see :func:`jneuron.maxcorr` and :mod:`jneuron.streaming.mesh`).
    """
    if metric not in METRICS:
        raise JNeuronError(f"unknown similarity metric {metric!r}; expected one of {', '.join(METRICS)}")
    if metric == "svcca":
        _check_keep(keep)
    names_a, data_a = _layers(layers_a, "layers_a")
    same = layers_b is None
    names_b, data_b = (names_a, data_a) if same else _layers(layers_b, "layers_b")
    la, lb = len(names_a), len(names_b)
    if same:
        groups = list(zip(names_a, data_a))
        rows, cols = list(range(la)), list(range(la))
        pairs = [(i, j) for i in range(la) for j in range(i, la)]
    else:
        groups = [(f"a:{n}", d) for n, d in zip(names_a, data_a)] + [(f"b:{n}", d) for n, d in zip(names_b, data_b)]
        rows, cols = list(range(la)), list(range(la, la + lb))
        pairs = [(g, g) for g in range(la + lb)] + [(i, j) for i in rows for j in cols]
    blocks = stream_blocks(groups, pairs, chunk_tokens=chunk_tokens, row_norms=metric == "cka_debiased",
                           what=f"similarity_matrix ({metric})", mesh=resolve_mesh(devices, mesh))
    values = np.zeros((la, lb))
    kept = np.zeros(len(groups), np.int64)
    if metric in ("cca", "svcca", "pwcca"):
        rtol = _rtol(blocks, rtol)
        method = "svcca" if metric == "svcca" else "cca"
        sides = [prepare_side(blocks, g, method, keep, rtol) for g in range(len(groups))]
        kept = np.array([int(s.whitening.kept) for s in sides], np.int64)
    for a, i in enumerate(rows):
        for b, j in enumerate(cols):
            if same and metric in _SYMMETRIC and j < i:
                values[a, b] = values[b, a]
            elif metric == "pwcca":
                values[a, b] = _pwcca_result(blocks, i, j, "x", rtol, (sides[i], sides[j])).value
            elif metric in ("cca", "svcca"):
                rho = np.asarray(kcca.correlations(sides[i], sides[j], blocks.cov(i, j)))
                valid = min(kept[i], kept[j])
                values[a, b] = float(rho[:valid].mean()) if valid else 0.0
            else:
                values[a, b] = _cka_value(blocks, i, j, metric == "cka_debiased")
    return SimilarityMatrix(metric, values, names_a, names_b, blocks.count, kept[rows], kept[cols])


def _source_layers(source) -> tuple[tuple[str, ...], list]:
    """A chunk source's models as one chunk iterable each, all fed by one pass over the source (a model
    source, e.g. ``jnf.capture_source``, runs the model once)."""
    import itertools

    names, widths = tuple(source.names), tuple(source.widths)
    splits = np.cumsum(widths)[:-1]
    parts = (np.split(chunk, splits, axis=1) for chunk in source.chunks(8192))

    def model(k, copy):
        for part in copy:
            yield part[k]

    return names, [model(k, copy) for k, copy in enumerate(itertools.tee(parts, len(names)))]


def _layers(layers, what: str) -> tuple[tuple[str, ...], list]:
    if all(hasattr(layers, a) for a in ("names", "widths", "chunks")):
        return _source_layers(layers)
    if isinstance(layers, Mapping):
        names, data = tuple(str(k) for k in layers), list(layers.values())
    elif isinstance(layers, Sequence) and not isinstance(layers, str):
        names, data = tuple(f"layer{i}" for i in range(len(layers))), list(layers)
    else:
        raise JNeuronError(f"{what}: expected a mapping of name to layer or a sequence of layers, "
                           f"got {type(layers).__name__}")
    if not data:
        raise JNeuronError(f"{what}: no layers given")
    return names, data
