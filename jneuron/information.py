"""Information-theoretic neuron importance and class selectivity (Amjad et al., 2018; Morcos et al., 2018).

Every neuron's output is quantized (1 bit by default: ``x > 0.5`` for sigmoid units; ``threshold=0`` for
ReLU units), and the exact integer joint counts of (bin, class) are accumulated over streamed chunks
(one-hot contractions on GPU/TPU, the same products by the host BLAS on CPU; identical counts). From them: entropy ``H(T_j)``, mutual information ``I(T_j; Y)`` and KL
selectivity ``max_y D(P(T_j | y) || P(T_j))`` (bits by default, ``0 log 0 = 0``), plus Morcos et al.'s
class selectivity index on the raw activations' class means. See :mod:`jneuron.kernels.information`.

>>> import numpy as np, jneuron as jn
>>> labels = np.arange(1000) % 2
>>> acts = np.stack([labels, np.full(1000, 0.7), np.random.default_rng(0).random(1000)], axis=1)
>>> info = jn.neuron_information(acts, labels)
>>> info.mutual_information.round(3).tolist(), float(info.entropy[1]), round(float(info.selectivity[0]), 6)
([1.0, 0.0, 0.004], 0.0, 1.0)
>>> [n["unit"] for n in info.ranking("mutual_information").top(2)]
[0, 2]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jneuron._checks import as_2d
from jneuron.data.atomic import atomic_write_json
from jneuron.data.source import _chunk_parts, _names, float_dtype
from jneuron.errors import JNeuronError
from jneuron.kernels import compensated as comp
from jneuron.kernels import information as kinfo
from jneuron.kernels import quantize as kquant
from jneuron.kernels import sharded as ksharded
from jneuron.kernels.moments import count_dtype
from jneuron.kernels.sharded import NEURONS
from jneuron.precision import follow_dtype, working_dtype
from jneuron.results import NeuronIndex, Ranking, _plain
from jneuron.streaming import cpu_counts
from jneuron.streaming.mesh import resolve_mesh
from jneuron.streaming.passes import default_chunk_tokens, fold_sharded

MEASURES = ("mutual_information", "kl_selectivity", "entropy", "selectivity")
QUANTIZERS = ("threshold", "uniform", "quantile")
COUNTING = ("contract", "segment", "host")
OFFSET_RATIO = 64.0  # shift sums by the first chunk's mean when some |mean| > OFFSET_RATIO * std
_SHIFT_ROWS = 1024  # rows of the first chunk that decide the shift
_FLUSH_TOKENS = 2**31 - 1  # int32 device counts are moved to host int64 before they could overflow


@dataclass(frozen=True)
class NeuronInformation:
    """Per-neuron information measures, the exact tables behind them, and who each neuron is.

    Attributes:
      neurons: identity (model, layer, unit) of every flat column.
      counts: exact joint counts ``(neurons, bins, classes)``, int64.
      class_means: mean raw activation per neuron and class ``(neurons, classes)`` (NaN for absent classes).
      entropy, mutual_information, kl_selectivity: ``H(T_j)``, ``I(T_j; Y)``, ``max_y D(P(T_j|y) || P(T_j))``.
      selectivity: Morcos et al.'s class selectivity index (``eps`` = ``jneuron.kernels.information.SELECTIVITY_EPS``).
      label_entropy: ``H(Y)``, the upper bound of every ``I(T_j; Y)``.
      unit: ``"bits"`` or ``"nats"``.
      quantization: how outputs were binned (mode, bins and the threshold, range or edges).
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

    @property
    def dead(self) -> np.ndarray:
        """Neurons whose every token fell in one bin (``H = I = 0``)."""
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
            "quantization": _plain(dict(self.quantization)),
            "class_counts": _plain(self.counts[0].sum(axis=0)) if len(self.counts) else [],
            "dead": [self.neurons.record(int(i)) for i in self.dead],
            "neurons": self.table(),
        }

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON, atomically."""
        return atomic_write_json(path, self.to_dict())


def neuron_information(acts, labels=None, *, quantize: str = "threshold", threshold: float = 0.5,
                       bins: int = 2, value_range: tuple | None = None, classes: int | None = None,
                       unit: str = "bits", names: Sequence[str] | None = None, chunk_tokens: int | None = None,
                       resolution: int = 1024, counting: str | None = None, devices=None,
                       mesh=None) -> NeuronInformation:
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
        sums) or ``"host"`` (the one-hot products by numpy's BLAS, :mod:`jneuron.streaming.cpu_counts`;
        the default on CPU unless sharded, several times faster than either compiled route there); the
        counts are identical.
      devices: shard the tokens of the counting pass over this many devices (or these devices);
        see :mod:`jneuron.streaming.mesh`. Counts are int32 per device (up to 2**31 tokens in all).
      mesh: or a ``("tokens"[, "neurons"])`` mesh (tokens only are split here; with several processes
        each passes its own tokens).
    """
    if quantize not in QUANTIZERS:
        raise JNeuronError(f"unknown quantize={quantize!r}; expected one of {QUANTIZERS}")
    sharded = devices is not None or mesh is not None
    counting = counting or ("contract" if jax.default_backend() != "cpu" else "segment" if sharded else "host")
    if counting == "host" and sharded:
        raise JNeuronError("counting='host' runs on this process's CPU; with devices= or mesh= use 'segment' "
                           "or 'contract'")
    if counting not in COUNTING:
        raise JNeuronError(f"unknown counting={counting!r}; expected one of {COUNTING}")
    if unit not in ("bits", "nats"):
        raise JNeuronError(f"unknown unit {unit!r}; expected 'bits' or 'nats'")
    bins = 2 if quantize == "threshold" else int(bins)
    if bins < 2:
        raise JNeuronError(f"need at least 2 bins, got {bins}")
    stream = _Stream.build(acts, labels, names, classes, chunk_tokens)
    mesh = resolve_mesh(devices, mesh)
    tables = _tables if mesh is None else partial(_tables_sharded, mesh=mesh)
    with follow_dtype(stream.dtype):
        mode, params, description = _quantizer(stream, quantize, threshold, bins, value_range, resolution)
        counts, sums, shift = tables(stream, mode, params, bins, counting)
    class_counts = counts[0].sum(axis=0) if len(counts) else np.zeros(stream.classes, np.int64)
    if np.count_nonzero(class_counts) < 2:
        raise JNeuronError(f"need at least 2 classes among the labels, got {np.count_nonzero(class_counts)} "
                           f"(class counts {class_counts.tolist()})")
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(class_counts > 0, sums / class_counts, np.nan) + shift[:, None]
    base = 2.0 if unit == "bits" else math.e
    tables = counts.astype(np.float64)
    return NeuronInformation(
        neurons=stream.neurons,
        counts=counts,
        class_means=means,
        entropy=kinfo.entropy(tables, base),
        mutual_information=kinfo.mutual_information(tables, base),
        kl_selectivity=kinfo.kl_selectivity(tables, base),
        selectivity=kinfo.class_selectivity(np.nan_to_num(means), class_counts),
        label_entropy=float(kinfo.label_entropy(tables, base)),
        unit=unit,
        quantization={"mode": quantize, "bins": bins, **description},
    )


@dataclass
class _Stream:
    """Labelled chunks ``(x, y)`` of a fixed padded shape, and the neurons' identities."""

    make_iterator: Callable[[], Iterator]
    reiterable: bool
    neurons: NeuronIndex
    width: int
    dtype: np.dtype
    classes: int
    chunk_tokens: int

    @classmethod
    def build(cls, acts, labels, names, classes, chunk_tokens) -> _Stream:
        if labels is not None:
            arrays, neurons = _arrays(acts, names)
            labels = _check_labels(labels, "labels")
            tokens = arrays[0].shape[0]
            if len(labels) != tokens:
                raise JNeuronError(f"labels: expected {tokens} labels (one per token), got {len(labels)}")
            if tokens == 0:
                raise JNeuronError("no tokens to analyse")
            classes = int(labels.max()) + 1 if classes is None else int(classes)
            dtype = float_dtype(np.result_type(*[np.dtype(a.dtype) for a in arrays]))
            width = sum(a.shape[1] for a in arrays)
            rows = min(chunk_tokens or default_chunk_tokens(width, tokens), tokens, kinfo.MAX_CHUNK_TOKENS)

            def make_iterator():
                for start in range(0, tokens, rows):
                    parts = [np.asarray(a[start:start + rows], dtype) for a in arrays]
                    yield (parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)), labels[start:start + rows]

            return cls._finish(make_iterator, True, neurons, width, dtype, classes, rows)
        if hasattr(acts, "shape") or isinstance(acts, (Mapping, list, tuple)) and _looks_like_arrays(acts):
            raise JNeuronError("labels are required when activations are given as arrays")
        if classes is None:
            raise JNeuronError("classes=... is required when activations and labels come as chunks")
        if isinstance(acts, (list, tuple)):  # a list of (x, y) chunks can be read again
            return cls._from_chunks(lambda: iter(acts), True, names, int(classes), chunk_tokens)
        reiterable = callable(acts)
        if not reiterable and not isinstance(acts, Iterable):
            raise JNeuronError(f"cannot read activations from {type(acts).__name__}")
        once = iter(acts) if not reiterable else None
        make = acts if reiterable else (lambda: once)
        return cls._from_chunks(make, reiterable, names, int(classes), chunk_tokens)

    @classmethod
    def _from_chunks(cls, make, reiterable, names, classes, chunk_tokens) -> _Stream:
        iterator = iter(make())
        try:
            first = next(iterator)
        except StopIteration:
            raise JNeuronError("the chunk iterator is empty: no tokens to analyse") from None
        x0, _ = _split_item(first, 0)
        parts = list(x0) if isinstance(x0, (tuple, list)) else [x0]
        model_names = _names(None, names, len(parts))
        widths = tuple(as_2d(p, f"chunk 0, model '{n}'").shape[1] for p, n in zip(parts, model_names))
        dtype = float_dtype(np.result_type(*[np.dtype(getattr(p, "dtype", np.float32)) for p in parts]))
        rows = chunk_tokens or min(default_chunk_tokens(sum(widths)), max(len(np.asarray(first[1])), 1))
        rows = min(rows, kinfo.MAX_CHUNK_TOKENS)
        pending = [iterator]

        def make_iterator():
            source = pending.pop() if pending else iter(make())
            items = [first] if source is iterator else []
            for index, item in enumerate(_chain(items, source)):
                x, y = _split_item(item, index)
                x_parts = _chunk_parts(x, index, model_names, widths)
                joined = x_parts[0] if len(x_parts) == 1 else np.concatenate(x_parts, axis=1)
                y = _check_labels(y, f"chunk {index} labels")
                if len(y) != joined.shape[0]:
                    raise JNeuronError(f"chunk {index}: {joined.shape[0]} tokens but {len(y)} labels")
                for start in range(0, len(y), rows):
                    yield joined[start:start + rows].astype(dtype, copy=False), y[start:start + rows]

        neurons = NeuronIndex.from_widths(model_names, widths)
        return cls._finish(make_iterator, reiterable, neurons, sum(widths), dtype, classes, rows)

    @classmethod
    def _finish(cls, make_iterator, reiterable, neurons, width, dtype, classes, rows) -> _Stream:
        if classes < 2:
            raise JNeuronError(f"need at least 2 classes, got classes={classes}")
        return cls(make_iterator, reiterable, neurons, width, dtype, classes, rows)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """Chunks padded to ``chunk_tokens`` rows: ``(x, y, valid rows)``."""
        offset = 0
        for x, y in self.make_iterator():
            rows = len(y)
            if rows == 0:
                continue
            if (y >= self.classes).any():
                bad = int(np.flatnonzero(y >= self.classes)[0])
                raise JNeuronError(f"label {int(y[bad])} at row {offset + bad} is out of range for "
                                   f"classes={self.classes} (labels must lie in 0..{self.classes - 1})")
            offset += rows
            pad = self.chunk_tokens - rows
            if pad:
                x, y = np.pad(x, ((0, pad), (0, 0))), np.pad(y, (0, pad))
            yield x, y.astype(np.int32, copy=False), rows

    def require_reiterable(self, why: str) -> None:
        if not self.reiterable:
            raise JNeuronError(f"{why} needs an extra pass over the data, but a plain iterator can be read "
                               "only once: pass arrays or a callable that returns a fresh iterator")


def _chain(items, source):
    yield from items
    yield from source


def _looks_like_arrays(acts) -> bool:
    values = list(acts.values()) if isinstance(acts, Mapping) else list(acts)
    return bool(values) and all(hasattr(v, "shape") or isinstance(v, Mapping) for v in values)


def _split_item(item, index: int):
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise JNeuronError(f"chunk {index}: expected a pair (activations, labels)")
    return item


def _check_labels(labels, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise JNeuronError(f"{what}: expected a 1-D array of integer classes, got shape {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise JNeuronError(f"{what}: expected integer classes, got dtype {labels.dtype}")
    if len(labels) and labels.min() < 0:
        raise JNeuronError(f"{what}: negative class {int(labels.min())} at row {int(np.argmin(labels))}")
    return labels.astype(np.int64, copy=False)


def _arrays(acts, names) -> tuple[list, NeuronIndex]:
    """Column groups (side by side) and the neurons' identities, from the array forms of ``acts``."""
    if hasattr(acts, "shape"):
        array = as_2d(acts, "activations")
        model = (names or ["model0"])[0]
        return [array], NeuronIndex.from_widths([model], [array.shape[1]])
    if isinstance(acts, Mapping) and any(isinstance(v, Mapping) for v in acts.values()):
        model_names = tuple(names) if names is not None else tuple(str(k) for k in acts)
        arrays, spec = [], []
        for model_name, value in zip(model_names, acts.values()):
            layers = value if isinstance(value, Mapping) else {"": value}
            arrays += [as_2d(a, f"model '{model_name}', layer '{layer}'") for layer, a in layers.items()]
            spec.append((model_name, [(str(layer), np.shape(a)[1]) for layer, a in layers.items()]))
        neurons = NeuronIndex.from_layers(spec)
    elif isinstance(acts, (Mapping, Sequence)) and not isinstance(acts, str):
        values = list(acts.values()) if isinstance(acts, Mapping) else list(acts)
        model_names = _names(acts, names, len(values))
        arrays = [as_2d(a, f"model '{n}'") for a, n in zip(values, model_names)]
        neurons = NeuronIndex.from_widths(model_names, [a.shape[1] for a in arrays])
    else:
        raise JNeuronError(f"cannot read activations from {type(acts).__name__} together with labels")
    if not arrays:
        raise JNeuronError("no activations given")
    tokens = {a.shape[0] for a in arrays}
    if len(tokens) != 1:
        raise JNeuronError(f"all activation arrays must cover the same tokens; token counts differ: {sorted(tokens)}")
    return arrays, neurons


def _quantizer(stream: _Stream, quantize: str, threshold, bins: int, value_range, resolution: int):
    """The kernel mode, its parameters (device arrays) and a JSON-ready description."""
    dtype = working_dtype(stream.dtype)
    if quantize == "threshold":
        value = np.broadcast_to(np.asarray(threshold, np.float64), (stream.width,))
        return "threshold", (jnp.asarray(value, dtype),), {"threshold": _scalar_or_list(value)}
    if quantize == "uniform" and value_range is not None:
        low, high = (np.broadcast_to(np.asarray(v, np.float64), (stream.width,)) for v in value_range)
        if (high < low).any():
            raise JNeuronError(f"value_range: high < low for neuron {int(np.flatnonzero(high < low)[0])}")
        return "uniform", (jnp.asarray(low, dtype), jnp.asarray(high, dtype)), {
            "low": _scalar_or_list(low), "high": _scalar_or_list(high)}
    stream.require_reiterable(f"quantize={quantize!r} without value_range")
    low, high = _minmax(stream, dtype)
    if quantize == "uniform":
        return "uniform", (low, high), {"low": np.asarray(low, np.float64), "high": np.asarray(high, np.float64)}
    counts = _histograms(stream, low, high, resolution)
    edges = _quantile_edges(counts, low, high, bins)
    return "edges", (edges,), {"edges": np.asarray(edges, np.float64), "resolution": resolution}


def _scalar_or_list(values: np.ndarray):
    return float(values[0]) if (values == values[0]).all() else values


@jax.jit
def _minmax_step(low, high, x, n_valid):
    chunk_low, chunk_high = kquant.minmax(x, n_valid)
    return jnp.minimum(low, chunk_low), jnp.maximum(high, chunk_high)


@partial(jax.jit, static_argnames="resolution")
def _histogram_step(counts, x, n_valid, low, high, resolution: int):
    return counts + kquant.histogram(x, n_valid, low, high, resolution)


_quantile_edges = jax.jit(kquant.quantile_edges, static_argnames="bins")


def _minmax(stream: _Stream, dtype):
    if jax.default_backend() == "cpu":  # numpy's reductions, no copy to the device
        low, high = np.full(stream.width, np.inf, dtype), np.full(stream.width, -np.inf, dtype)
        for x, _, rows in stream.chunks():
            chunk_low, chunk_high = cpu_counts.minmax(np.asarray(x, dtype), rows)
            low, high = np.minimum(low, chunk_low), np.maximum(high, chunk_high)
        return jnp.asarray(low, dtype), jnp.asarray(high, dtype)
    low, high = jnp.asarray(np.full(stream.width, np.inf), dtype), jnp.asarray(np.full(stream.width, -np.inf), dtype)
    for x, _, rows in stream.chunks():
        low, high = _minmax_step(low, high, jnp.asarray(x, dtype), rows)
    return low, high


def _histograms(stream: _Stream, low, high, resolution: int):
    if jax.default_backend() == "cpu":  # one np.bincount a chunk (XLA's CPU scatter-add is far slower)
        counts = np.zeros((stream.width, resolution), np.int64)
        host_low, host_high = np.asarray(low), np.asarray(high)
        for x, _, rows in stream.chunks():
            counts += cpu_counts.histogram(np.asarray(x, host_low.dtype), rows, host_low, host_high, resolution)
        return jnp.asarray(counts.astype(np.int32))
    counts = jnp.asarray(np.zeros((stream.width, resolution), np.int32))
    for x, _, rows in stream.chunks():
        counts = _histogram_step(counts, jnp.asarray(x, low.dtype), rows, low, high, resolution)
    return counts


def _tables(stream: _Stream, mode: str, params, bins: int, counting: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass: host int64 joint counts, float64 class sums of ``x - shift``, and the shift.

    Where the first chunk's first rows show a neuron whose mean is large against its spread (``|mean| > OFFSET_RATIO
    * std``), every neuron is shifted by its first-chunk mean before summing, so float32 sums keep the
    digits that class differences live in; otherwise the raw values are summed (one memory pass fewer).
    """
    if counting == "host":
        return _tables_host(stream, mode, params, bins)
    dtype = params[0].dtype
    shift = None
    counts = np.zeros((stream.width, bins, stream.classes), np.int64)
    tables = kinfo.init(stream.width, bins, stream.classes, dtype)
    row0, since_flush = 0, 0
    for x, y, rows in stream.chunks():
        if shift is None:
            shift = _shift(x[:min(rows, _SHIFT_ROWS)])
            device_shift = jnp.asarray(shift, dtype) if shift.any() else None
            shift = np.asarray(jnp.asarray(shift, dtype), np.float64)
        if since_flush + rows > _FLUSH_TOKENS:
            counts += np.asarray(tables.counts, np.int64)
            tables = tables._replace(counts=jnp.zeros_like(tables.counts))
            since_flush = 0
        tables = kinfo.update(tables, jnp.asarray(x, dtype), jnp.asarray(y), rows, jnp.asarray(row0, count_dtype()),
                              device_shift, params, mode=mode, bins=bins, classes=stream.classes, method=counting)
        row0, since_flush = row0 + rows, since_flush + rows
    if shift is None:
        raise JNeuronError("no tokens to analyse")
    if int(tables.bad_row) >= 0:
        neuron = stream.neurons.label(int(tables.bad_col))
        raise JNeuronError(f"non-finite value (NaN or Inf) at row {int(tables.bad_row)}, neuron {neuron}")
    counts += np.asarray(tables.counts, np.int64)
    return counts, comp.value64(tables.sums), shift


def _tables_host(stream: _Stream, mode: str, params, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_tables` by the host BLAS (:func:`jneuron.streaming.cpu_counts.chunk_tables`), chunk by chunk."""
    dtype = np.dtype(params[0].dtype)
    params = tuple(np.asarray(p) for p in params)
    counts = np.zeros((stream.width, bins, stream.classes), np.int64)
    sums = np.zeros((stream.width, stream.classes), np.float64)
    shift, row0 = None, 0
    for x, y, rows in stream.chunks():
        x = np.asarray(x, dtype)
        if shift is None:
            shift = np.asarray(_shift(x[:min(rows, _SHIFT_ROWS)]).astype(dtype), np.float64)
        chunk_counts, chunk_sums = cpu_counts.chunk_tables(
            x, np.asarray(y), rows, classes=stream.classes, mode=mode, params=params, bins=bins,
            shift=shift if shift.any() else None)
        bad = None if np.isfinite(chunk_sums).all() else cpu_counts.first_bad(x, rows)
        if bad is not None:
            raise JNeuronError(f"non-finite value (NaN or Inf) at row {row0 + bad[0]}, "
                               f"neuron {stream.neurons.label(bad[1])}")
        counts += chunk_counts
        sums += chunk_sums
        row0 += rows
    if shift is None:
        raise JNeuronError("no tokens to analyse")
    return counts, sums, shift


def _tables_sharded(stream: _Stream, mode: str, params, bins: int, counting: str, *, mesh):
    """:func:`_tables` with the tokens sharded over ``mesh`` (labels travel as one more column)."""
    dtype = params[0].dtype
    first, _, rows = next(stream.chunks())
    shift = np.asarray(jnp.asarray(_shift(first[: min(rows, _SHIFT_ROWS)]), dtype), np.float64)
    reduction = _sharded_reduction(stream.width, bins, stream.classes, jnp.dtype(dtype), mode, counting)
    total = fold_sharded(_LabelledColumns(stream), reduction, stream.chunk_tokens, mesh,
                         args=(jnp.asarray(shift, dtype), *params))
    total = jax.tree.map(np.asarray, total)
    if NEURONS in mesh.axis_names:  # every neuron shard counted the same tokens: keep one copy
        total = jax.tree.map(lambda a: a[0], total)
    if int(total.bad_row) >= 0:
        neuron = stream.neurons.label(int(total.bad_col))
        raise JNeuronError(f"non-finite value (NaN or Inf) at row {int(total.bad_row)}, neuron {neuron}")
    return np.asarray(total.counts, np.int64), comp.value64(total.sums), shift


@lru_cache(maxsize=16)
def _sharded_reduction(width: int, bins: int, classes: int, dtype, mode: str, counting: str) -> ksharded.Reduction:
    def chunk(columns, n_valid, row0, shift, *params):
        x, labels = columns[:, :width], columns[:, width].astype(jnp.int32)
        return kinfo.chunk_statistics(x, labels, n_valid, row0, shift, params, mode=mode, bins=bins,
                                      classes=classes, method=counting)

    return ksharded.Reduction(lambda: kinfo.init(width, bins, classes, dtype), chunk, kinfo.merge)


@dataclass(frozen=True)
class _LabelledColumns:
    """A labelled stream as a plain chunk source: the labels as one more (float) column, for sharding."""

    stream: _Stream
    reiterable = True
    tokens = None

    @property
    def names(self) -> tuple[str, ...]:
        return ("activations+labels",)

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.stream.width + 1,)

    @property
    def dtype(self) -> np.dtype:
        return self.stream.dtype

    def chunks(self, chunk_tokens: int) -> Iterator[np.ndarray]:
        for x, y, rows in self.stream.chunks():
            columns = np.concatenate([x[:rows], y[:rows, None].astype(x.dtype)], axis=1)
            for start in range(0, rows, chunk_tokens):
                yield columns[start : start + chunk_tokens]


def _shift(first: np.ndarray) -> np.ndarray:
    """Per-neuron first-chunk means if some varying neuron's offset dwarfs its spread, else zeros."""
    first = np.asarray(first, np.float64)
    with np.errstate(invalid="ignore"):
        mean, std = first.mean(axis=0), first.std(axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    offset = (std > 0) & (np.abs(mean) > OFFSET_RATIO * np.where(np.isfinite(std), std, np.inf))
    return mean if offset.any() else np.zeros_like(mean)
