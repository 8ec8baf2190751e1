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

from dataclasses import dataclass, field

import numpy as np

from jneuron.data.models import parse_layers
from jneuron.errors import JNeuronError
from jneuron.kernels import cca as kcca
from jneuron.results import NeuronIndex, Result, to_plain
from jneuron.similarity.measures import (
    check_keep,
    cka_value,
    eigenvalue_floor,
    prepare_side,
    pwcca_result,
)
from jneuron.streaming.blocks import stream_blocks
from jneuron.streaming.mesh import resolve_mesh
from jneuron.data.source import reads_dtype

METRICS = ("cca", "svcca", "pwcca", "cka", "cka_debiased")
_SYMMETRIC = ("cca", "svcca", "cka", "cka_debiased")


@dataclass(frozen=True)
class SimilarityMatrix(Result):
    """Similarity of every layer in ``names_a`` (rows) with every layer in ``names_b`` (columns).

    Attributes:
      metric: one of ``"cca"`` (mean canonical correlation), ``"svcca"`` (mean rho after the SVD
        step), ``"pwcca"`` (weights from the row layer), ``"cka"``, ``"cka_debiased"``.
      values: ``(len(names_a), len(names_b))`` similarities, each within its metric's bounds (``[0, 1]``;
        debiased CKA at most 1).
      names_a, names_b: layer names.
      tokens: tokens seen.
      neurons_a, neurons_b: the neurons of the row and of the column layers (model ``"a"``, resp. ``"b"``
        when ``layers_b`` was given; each layer named as in ``names_a``, ``names_b``).
      kept_a, kept_b: per layer, the dimensions kept by the whitening (SVCCA: the principal directions).
    """

    metric: str
    values: np.ndarray
    names_a: tuple[str, ...]
    names_b: tuple[str, ...]
    tokens: int
    neurons_a: NeuronIndex
    neurons_b: NeuronIndex
    kept_a: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    kept_b: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def to_dict(self) -> dict:
        """JSON-ready summary (each layer's neurons as its width; the figure is
        :func:`jneuron.report.figures.similarity_figure`)."""
        return {"metric": self.metric, "names_a": list(self.names_a), "names_b": list(self.names_b),
                "values": to_plain(self.values), "tokens": self.tokens, "kept_a": to_plain(self.kept_a),
                "kept_b": to_plain(self.kept_b), "widths_a": _widths(self.neurons_a),
                "widths_b": _widths(self.neurons_b)}


def _widths(neurons: NeuronIndex) -> list[int]:
    return np.bincount(neurons.layer, minlength=len(neurons.layers)).tolist()


@reads_dtype
def similarity_matrix(layers_a, layers_b=None, metric: str = "svcca", *, keep: float | int = 0.99,
                      rtol: float | None = None, chunk_tokens: int | None = None,
                      valid=None, devices=None, mesh=None,
                      checkpoint=None, progress: bool = False, on_chunk=None) -> SimilarityMatrix:
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
      valid, checkpoint, progress, on_chunk: rows that count (boolean ``(tokens,)``, array inputs), a
        checkpoint folder to resume from, a progress line on stderr, a callback with each chunk's rows
        (the one pass's keywords, see :func:`jneuron.maxcorr`).
    """
    if metric not in METRICS:
        raise JNeuronError(f"unknown similarity metric {metric!r}; expected one of {', '.join(METRICS)}")
    if metric == "svcca":
        check_keep(keep)
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
                           what=f"similarity_matrix ({metric})", mesh=resolve_mesh(devices, mesh),
                           valid=valid, checkpoint=checkpoint, progress=progress, on_chunk=on_chunk)
    values = np.zeros((la, lb))
    kept = np.zeros(len(groups), np.int64)
    if metric in ("cca", "svcca", "pwcca"):
        rtol = eigenvalue_floor(blocks, rtol)
        method = "svcca" if metric == "svcca" else "cca"
        sides = [prepare_side(blocks, g, method, keep, rtol) for g in range(len(groups))]
        kept = np.array([int(s.whitening.kept) for s in sides], np.int64)
    for a, i in enumerate(rows):
        for b, j in enumerate(cols):
            if same and metric in _SYMMETRIC and j < i:
                values[a, b] = values[b, a]
            elif metric == "pwcca":
                values[a, b] = pwcca_result(blocks, i, j, "x", rtol, (sides[i], sides[j])).value
            elif metric in ("cca", "svcca"):
                rho = np.asarray(kcca.correlations(sides[i], sides[j], blocks.cov(i, j)))
                valid = min(kept[i], kept[j])
                values[a, b] = float(rho[:valid].mean()) if valid else 0.0
            else:
                values[a, b] = cka_value(blocks, i, j, metric == "cka_debiased")
    neurons_a = NeuronIndex.from_layers([("a", [(n, blocks.widths[g]) for n, g in zip(names_a, rows)])])
    neurons_b = neurons_a if same else NeuronIndex.from_layers(
        [("b", [(n, blocks.widths[g]) for n, g in zip(names_b, cols)])])
    return SimilarityMatrix(metric, values, names_a, names_b, blocks.count, neurons_a, neurons_b, kept[rows],
                            kept[cols])


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
    """Names and data of the layers (a mapping of name to layer, a sequence: ``layer0, layer1, ...``, or a
    chunk source whose models are the layers)."""
    if all(hasattr(layers, a) for a in ("names", "widths", "chunks")):
        return _source_layers(layers)
    parsed = parse_layers(layers, prefix="layer", what=what)
    return parsed.labels, list(parsed.data)
