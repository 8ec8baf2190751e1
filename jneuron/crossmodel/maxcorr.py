"""Cross-model correlation rankings: MaxCorr and MinCorr (Bau et al., ICLR 2019; Dalvi et al., AAAI 2019).

Each neuron of each model is scored by how well some single neuron of every *other* model tracks it:
``best(i, m') = max_j |rho(i, j)|`` over neurons ``j`` of model ``m'``; MaxCorr takes the max over models
``m'``, MinCorr the min. Only the cross-model blocks of the correlation matrix are computed (fewer than
half of the full product), accumulated in one streamed pass when they fit ``memory_budget`` and in
several passes (over re-iterable sources) when they do not; each block is reduced at once to per-neuron
maxima and partners, so the full correlation matrix is never held.

>>> import numpy as np, jneuron as jn
>>> rng = np.random.default_rng(0)
>>> shared = rng.normal(size=(500, 1))
>>> a = np.hstack([shared, rng.normal(size=(500, 2))])
>>> b = np.hstack([rng.normal(size=(500, 2)), -2 * shared + 1])
>>> r = jn.maxcorr([a, b], names=["a", "b"])
>>> [n["label"] for n in r.top(2)]
['a/0', 'b/2']
>>> r.partners(0)[0]["label"], round(r.partners(0)[0]["rho"], 6)
('b/2', -1.0)
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from jneuron import config
from jneuron.crossmodel.tilereduce import tile_reducer
from jneuron.data.checks import check_min_tokens
from jneuron.data.labelled import source_neurons
from jneuron.data.models import parse_layers
from jneuron.data.source import Source, as_source, reads_dtype
from jneuron.errors import JNeuronError
from jneuron.kernels import maxcorr as kmax
from jneuron.kernels import moments as kmoments
from jneuron.kernels.moments import Tile
from jneuron.precision import follow_dtype
from jneuron.results import NeuronIndex, Ranking, to_plain
from jneuron.streaming.constant import constant_neurons, warn_constant
from jneuron.streaming.mesh import resolve_mesh
from jneuron.streaming.passes import accumulate, chunk_callback, default_chunk_tokens

_BYTES_PER_ENTRY = 24  # compensated pair (8) + chunk product (4) + merge outer product (4) + reduction (8)


@dataclass(frozen=True)
class CrossModelRanking(Ranking):
    """A MaxCorr/MinCorr ranking with every neuron's best partner in every other model.

    Attributes (beyond :class:`~jneuron.results.Ranking`):
      score_matrix: ``(neurons, models)``: best ``|rho|`` with each model (NaN for the neuron's own model).
      partner_unit: ``(neurons, models)``: the partner's unit within that model (-1 for its own model).
      partner_rho: ``(neurons, models)``: the partner's signed correlation (NaN for its own model).
    """

    score_matrix: np.ndarray = None
    partner_unit: np.ndarray = None
    partner_rho: np.ndarray = None

    def partners(self, i: int) -> list[dict]:
        """Neuron ``i``'s best partner in every other model: its identity and the signed rho."""
        own = self.neurons.model[i]
        starts = np.searchsorted(self.neurons.model, np.arange(len(self.neurons.models)))
        return [
            {**self.neurons.record(int(starts[m] + self.partner_unit[i, m])), "rho": to_plain(self.partner_rho[i, m])}
            for m in range(len(self.neurons.models))
            if m != own
        ]

    def rescore(self, method: str) -> CrossModelRanking:
        """The same partners scored the other way (``"maxcorr"`` or ``"mincorr"``), without a new pass."""
        return replace(self, method=method, scores=_reduce(self.score_matrix, method))

    def _record(self, i: int, rank: int) -> dict:
        return {**super()._record(i, rank), "partners": self.partners(i)}

    def to_dict(self) -> dict:
        return {**super().to_dict(), "score_matrix": to_plain(self.score_matrix)}


@reads_dtype
def maxcorr(models, *, names: Sequence[str] | None = None, chunk_tokens: int | None = None,
            memory_budget: int | None = None, valid=None, devices=None, mesh=None, checkpoint=None,
            progress: bool = False, on_chunk=None) -> CrossModelRanking:
    """Rank every neuron of every model by MaxCorr: its best ``|rho|`` with any other model's neuron.

    Args:
      models: two or more models' activations on the same tokens: a sequence or mapping (name to
        array, or name to a mapping of layer to array, layers side by side) of ``(tokens, neurons)``
        arrays, widths may differ; or an iterator of chunks (tuples of per-model arrays); or a
        callable returning such an iterator.
      names: model names (default: the mapping's keys, or ``model0, model1, ...``).
      chunk_tokens: tokens per streamed chunk (default: about 64 MiB of columns).
      memory_budget: bytes of correlation blocks held at once; larger problems take several passes
        (default: :data:`jneuron.config.MEMORY_BUDGET`).
      devices: shard the tokens over this many devices (or these devices); see :mod:`jneuron.streaming.mesh`.
      mesh: or a ``("tokens"[, "neurons"])`` mesh: tokens split over the first axis, the rows of every
        correlation block (and their reduction) over the second; with several processes each passes
        its own tokens.
      checkpoint: a folder to save the running statistics in every few chunks; a rerun with the same
        inputs resumes from it (see :func:`jneuron.streaming.passes.accumulate`).
      valid: boolean ``(tokens,)`` mask of the rows that count (arrays; chunks carry theirs as ``Rows``).
      progress: draw a progress line on stderr.
      on_chunk: called with the rows of each chunk read (progress reporting).

    Returns:
      A :class:`CrossModelRanking`. Constant neurons score 0, are listed in ``dead`` and warned about.
      Correlations are clipped to ``[-1, 1]`` (so scores lie in ``[0, 1]``). float64 activations are
      correlated in float64 (see :mod:`jneuron.precision`), others in float32 with compensated sums.
    """
    return _rank(models, names, chunk_tokens, memory_budget, "maxcorr", resolve_mesh(devices, mesh), checkpoint,
                 on_chunk, valid, progress)


@reads_dtype
def mincorr(models, *, names: Sequence[str] | None = None, chunk_tokens: int | None = None,
            memory_budget: int | None = None, valid=None, devices=None, mesh=None, checkpoint=None,
            progress: bool = False, on_chunk=None) -> CrossModelRanking:
    """Rank every neuron by MinCorr: the min over other models of its best ``|rho|`` in that model.

    Arguments and result as :func:`maxcorr`.
    """
    return _rank(models, names, chunk_tokens, memory_budget, "mincorr", resolve_mesh(devices, mesh), checkpoint,
                 on_chunk, valid, progress)


def _rank(models, names, chunk_tokens, memory_budget, method: str, mesh, checkpoint,
          on_chunk, valid=None, progress=False) -> CrossModelRanking:
    source, neurons, model_widths = _prepare(models, names, valid)
    memory_budget = config.MEMORY_BUDGET if memory_budget is None else memory_budget
    tokens = getattr(source, "tokens", None)
    on_chunk = chunk_callback(progress, on_chunk, tokens, method)
    chunk_tokens = chunk_tokens or default_chunk_tokens(sum(model_widths), tokens)
    with follow_dtype(source.dtype):
        best, unit, rho, dead = _best_partners(source, model_widths, chunk_tokens, memory_budget, mesh, checkpoint,
                                               on_chunk)
    warn_constant(method, [neurons.label(int(i)) for i in dead], "score 0", stacklevel=3)
    return CrossModelRanking(method, _reduce(best, method), neurons, True, dead, {}, best, unit, rho)


def _reduce(score_matrix: np.ndarray, method: str) -> np.ndarray:
    """MaxCorr takes the best model, MinCorr the worst (the neuron's own model is NaN and skipped)."""
    if method not in ("maxcorr", "mincorr"):
        raise JNeuronError(f"unknown cross-model method {method!r}; expected 'maxcorr' or 'mincorr'")
    return (np.nanmax if method == "maxcorr" else np.nanmin)(score_matrix, axis=1)


def _prepare(models, names, valid=None) -> tuple[Source, NeuronIndex, tuple[int, ...]]:
    """The source, the neuron identities, and each model's total width (its layers side by side)."""
    layered = isinstance(models, Mapping) and any(isinstance(v, Mapping) for v in models.values())
    if layered:
        layers = parse_layers(models, names)
        source = as_source(dict(layers.groups), valid=valid)
        neurons = layers.neurons()
        widths = layers.model_widths()
    else:
        source = as_source(models, names=names, valid=valid)
        widths = source.widths
        neurons = source_neurons(source, names if hasattr(source, "layers") else None)
    if len(widths) < 2:
        raise JNeuronError(f"cross-model rankings need at least 2 models, got {len(widths)}")
    return source, neurons, widths


def plan_passes(widths: Sequence[int], memory_budget: int) -> list[tuple[Tile, ...]]:
    """Split the cross-model blocks (each model's rows against all later models) into passes.

    Every tile is one model's rows (a band of them if the model is too wide) against the columns of all
    later models; consecutive tiles share a pass while their bytes fit ``memory_budget``.
    """
    starts = np.cumsum((0,) + tuple(widths))
    total = int(starts[-1])
    tiles = []
    for m in range(len(widths) - 1):
        first, last = int(starts[m]), int(starts[m + 1])
        band = max(1, memory_budget // ((total - last) * _BYTES_PER_ENTRY))
        tiles += [Tile(r, min(r + band, last), last, total) for r in range(first, last, band)]
    passes, current, used = [], [], 0
    for tile in tiles:
        size = (tile.r1 - tile.r0) * (tile.c1 - tile.c0) * _BYTES_PER_ENTRY
        if current and used + size > memory_budget:
            passes.append(tuple(current))
            current, used = [], 0
        current.append(tile)
        used += size
    passes.append(tuple(current))
    return passes


class _PartnerTable:
    """Best |rho|, partner unit and signed rho per (neuron, model), filled tile by tile."""

    def __init__(self, widths: Sequence[int]):
        self.starts = np.cumsum((0,) + tuple(widths))
        shape = (int(self.starts[-1]), len(widths))
        self.best, self.rho = np.full(shape, np.nan), np.full(shape, np.nan)
        self.unit = np.full(shape, -1, np.int64)

    def segments(self, tile: Tile, model: int) -> tuple[tuple[int, int], ...]:
        """The tile's column segments, one per later model (relative to the tile's first column)."""
        return tuple((int(self.starts[b] - tile.c0), int(self.starts[b + 1] - tile.c0))
                     for b in range(model + 1, len(self.starts) - 1))

    def set_rows(self, tile: Tile, model: int, partners: kmax.Partners) -> None:
        """The tile's rows (neurons of ``model``) against each later model: complete in one tile."""
        rho = np.asarray(partners.rho, np.float64)
        rows, later = slice(tile.r0, tile.r1), slice(model + 1, None)
        self.best[rows, later], self.rho[rows, later] = np.abs(rho), rho
        self.unit[rows, later] = np.asarray(partners.unit)

    def improve_columns(self, tile: Tile, model: int, partners: kmax.Partners) -> None:
        """The tile's columns against ``model``: a band of its rows, so keep the best over bands (ties: first)."""
        rho = np.asarray(partners.rho, np.float64)
        cols = slice(tile.c0, tile.c1)
        better = ~(np.abs(rho) <= self.best[cols, model])  # also where nothing is recorded yet (NaN)
        self.best[cols, model] = np.where(better, np.abs(rho), self.best[cols, model])
        self.rho[cols, model] = np.where(better, rho, self.rho[cols, model])
        unit = np.asarray(partners.unit) + tile.r0 - self.starts[model]
        self.unit[cols, model] = np.where(better, unit, self.unit[cols, model])


def passes_needed(widths: Sequence[int], memory_budget: int | None = None) -> int:
    """How many passes over the data a cross-model ranking of these model widths takes (``memory_budget``
    as for :func:`maxcorr`)."""
    return len(plan_passes(widths, config.MEMORY_BUDGET if memory_budget is None else memory_budget))


def _best_partners(source: Source, widths, chunk_tokens: int, memory_budget: int, mesh=None, checkpoint=None,
                   on_chunk=None):
    passes = plan_passes(widths, memory_budget)
    if len(passes) > 1 and not source.reiterable:
        raise JNeuronError(
            f"these models need {len(passes)} passes over the data within memory_budget={memory_budget} "
            "bytes, but a plain iterator can be read only once: pass a callable that returns a fresh "
            "iterator, or raise memory_budget"
        )
    table = _PartnerTable(widths)
    owner = np.repeat(np.arange(len(widths)), widths)
    dead = None
    for tiles in passes:
        stats = accumulate(source, tiles, chunk_tokens, mesh=mesh, checkpoint=checkpoint, on_chunk=on_chunk)
        count = int(stats.count)
        check_min_tokens(count, "cross-model correlation")
        # correlations are read where the pass kept them: in the scaled domain of data whose range needed
        # scaling (kernels.moments.Scale), where cross / sqrt(m2_i m2_j) is the same and nothing overflows
        m2 = kmoments.m2_64(stats, scaled=True)
        if dead is None:  # every pass reads the same rows, and keeps every neuron's range
            dead = constant_neurons(*kmoments.range64(stats, scaled=True), stats.mean.hi.dtype)
        inv_sd = np.where(dead, 0.0, 1.0 / np.sqrt(np.where(dead, 1.0, m2))).astype(stats.mean.hi.dtype)
        for tile, cross in zip(tiles, stats.cross):
            model = int(owner[tile.r0])
            segments = table.segments(tile, model)
            reduce = tile_reducer(cross.hi.shape, segments, mesh, dtype=cross.hi.dtype)
            rows, cols = reduce(cross, inv_sd[tile.r0 : tile.r1], inv_sd[tile.c0 : tile.c1])
            table.set_rows(tile, model, rows)
            table.improve_columns(tile, model, cols)
        if len(passes) > 1:  # every pass compiles for its own tile shapes: drop them, or memory grows per pass
            kmoments.clear_caches()
            kmax.reduce_tile.clear_cache()
            release_freed_memory()
    return table.best, table.unit, table.rho, np.flatnonzero(dead)


@lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> bool:
    """Hand freed heap memory back to the system between passes, where the C library can (glibc); whether it could.

    Compiling and running a pass allocates many small blocks; glibc keeps them in its heap after they are
    freed, so a run of many passes (each compiling its own tile shapes) would grow its resident memory by
    what every pass left behind.

    >>> release_freed_memory() in (True, False)
    True
    """
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
