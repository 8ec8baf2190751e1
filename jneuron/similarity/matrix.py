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
    return _matrices(layers_a, layers_b, (metric,), keep, rtol, chunk_tokens, valid, devices, mesh, checkpoint,
                     progress, on_chunk)[metric]


@reads_dtype
def similarity_matrices(layers_a, layers_b=None, metrics=("svcca", "cka"), *, keep: float | int = 0.99,
                        rtol: float | None = None, chunk_tokens: int | None = None,
                        valid=None, devices=None, mesh=None,
                        checkpoint=None, progress: bool = False, on_chunk=None) -> dict[str, SimilarityMatrix]:
    """:func:`similarity_matrix` for several metrics from the same one pass: ``{metric: matrix}``.

    The covariance blocks are accumulated once; each layer is whitened once per method, and PWCCA takes
    both directions of a pair (weights from either layer) from one CCA.

    Args:
      metrics: a sequence of :data:`METRICS`; the other arguments as :func:`similarity_matrix`.

    >>> import numpy as np, jneuron as jn
    >>> rng = np.random.default_rng(0)
    >>> layers = {"l0": rng.normal(size=(500, 6)), "l1": rng.normal(size=(500, 6))}
    >>> sorted(jn.similarity_matrices(layers, metrics=["cca", "pwcca"]))
    ['cca', 'pwcca']
    """
    return _matrices(layers_a, layers_b, metrics, keep, rtol, chunk_tokens, valid, devices, mesh, checkpoint,
                     progress, on_chunk)


def _matrices(layers_a, layers_b, metrics, keep, rtol, chunk_tokens, valid, devices, mesh, checkpoint, progress,
              on_chunk) -> dict[str, SimilarityMatrix]:
    """:func:`similarity_matrices` (both entry points' body: each sets the read dtype once)."""
    metrics = tuple(dict.fromkeys([metrics] if isinstance(metrics, str) else metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise JNeuronError(f"unknown similarity metric {unknown[0] if unknown else metrics!r}; expected one of "
                           f"{', '.join(METRICS)}")
    if "svcca" in metrics:
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
    blocks = stream_blocks(groups, pairs, chunk_tokens=chunk_tokens, row_norms="cka_debiased" in metrics,
                           what=f"similarity_matrix ({', '.join(metrics)})", mesh=resolve_mesh(devices, mesh),
                           valid=valid, checkpoint=checkpoint, progress=progress, on_chunk=on_chunk)
    neurons_a = NeuronIndex.from_layers([("a", [(n, blocks.widths[g]) for n, g in zip(names_a, rows)])])
    neurons_b = neurons_a if same else NeuronIndex.from_layers(
        [("b", [(n, blocks.widths[g]) for n, g in zip(names_b, cols)])])
    rtol = eigenvalue_floor(blocks, rtol)
    sides = {}  # method -> every group's prepared side, once
    matrices = {}
    for metric in metrics:
        values, kept = _values(blocks, metric, rows, cols, same, keep, rtol, sides)
        matrices[metric] = SimilarityMatrix(metric, values, names_a, names_b, blocks.count, neurons_a, neurons_b,
                                            kept[rows], kept[cols])
    return matrices


def _values(blocks, metric: str, rows: list, cols: list, same: bool, keep, rtol: float, sides: dict):
    """One metric's ``(rows, cols)`` values, and every group's kept dimensions (0 for CKA)."""
    values = np.zeros((len(rows), len(cols)))
    kept = np.zeros(len(blocks.widths), np.int64)
    if metric in ("cca", "svcca", "pwcca"):
        method = "svcca" if metric == "svcca" else "cca"
        if method not in sides:
            sides[method] = [prepare_side(blocks, g, method, keep, rtol) for g in range(len(blocks.widths))]
        prepared = sides[method]
        kept = np.array([int(s.whitening.kept) for s in prepared], np.int64)
    for a, i in enumerate(rows):
        for b, j in enumerate(cols):
            if same and j < i and metric != "pwcca":
                values[a, b] = values[b, a]
            elif metric == "pwcca":
                if same and j < i:
                    continue  # filled with the pair (j, i)'s weights from the other layer
                result = pwcca_result(blocks, i, j, "x", rtol, (prepared[i], prepared[j]))
                values[a, b] = result.value_x
                if same:
                    values[b, a] = result.value_y
            elif metric in ("cca", "svcca"):
                rho = np.asarray(kcca.correlations(prepared[i], prepared[j], blocks.cov(i, j)))
                valid = min(kept[i], kept[j])
                values[a, b] = float(rho[:valid].mean()) if valid else 0.0
            else:
                values[a, b] = cka_value(blocks, i, j, metric == "cka_debiased")
    return values, kept


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
