"""Information-theoretic neuron importance and class selectivity (Amjad et al., 2018; Morcos et al., 2018).

Every neuron's output is quantized (1 bit by default: ``x > 0.5`` for sigmoid units; ``threshold=0`` for
ReLU units), and the exact integer joint counts of (bin, class) are accumulated over streamed chunks
(one-hot contractions on GPU/TPU, numpy on the host on CPU; identical counts). From them: entropy ``H(T_j)``, mutual information ``I(T_j; Y)`` and KL
selectivity ``max_y D(P(T_j | y) || P(T_j))`` (bits by default, ``0 log 0 = 0``), plus Morcos et al.'s
class selectivity index on the raw activations' class means. See :mod:`jneuron.kernels.information`.

>>> import numpy as np, jneuron as jn
>>> labels = np.arange(1000) % 2
>>> acts = np.stack([labels, np.linspace(0.6, 0.9, 1000), np.random.default_rng(0).random(1000)], axis=1)
>>> info = jn.neuron_information(acts, labels)
>>> info.mutual_information.round(3).tolist(), float(info.entropy[1]), round(float(info.selectivity[0]), 6)
([1.0, 0.0, 0.004], 0.0, 1.0)
>>> [n["unit"] for n in info.ranking("mutual_information").top(2)]
[0, 2]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jneuron.data.labelled import LABELS, LabelledSource, activation_source
from jneuron.data.labels import class_ids
from jneuron.data.source import (
    IteratorSource,
    Rows,
    Source,
    as_source,
    float_dtype,
    is_source,
    item_parts,
    name_models,
    reads_dtype,
    source_rows,
)
from jneuron.errors import JNeuronError, QuantizationWarning
from jneuron.kernels import compensated as comp
from jneuron.kernels import information as kinfo
from jneuron.kernels import quantize as kquant
from jneuron.kernels import sharded as ksharded
from jneuron.kernels.moments import count_dtype
from jneuron.kernels.sharded import TOKENS
from jneuron.precision import follow_dtype, working_dtype
from jneuron.results import NeuronIndex, Ranking, Result, to_plain
from jneuron.streaming import cpu_counts
from jneuron.streaming.constant import constant_neurons, warn_constant, with_range
from jneuron.streaming.mesh import resolve_mesh
from jneuron.streaming.passes import (
    HostReduction,
    chunk_callback,
    default_chunk_tokens,
    on_host,
    raise_on_bad_value,
    run_pass,
)

MEASURES = ("mutual_information", "kl_selectivity", "entropy", "selectivity")
QUANTIZERS = ("threshold", "uniform", "quantile")
COUNTING = ("contract", "segment", "host")
OFFSET_RATIO = 64.0  # shift sums by the first chunk's mean when some |mean| > OFFSET_RATIO * std
INT32_ROWS = 2**31 - 1  # rows one device's int32 counts hold
_SHIFT_ROWS = 1024  # rows of the first chunk that decide the shift


@dataclass(frozen=True)
class NeuronInformation(Result):
    """Per-neuron information measures, the exact tables behind them, and who each neuron is.

    Attributes:
      neurons: identity (model, layer, unit) of every flat column.
      counts: exact joint counts ``(neurons, bins, classes)``, int64 (a constant neuron's tokens are all
        counted in the bin most of them fell in: :mod:`jneuron.streaming.constant`).
      class_means: mean raw activation per neuron and class ``(neurons, classes)`` (NaN for absent classes).
      entropy, mutual_information, kl_selectivity: ``H(T_j)``, ``I(T_j; Y)``, ``max_y D(P(T_j|y) || P(T_j))``.
      selectivity: Morcos et al.'s class selectivity index (``eps`` = ``jneuron.kernels.information.SELECTIVITY_EPS``).
      label_entropy: ``H(Y)``, the upper bound of every ``I(T_j; Y)``.
      unit: ``"bits"`` or ``"nats"``.
      quantization: how outputs were binned (mode, bins and the threshold, range or edges).
      dead: constant neurons (:mod:`jneuron.streaming.constant`): every measure 0, ranked last.
      warnings: what makes a measure misleading on these activations: class selectivity on signed values
        (unbounded there), and a 1-bit cut above 0 on signed values (also given as a
        :class:`~jneuron.errors.QuantizationWarning`).
    """

    neurons: NeuronIndex
    counts: np.ndarray
    class_means: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray
    kl_selectivity: np.ndarray
    selectivity: np.ndarray
    label_entropy: float
    unit: str
    quantization: Mapping = field(default_factory=dict)
    dead: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    warnings: tuple[str, ...] = ()

    @property
    def one_bin(self) -> np.ndarray:
        """Neurons whose every token fell in one bin (``H = I = 0``): the constant ones and those the
        quantizer does not split (a 0.5 threshold over values that never cross it)."""
        return np.flatnonzero(np.count_nonzero(self.counts.sum(axis=2), axis=1) <= 1)

    def measure(self, name: str) -> np.ndarray:
        """One measure by name (one of :data:`MEASURES`)."""
        if name not in MEASURES:
            raise JNeuronError(f"unknown information measure {name!r}; expected one of {MEASURES}")
        return getattr(self, name)

    def ranking(self, measure: str = "mutual_information") -> Ranking:
        """Neurons ranked by ``measure``, highest first; every measure is attached as a detail."""
        details = {name: self.measure(name) for name in MEASURES}
        return Ranking(measure, self.measure(measure), self.neurons, True, self.dead, details)

    def rankings(self) -> dict[str, Ranking]:
        """One ranking per measure."""
        return {name: self.ranking(name) for name in MEASURES}

    def table(self) -> list[dict]:
        """One record per neuron (flat order): identity and every measure."""
        return [{**self.neurons.record(i), **{m: float(self.measure(m)[i]) for m in MEASURES}}
                for i in range(len(self.neurons))]

    def to_dict(self) -> dict:
        """Everything, as JSON-ready plain Python."""
        return {
            "unit": self.unit,
            "label_entropy": self.label_entropy,
            "quantization": to_plain(dict(self.quantization)),
            "class_counts": to_plain(self.counts[0].sum(axis=0)) if len(self.counts) else [],
            "dead": [self.neurons.record(int(i)) for i in self.dead],
            "one_bin": len(self.one_bin),
            "warnings": list(self.warnings),
            "neurons": self.table(),
        }


@reads_dtype
def neuron_information(acts, labels=None, *, quantize: str = "threshold", threshold: float = 0.5,
                       bins: int = 2, value_range: tuple | None = None, classes: int | None = None,
                       unit: str = "bits", names: Sequence[str] | None = None, chunk_tokens: int | None = None,
                       resolution: int = 1024, counting: str | None = None, valid=None, devices=None,
                       mesh=None, checkpoint: str | Path | None = None, progress: bool = False,
                       on_chunk: Callable[[int], None] | None = None) -> NeuronInformation:
    """Entropy, mutual information with the labels, KL selectivity and class selectivity of every neuron.

    float64 activations are quantized and summed in float64 (see :mod:`jneuron.precision`), others in
    float32 with compensated class sums.

    Args:
      acts: ``(tokens, neurons)`` activations: an array; a sequence or mapping of arrays (models side by
        side), or a mapping of model name to a mapping of layer name to array; or an iterable of chunks
        ``(x, y)`` (``x`` an array or a tuple of per-model arrays, ``y`` its labels) with ``labels=None``;
        or a callable returning such an iterable (needed for the extra passes of ``"quantile"`` bins or
        ``"uniform"`` bins without ``value_range``).
      labels: integer classes ``(tokens,)`` in ``[0, classes)`` when ``acts`` are arrays.
      quantize: ``"threshold"`` (1 bit, ``x > threshold``), ``"uniform"`` (``bins`` equal-width bins over
        ``value_range``, default each neuron's observed min..max) or ``"quantile"`` (``bins`` equal-count
        bins per neuron, edges estimated in a first pass from ``resolution``-bin histograms).
      threshold: the 1-bit cut: 0.5 for sigmoid units, 0 for ReLU units.
      bins: number of bins for ``"uniform"`` and ``"quantile"``.
      value_range: ``(low, high)`` for ``"uniform"``, scalars or per-neuron arrays.
      classes: number of classes (default: ``max(labels) + 1``; required for chunk iterables).
      unit: ``"bits"`` (log base 2) or ``"nats"``.
      names: model names (default: mapping keys, or ``model0, model1, ...``).
      chunk_tokens: tokens per compiled update (default about 128 MiB of columns, at most ``2**24``; for
        chunk iterables at most the first chunk's length).
      resolution: fine histogram bins per neuron for quantile edge estimation.
      counting: ``"contract"`` (one-hot contractions, the default on GPU/TPU), ``"segment"`` (segment
        sums, the default on CPU when sharded) or ``"host"`` (numpy on this process: one-hot products by
        the BLAS, or per-class sums of rows grouped by class for 8 classes or more, with the quantizers'
        pre-passes in numpy too, see :mod:`jneuron.streaming.cpu_counts`; the default on CPU unless
        sharded, 2-3x faster than ``"segment"`` there); the counts are identical.
      devices: shard the tokens of the counting pass over this many devices (or these devices);
        see :mod:`jneuron.streaming.mesh`. Counts are int32 per device (up to 2**31 tokens per device).
      mesh: or a ``("tokens"[, "neurons"])`` mesh (tokens only are split here; with several processes
        each passes its own tokens).
      valid: boolean ``(tokens,)`` mask of the rows that count (padding, special tokens: ``False``), with
        array activations; chunks carry their own as ``(Rows(x, valid), y)``.
      checkpoint: a folder; every pass saves its running tables there and a rerun over the same data
        resumes from them, giving the same result as an uninterrupted run (see :func:`jneuron.streaming.passes.run_pass`).
      progress: draw a progress line (tokens, throughput, time left) on stderr.
      on_chunk: called with the rows of each chunk read (progress reporting of your own).
    """
    if quantize not in QUANTIZERS:
        raise JNeuronError(f"unknown quantize={quantize!r}; expected one of {QUANTIZERS}")
    sharded = devices is not None or mesh is not None
    counting = counting or ("contract" if jax.default_backend() != "cpu" else "segment" if sharded else "host")
    if counting not in COUNTING:
        raise JNeuronError(f"unknown counting={counting!r}; expected one of {COUNTING}")
    if counting == "host" and sharded:
        raise JNeuronError("counting='host' runs on this process's CPU alone; with devices= or mesh= use "
                           "'segment' or 'contract'")
    if unit not in ("bits", "nats"):
        raise JNeuronError(f"unknown unit {unit!r}; expected 'bits' or 'nats'")
    bins = 2 if quantize == "threshold" else int(bins)
    if bins < 2:
        raise JNeuronError(f"need at least 2 bins, got {bins}")
    classes, source, neurons, rows = _labelled_source(acts, labels, names, classes, chunk_tokens, valid)
    passes = _Passes(source, neurons, classes, rows, resolve_mesh(devices, mesh), checkpoint,
                     chunk_callback(progress, on_chunk, getattr(source, "tokens", None), "neuron_information"),
                     counting == "host")
    with follow_dtype(source.dtype):
        mode, params, description = _quantizer(passes, quantize, threshold, bins, value_range, resolution)
        counts, sums, shift, (low, high) = _tables(passes, mode, params, bins, counting)
        dead = np.flatnonzero(constant_neurons(low, high, params[0].dtype))
    class_counts = counts[0].sum(axis=0) if len(counts) else np.zeros(classes, np.int64)
    if np.count_nonzero(class_counts) < 2:
        raise JNeuronError(f"need at least 2 classes among the labels, got {np.count_nonzero(class_counts)} "
                           f"(class counts {class_counts.tolist()})")
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(class_counts > 0, sums / class_counts, np.nan) + shift[:, None]
    base = 2.0 if unit == "bits" else math.e
    counts = _in_one_bin(counts, dead)
    warn_constant("neuron_information", [neurons.label(int(i)) for i in dead], "score 0 (counted in one bin)", 3)
    tables = counts.astype(np.float64)
    selectivity = np.asarray(kinfo.class_selectivity(np.nan_to_num(means), class_counts), np.float64)
    selectivity[dead] = 0.0
    cautions = _cautions(low, counts, quantize, np.asarray(threshold, np.float64))
    if len(cautions) == 2:  # a cut meant for sigmoid outputs on signed values
        warnings.warn(" ".join(cautions), QuantizationWarning, stacklevel=3)
    return NeuronInformation(
        neurons=neurons,
        counts=counts,
        class_means=means,
        entropy=kinfo.entropy(tables, base),
        mutual_information=kinfo.mutual_information(tables, base),
        kl_selectivity=kinfo.kl_selectivity(tables, base),
        selectivity=selectivity,
        label_entropy=float(kinfo.label_entropy(tables, base)),
        unit=unit,
        quantization={"mode": quantize, "bins": bins, **description},
        dead=dead,
        warnings=cautions,
    )


def _cautions(low: np.ndarray, counts: np.ndarray, quantize: str, threshold: np.ndarray) -> tuple[str, ...]:
    """What makes the measures misleading on these activations (some neuron's minimum below 0): a 1-bit cut
    above 0, then class selectivity (the cut's caution first)."""
    signed = int(np.count_nonzero(np.asarray(low) < 0))
    if not signed:
        return ()
    cautions = []
    if quantize == "threshold" and np.any(threshold > 0):
        above = counts[:, 1:].sum() / max(int(counts.sum()), 1)
        cut = f"{float(threshold.max()):g}" if threshold.ndim == 0 or np.ptp(threshold) == 0 else "above 0"
        cautions.append(f"{signed} of {len(low)} neurons take negative values (signed units), but the 1-bit cut is at "
                        f"{cut} (meant for sigmoid outputs): {100 * above:.0f}% of values fall above it; use "
                        "threshold=0 (--threshold 0) or quantize='quantile' for signed activations.")
    cautions.append("class selectivity divides by the sum of class means; on signed activations that sum can be "
                    "near 0 and the index unbounded, so rank signed units by mutual information or KL selectivity")
    return tuple(cautions)


def _in_one_bin(counts: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """The counts with each constant neuron's tokens moved into the bin most of them fell in (its
    rounding-level jitter split nothing real)."""
    if not len(dead):
        return counts
    counts = counts.copy()
    per_class = counts[dead].sum(axis=1)  # (dead, classes)
    where = counts[dead].sum(axis=2).argmax(axis=1)
    counts[dead] = 0
    counts[dead, where] = per_class
    return counts


def _labelled_source(acts, labels, names, classes, chunk_tokens, valid) -> tuple[Source, NeuronIndex, int, int]:
    """The activations with their class ids as one more column (labels stream beside the rows), the
    neurons' identities, the number of classes and the rows per chunk."""
    if labels is not None:
        source, neurons = activation_source(acts, names, valid)
        tokens, mask = source.tokens, source.valid
        ids = np.asarray(labels)
        if mask is not None and ids.shape == mask.shape:  # the labels of invalid rows are never read
            ids = np.where(mask, ids, 0)
        ids = class_ids(ids, "labels", tokens)
        if tokens == 0:
            raise JNeuronError("no tokens to analyse")
        classes = int(ids.max()) + 1 if classes is None else int(classes)
        class_ids(ids, "labels", tokens, classes)
        labelled = LabelledSource(source, ids)
        rows = min(chunk_tokens or default_chunk_tokens(sum(labelled.widths), tokens), tokens, kinfo.MAX_CHUNK_TOKENS)
        return _check_classes(classes), labelled, neurons, rows
    if hasattr(acts, "shape") or is_source(acts) or isinstance(acts, (Mapping, list, tuple)) and _looks_like_arrays(acts):
        raise JNeuronError("labels are required when activations are given as arrays")
    if valid is not None:
        raise JNeuronError("valid=: give each chunk's mask with its activations, as (Rows(x, valid), y)")
    if classes is None:
        raise JNeuronError("classes=... is required when activations and labels come as chunks")
    classes = _check_classes(int(classes))
    if isinstance(acts, (list, tuple)):  # a list of (x, y) chunks can be read again
        items, reiterable = (lambda: iter(acts)), True
    elif callable(acts):
        items, reiterable = acts, True
    elif isinstance(acts, Iterable):
        once = iter(acts)
        items, reiterable = (lambda: once), False
    else:
        raise JNeuronError(f"cannot read activations from {type(acts).__name__}")

    def labelled():
        seen = 0
        for index, item in enumerate(items()):
            x, y = _split_item(item, index)
            mask = x.valid if isinstance(x, Rows) else None
            parts = item_parts(x)
            dtype = float_dtype(np.result_type(*[np.dtype(getattr(p, "dtype", np.float32)) for p in parts]))
            rows = np.shape(parts[0])[0] if parts and len(np.shape(parts[0])) else 0
            y = class_ids(y, f"chunk {index} labels", row0=seen)
            if len(y) != rows:
                raise JNeuronError(f"chunk {index}: {rows} tokens but {len(y)} labels")
            class_ids(y, f"chunk {index} labels", classes=classes, row0=seen)
            seen += rows
            yield Rows(tuple(parts) + (y.astype(dtype)[:, None],), mask)

    source = as_source(labelled if reiterable else labelled())
    first = item_parts(source.first)
    model_names = name_models(None, names, len(first) - 1)
    source = replace(source, names=model_names + (LABELS,))
    neurons = NeuronIndex.from_widths(model_names, source.widths[:-1])
    rows = chunk_tokens or min(default_chunk_tokens(sum(source.widths)), max(len(first[-1]), 1))
    return classes, source, neurons, min(rows, kinfo.MAX_CHUNK_TOKENS)


def _check_classes(classes: int) -> int:
    if classes < 2:
        raise JNeuronError(f"need at least 2 classes, got classes={classes}")
    return classes


def _require_reiterable(source: Source, why: str) -> None:
    if not source.reiterable:
        raise JNeuronError(f"{why} needs an extra pass over the data, but a plain iterator can be read "
                           "only once: pass arrays or a callable that returns a fresh iterator")


def _looks_like_arrays(acts) -> bool:
    values = list(acts.values()) if isinstance(acts, Mapping) else list(acts)
    return bool(values) and all(hasattr(v, "shape") or isinstance(v, Mapping) for v in values)


def _split_item(item, index: int):
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise JNeuronError(f"chunk {index}: expected a pair (activations, labels)")
    return item


@dataclass(frozen=True)
class _Passes:
    """How every pass of one analysis runs: the labelled source and the one pass's keywords."""

    source: Source
    neurons: NeuronIndex
    classes: int
    rows: int
    mesh: object
    checkpoint: object
    on_chunk: object
    host: bool = False  # every pass by numpy on this host (HostReduction)

    @property
    def width(self) -> int:
        return len(self.neurons)

    def run(self, reduction: ksharded.Reduction | HostReduction, key: dict, args: tuple = ()):
        """One pass of ``reduction``; its combined statistic on the host (one copy per neuron shard dropped)."""
        done = run_pass(self.source, reduction, self.rows, mesh=self.mesh, args=args, on_chunk=self.on_chunk,
                        checkpoint=self.checkpoint, key=key)
        if self.host:  # int64 counts on the host
            return done.state, done.position
        shards = 1 if self.mesh is None else ksharded.axis_size(self.mesh, TOKENS)
        if done.position.counted > INT32_ROWS * shards:  # int32 device counts would have wrapped around
            raise JNeuronError(f"{done.position.counted} rows exceed the int32 counts of {shards} device(s) "
                               f"({INT32_ROWS} rows each): shard over more devices (devices=)")
        return on_host(done.state, self.mesh), done.position

    def first_rows(self) -> np.ndarray:
        """The valid rows of the first chunk (without the labels), to choose the sums' shift from."""
        if isinstance(self.source, IteratorSource):  # a plain iterator cannot be read twice: its first item
            first = self.source.first
            parts = item_parts(first)
            values = np.concatenate([np.asarray(p, np.float64) for p in parts[:-1]], axis=1)[: self.rows]
        else:
            first = next(source_rows(self.source, self.rows))
            values = np.asarray(first.parts[:, : self.width], np.float64)
        mask = first.valid if isinstance(first, Rows) else None
        return values if mask is None else values[np.asarray(mask)[: len(values)]]


def _quantizer(passes: _Passes, quantize: str, threshold, bins: int, value_range, resolution: int):
    """The kernel mode, its parameters (device arrays) and a JSON-ready description."""
    dtype = working_dtype(passes.source.dtype)
    if quantize == "threshold":
        value = np.broadcast_to(np.asarray(threshold, np.float64), (passes.width,))
        return "threshold", (jnp.asarray(value, dtype),), {"threshold": _scalar_or_list(value)}
    if quantize == "uniform" and value_range is not None:
        low, high = (np.broadcast_to(np.asarray(v, np.float64), (passes.width,)) for v in value_range)
        if (high < low).any():
            raise JNeuronError(f"value_range: high < low for neuron {int(np.flatnonzero(high < low)[0])}")
        return "uniform", (jnp.asarray(low, dtype), jnp.asarray(high, dtype)), {
            "low": _scalar_or_list(low), "high": _scalar_or_list(high)}
    _require_reiterable(passes.source, f"quantize={quantize!r} without value_range")
    minmax = (_host_minmax_reduction if passes.host else _minmax_reduction)(passes.width, jnp.dtype(dtype))
    (low, high, bad_row, bad_col), position = passes.run(minmax, {"statistic": "minmax", "host": passes.host})
    raise_on_bad_value(int(bad_row), int(bad_col), passes.source, position, passes.neurons)
    low, high = jnp.asarray(low, dtype), jnp.asarray(high, dtype)
    if quantize == "uniform":
        return "uniform", (low, high), {"low": np.asarray(low, np.float64), "high": np.asarray(high, np.float64)}
    histogram = (_host_histogram_reduction if passes.host else _histogram_reduction)(passes.width, resolution)
    host_range = (np.asarray(low), np.asarray(high))
    counts, _ = passes.run(histogram, {"statistic": "histogram", "resolution": resolution, "host": passes.host},
                           host_range if passes.host else (low, high))
    edges = _quantile_edges(jnp.asarray(np.asarray(counts, np.int32)), low, high, bins)
    return "edges", (edges,), {"edges": np.asarray(edges, np.float64), "resolution": resolution}


def _scalar_or_list(values: np.ndarray):
    return float(values[0]) if (values == values[0]).all() else values


_quantile_edges = jax.jit(kquant.quantile_edges, static_argnames="bins")


@lru_cache(maxsize=16)
def _minmax_reduction(width: int, dtype) -> ksharded.Reduction:
    """Per-neuron minimum and maximum (and the first bad value) as a reduction of the one pass."""

    def init():
        none = jnp.array(-1, count_dtype())
        return jnp.full(width, jnp.inf, dtype), jnp.full(width, -jnp.inf, dtype), none, none

    def chunk(columns, n_valid, row0):
        x = columns[:, :width]
        low, high = kquant.minmax(x, n_valid)
        none = jnp.full_like(jnp.asarray(row0, count_dtype()), -1)
        row, col = jax.lax.cond(jnp.all(jnp.isfinite(low) & jnp.isfinite(high)) | (n_valid == 0),
                                lambda: (none, none), lambda: kinfo.first_bad(x, n_valid, row0))
        return low, high, row, col

    def merge(a, b):
        take_a = (a[2] >= 0) & ((b[2] < 0) | (a[2] <= b[2]))
        return (jnp.minimum(a[0], b[0]), jnp.maximum(a[1], b[1]), jnp.where(take_a, a[2], b[2]),
                jnp.where(take_a, a[3], b[3]))

    return ksharded.Reduction(init, chunk, merge)


@lru_cache(maxsize=16)
def _histogram_reduction(width: int, resolution: int) -> ksharded.Reduction:
    """Fine per-neuron histograms over ``[low, high]`` (the quantile pre-pass) as a reduction."""

    def chunk(columns, n_valid, row0, low, high):
        return kquant.histogram(columns[:, :width], n_valid, low, high, resolution)

    return ksharded.Reduction(lambda: jnp.zeros((width, resolution), jnp.int32), chunk)


def _host_first_bad(x: np.ndarray, rows: int, row0: int) -> tuple[np.ndarray, np.ndarray]:
    """``(row, column)`` of a host chunk's first NaN or Inf (its row counted from ``row0``), ``-1`` for none."""
    bad = cpu_counts.first_bad(x, rows)
    return (np.array(-1), np.array(-1)) if bad is None else (np.array(row0 + bad[0]), np.array(bad[1]))


def _earliest_bad(a: tuple, b: tuple) -> tuple:
    """The earlier of two ``(row, column)`` first bad values (``row < 0``: none)."""
    return a if a[0] >= 0 and (b[0] < 0 or a[0] <= b[0]) else b


@lru_cache(maxsize=16)
def _host_minmax_reduction(width: int, dtype) -> HostReduction:
    """:func:`_minmax_reduction` in numpy (:func:`jneuron.streaming.cpu_counts.minmax`), on the host."""
    dtype = np.dtype(dtype)

    def init():
        return np.full(width, np.inf, dtype), np.full(width, -np.inf, dtype), np.array(-1), np.array(-1)

    def chunk(columns, n_valid, row0):
        x = columns[:, :width]
        low, high = cpu_counts.minmax(x, n_valid)
        finite = np.isfinite(low).all() and np.isfinite(high).all()
        return (low, high) + ((np.array(-1), np.array(-1)) if finite else _host_first_bad(x, n_valid, row0))

    def merge(a, b):
        return (np.minimum(a[0], b[0]), np.maximum(a[1], b[1])) + _earliest_bad(a[2:], b[2:])

    return HostReduction(init, chunk, merge)


@lru_cache(maxsize=16)
def _host_histogram_reduction(width: int, resolution: int) -> HostReduction:
    """:func:`_histogram_reduction` by ``np.bincount`` on the host (:func:`jneuron.streaming.cpu_counts.histogram`)."""

    def chunk(columns, n_valid, row0, low, high):
        return cpu_counts.histogram(columns[:, :width], n_valid, low, high, resolution)

    return HostReduction(lambda: np.zeros((width, resolution), np.int64), chunk)


def _tables(passes: _Passes, mode: str, params, bins: int, counting: str) -> tuple:
    """One pass: host int64 joint counts, float64 class sums of ``x - shift``, the shift, and every neuron's
    ``(min, max)`` (:func:`jneuron.streaming.constant.with_range`).

    Where the first chunk's first rows show a neuron whose mean is large against its spread (``|mean| >
    OFFSET_RATIO * std``), every neuron is shifted by its first-chunk mean before summing, so float32 sums
    keep the digits that class differences live in.
    """
    dtype = params[0].dtype
    shift = np.asarray(jnp.asarray(_shift(passes.first_rows()[:_SHIFT_ROWS]), dtype), np.float64)
    key = {"statistic": "information", "mode": mode, "bins": bins, "classes": passes.classes, "counting": counting,
           "params": [np.asarray(p, np.float64).tolist() for p in params], "shift": shift.tolist()}
    if counting == "host":
        reduction = with_range(_host_counting_reduction(passes.width, bins, passes.classes, mode), passes.width,
                               np.dtype(dtype))
        host_dtype = np.dtype(dtype)
        args = (shift.astype(host_dtype) if shift.any() else None,
                *(np.asarray(p, host_dtype) for p in params))
    else:
        reduction = with_range(_counting_reduction(passes.width, bins, passes.classes, jnp.dtype(dtype), mode, counting),
                               passes.width, jnp.dtype(dtype))
        args = (jnp.asarray(shift, dtype), *params)
    ranged, position = passes.run(reduction, key, args)
    total = ranged.state
    raise_on_bad_value(int(total.bad_row), int(total.bad_col), passes.source, position, passes.neurons)
    sums = total.sums if counting == "host" else comp.value64(total.sums)
    return np.asarray(total.counts, np.int64), sums, shift, (np.asarray(ranged.low), np.asarray(ranged.high))


@lru_cache(maxsize=16)
def _counting_reduction(width: int, bins: int, classes: int, dtype, mode: str, counting: str) -> ksharded.Reduction:
    def chunk(columns, n_valid, row0, shift, *params):
        x, labels = columns[:, :width], columns[:, width].astype(jnp.int32)
        return kinfo.chunk_statistics(x, labels, n_valid, row0, shift, params, mode=mode, bins=bins,
                                      classes=classes, method=counting)

    return ksharded.Reduction(lambda: kinfo.init(width, bins, classes, dtype), chunk, kinfo.merge)


class _HostTables(NamedTuple):
    """The host counting's running tables: int64 counts, float64 class sums, the first bad value."""

    counts: np.ndarray
    sums: np.ndarray
    bad_row: np.ndarray
    bad_col: np.ndarray


@lru_cache(maxsize=16)
def _host_counting_reduction(width: int, bins: int, classes: int, mode: str) -> HostReduction:
    """:func:`_counting_reduction` by numpy on the host (:func:`jneuron.streaming.cpu_counts.chunk_tables`)."""

    def init():
        return _HostTables(np.zeros((width, bins, classes), np.int64), np.zeros((width, classes), np.float64),
                           np.array(-1), np.array(-1))

    def chunk(columns, n_valid, row0, shift, *params):
        x, labels = columns[:, :width], columns[:, width].astype(np.intp)
        counts, sums = cpu_counts.chunk_tables(x, labels, n_valid, classes=classes, mode=mode, params=params,
                                               bins=bins, shift=shift)
        bad = (np.array(-1), np.array(-1)) if np.isfinite(sums).all() else _host_first_bad(x, n_valid, row0)
        return _HostTables(counts, sums, *bad)

    def merge(a, b):
        return _HostTables(a.counts + b.counts, a.sums + b.sums, *_earliest_bad(a[2:], b[2:]))

    return HostReduction(init, chunk, merge)


def _shift(first: np.ndarray) -> np.ndarray:
    """Per-neuron first-chunk means if some varying neuron's offset dwarfs its spread, else zeros."""
    first = np.asarray(first, np.float64)
    if not len(first):  # no valid row in the first chunk (the pass says whether any row is valid)
        return np.zeros(first.shape[1])
    with np.errstate(invalid="ignore"):
        mean, std = first.mean(axis=0), first.std(axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    offset = (std > 0) & (np.abs(mean) > OFFSET_RATIO * np.where(np.isfinite(std), std, np.inf))
    return mean if offset.any() else np.zeros_like(mean)
