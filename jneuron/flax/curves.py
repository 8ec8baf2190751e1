"""Ablation curves: a model's metric as the first k neurons of a ranking are removed, every k in one call.

Neurons are named by flat index over the given layers concatenated layer-major (``column = offset of
the layer + unit``, as everywhere in jneuron), so any :class:`~jneuron.results.Ranking` over those
layers (MaxCorr, probe weights, information measures) plugs in directly. Removal is zero or mean
(bias-balanced) ablation, over the whole network or within one layer at a time; all masks (and the
intact baseline) run as one ``jax.vmap`` over one compiled program.

>>> import numpy as np
>>> from flax import nnx
>>> from jneuron.models import MLP
>>> model = MLP(8, (4, 4), 3, rngs=nnx.Rngs(0))
>>> x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
>>> y = np.arange(50) % 3
>>> curve = ablation_curve(model, x, y, order=np.arange(8), layers=["layers/0", "layers/1"], ks=[0, 4, 8])
>>> curve.values.shape, bool(curve.values[0] == curve.baseline)
((3,), True)
>>> ablation_curve(model, x, y, np.arange(8)[::-1], ["layers/0", "layers/1"], [0, 2, 4],
...                scope="layer", mode="mean").values.shape
(2, 3)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jneuron.errors import JNeuronError
from jneuron.flax import paths
from jneuron.flax.ablation import ablate, layer_means, sweep
from jneuron.flax.capturing import as_batch, call, output_shapes, sample_count, valid_rows
from jneuron.results import NeuronIndex, Ranking, Result, to_plain

METRICS = ("accuracy", "loss")
SCOPES = ("network", "layer")


def _accuracy(outputs, labels):
    return jnp.mean((jnp.argmax(outputs, axis=-1) == labels).astype(jnp.float32))


def _loss(outputs, labels):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs, labels))


def _valid_accuracy(outputs, labels):
    """Accuracy over valid positions: ``labels`` is ``(labels, valid weights)``."""
    labels, weights = labels
    hits = (jnp.argmax(outputs, axis=-1) == labels).astype(jnp.float32)
    return jnp.sum(hits * weights) / jnp.sum(weights)


def _valid_loss(outputs, labels):
    """Cross-entropy over valid positions: ``labels`` is ``(labels, valid weights)``."""
    labels, weights = labels
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(outputs, labels) * weights) / jnp.sum(weights)


def metric_function(metric: str | Callable) -> Callable:
    """``metric(outputs, labels) -> scalar`` for a name in ``METRICS`` or a given jit-able callable."""
    if callable(metric):
        return metric
    if metric not in METRICS:
        raise JNeuronError(f"metric must be one of {METRICS} or a callable (outputs, labels) -> scalar, got '{metric}'")
    return {"accuracy": _accuracy, "loss": _loss}[metric]


@dataclass(frozen=True)
class AblationCurve(Result):
    """A model's metric after removing the first ``k`` neurons of an order, for each ``k`` in ``ks``.

    Attributes:
      ks: the numbers of removed neurons, shape ``(K,)``.
      values: the metric, shape ``(K,)`` for ``scope="network"``; ``(layers, K)`` for ``scope="layer"``
        (row ``l``: only layer ``l``'s neurons removed, in the order's sequence restricted to that layer).
      baseline: the metric of the intact model.
      metric, mode, scope: how it was measured (``mode`` is ``"zero"`` or ``"mean"``).
      layers, widths: the layers, in the order of the flat neuron indices, and their widths.
      order: the flat neuron indices in removal order.

    The figure is :func:`jneuron.report.figures.ablation_curve_figure`.
    """

    ks: np.ndarray
    values: np.ndarray
    baseline: float
    metric: str
    mode: str
    scope: str
    layers: tuple[str, ...]
    widths: tuple[int, ...]
    order: np.ndarray

    @property
    def neurons(self) -> NeuronIndex:
        """The identity of every neuron the flat indices of ``order`` point into (one model, ``"model"``)."""
        return NeuronIndex.from_layers([("model", list(zip(self.layers, self.widths)))])

    def to_dict(self) -> dict:
        """Everything, as JSON-ready plain Python."""
        return {"ks": to_plain(self.ks), "values": to_plain(self.values), "baseline": to_plain(self.baseline),
                "metric": self.metric, "mode": self.mode, "scope": self.scope, "layers": list(self.layers),
                "widths": list(self.widths), "order": to_plain(self.order)}


def flat_order(order, layers: Sequence[str], widths: Sequence[int]) -> np.ndarray:
    """Removal order as flat layer-major indices, from a Ranking, flat indices or ``(layer, unit)`` pairs."""
    total = int(sum(widths))
    if isinstance(order, Ranking):
        order = order.order
    items = list(order) if not isinstance(order, np.ndarray) else order
    if len(items) and isinstance(items[0], (tuple, list)):
        offsets = dict(zip(layers, np.cumsum((0, *widths[:-1]))))
        flat = []
        for layer, unit in items:
            key = layers[layer] if isinstance(layer, (int, np.integer)) else layer
            if key not in offsets:
                raise JNeuronError(f"order names layer {layer!r}, not among the layers {list(layers)}")
            width = widths[layers.index(key)]
            if not 0 <= int(unit) < width:
                raise JNeuronError(f"order names unit {unit} of layer '{key}', which has {width} neurons")
            flat.append(offsets[key] + int(unit))
        items = flat
    flat = np.asarray(items, dtype=np.int64).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= total):
        bad = int(flat[(flat < 0) | (flat >= total)][0])
        raise JNeuronError(f"order has neuron index {bad}; the layers {list(layers)} have {total} neurons "
                           f"(widths {list(widths)}), so indices run 0..{total - 1}")
    unique, counts = np.unique(flat, return_counts=True)
    if (counts > 1).any():
        raise JNeuronError(f"order lists neuron {int(unique[counts > 1][0])} more than once")
    return flat


def removal_masks(order: np.ndarray, ks: np.ndarray, total: int) -> np.ndarray:
    """``(K, total)`` float32 masks: row ``i`` is 0 at the first ``ks[i]`` entries of ``order``, 1 elsewhere."""
    rank = np.full(total, np.iinfo(np.int64).max)
    rank[order] = np.arange(len(order))
    return (rank[None, :] >= ks[:, None]).astype(np.float32)


def _check_ks(ks, limit: int, scope: str) -> np.ndarray:
    ks = np.asarray(ks)
    if ks.ndim != 1 or ks.size == 0 or ks.dtype.kind not in "iu":
        raise JNeuronError(f"ks must be a non-empty 1-D sequence of integers, got {ks!r}")
    if ks.min() < 0 or ks.max() > limit:
        where = "the order" if scope == "network" else "the largest layer's share of the order"
        raise JNeuronError(f"ks must lie in 0..{limit} (the neurons in {where}), got {ks.min()}..{ks.max()}")
    return ks.astype(np.int64)


def curve_masks(order: np.ndarray, ks: np.ndarray, widths: Sequence[int], scope: str) -> np.ndarray:
    """All masks of one curve, ``(rows, total)``: K rows (network) or layers x K rows (layer scope)."""
    total = int(sum(widths))
    if scope == "network":
        return removal_masks(order, ks, total)
    starts = np.cumsum((0, *widths))
    rows = []
    for start, stop in zip(starts[:-1], starts[1:]):
        own = order[(order >= start) & (order < stop)]
        rows.append(removal_masks(own, np.minimum(ks, len(own)), total))
    return np.concatenate(rows)


def ablation_curve(model, inputs, labels, order, layers: Sequence[str], ks: Sequence[int], *,
                   mode: str = "zero", metric: str | Callable = "accuracy", scope: str = "network",
                   means: Mapping[str, np.ndarray] | None = None, reference=None,
                   batch_size: int | str | None = "auto", valid=None) -> AblationCurve:
    """The model's metric as the first ``k`` neurons of ``order`` are removed, for every ``k`` in ``ks``.

    Args:
      model: a Flax NNX module, or a Linen model bound by :func:`jneuron.flax.linen.Linen`.
      inputs: the model's input array (batch first), a tuple of arrays (positional arguments) or a dict
        (keyword arguments).
      labels: the labels the metric compares outputs with (e.g. ``(batch,)`` integer classes).
      order: removal order over the layers' neurons, concatenated layer-major: a
        :class:`~jneuron.results.Ranking` (its ``.order``; reverse it, ``r.order[::-1]``, to remove the
        lowest-ranked first), flat indices, or ``(layer, unit)`` pairs. It may list only some neurons.
      layers: the layer paths the flat indices run over, in column order.
      ks: numbers of neurons to remove (0 gives the intact model).
      mode: ``"zero"`` or ``"mean"`` (each removed neuron set to its mean output, i.e. bias balancing).
      metric: ``"accuracy"``, ``"loss"`` (cross-entropy) or a jit-able ``f(outputs, labels) -> scalar``,
        or ``f(outputs, labels, batch)`` to see the inputs too (e.g. a token loss over the attention mask);
        pass the same function object across calls to reuse the compiled program.
      scope: ``"network"`` (remove the first k of the whole order) or ``"layer"`` (one curve per layer,
        removing that layer's first k neurons in the order; k is capped at the layer's count).
      means: precomputed per-layer means for ``mode="mean"`` (default: computed on ``reference``).
      reference: inputs for the means (default: ``inputs``).
      valid: which positions count (NNX models; a boolean ``(samples, positions)`` array or a function of
        the inputs, see :func:`~jneuron.flax.capture`): in the means, and in the built-in metrics, which
        then average over valid positions only (labels ``(samples, positions)``). A metric function given
        by the caller sees the batch instead (``f(outputs, labels, batch)``).
      batch_size: masks per ``lax.map`` step (bounds memory); ``None``: all in one ``jax.vmap``;
        ``"auto"`` (default): one vmap on GPU/TPU, small steps on CPU (see :func:`jneuron.flax.sweep`).
    """
    if scope not in SCOPES:
        raise JNeuronError(f"scope must be one of {SCOPES}, got '{scope}'")
    if mode not in ("zero", "mean"):
        raise JNeuronError(f"ablation curves use mode 'zero' or 'mean', got '{mode}'")
    engine = ablation_engine(model)
    if valid is not None and not isinstance(engine, _NNXEngine):
        raise JNeuronError("ablation_curve: valid= is implemented for Flax NNX models, not Linen ones")
    layers = engine.check_layers(layers, inputs)
    widths = engine.widths(inputs, layers)
    flat = flat_order(order, layers, widths)
    if scope == "network":
        limit = len(flat)
    else:
        starts = np.cumsum((0, *widths))
        limit = max(int(((flat >= a) & (flat < b)).sum()) for a, b in zip(starts[:-1], starts[1:]))
    ks = _check_ks(ks, limit, scope)
    masks = np.concatenate([curve_masks(flat, ks, widths, scope), np.ones((1, sum(widths)), np.float32)])
    if mode == "mean" and means is None:
        reference = inputs if reference is None else reference
        means = engine.means(reference, layers) if valid is None else engine.means(reference, layers, valid=valid)
    values = None
    if mode == "mean":
        missing = [layer for layer in layers if layer not in means]
        if missing:
            raise JNeuronError(f"means are missing for layers {missing}")
        values = {layer: np.asarray(means[layer]) for layer in layers}
    splits = np.split(masks, np.cumsum(widths)[:-1], axis=1)
    per_layer = dict(zip(layers, splits))
    scorer = metric_function(metric)
    if valid is not None and isinstance(metric, str):
        count = sample_count(inputs)
        weights = valid_rows(valid, as_batch(inputs), count, 0, count)
        if weights.shape != np.shape(labels):
            raise JNeuronError(f"ablation_curve: valid {weights.shape} must match the labels {np.shape(labels)} "
                               "for the built-in metrics")
        scorer = {"accuracy": _valid_accuracy, "loss": _valid_loss}[metric]
        labels = (jnp.asarray(labels), jnp.asarray(weights, jnp.float32))
    results = np.asarray(engine.evaluate(per_layer, values, scorer, inputs, labels, batch_size), dtype=np.float64)
    curve = results[:-1] if scope == "network" else results[:-1].reshape(len(layers), len(ks))
    name = metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")
    return AblationCurve(ks, curve, float(results[-1]), name, mode, scope, layers, tuple(widths), flat)


def ablation_engine(model):
    """The adapter that runs masked variants of ``model`` (NNX module or bound Linen model): it checks
    layers, reads their widths and means, and evaluates a metric under stacks of masks (see
    :func:`ablation_curve` and :func:`jneuron.cumulative_ablation`)."""
    if isinstance(model, nnx.Module):
        return _NNXEngine(model)
    adapter = getattr(model, "curve_engine", None)
    if adapter is None:
        raise JNeuronError(f"ablation needs a Flax NNX module or jneuron.flax.linen.Linen(module, variables), "
                           f"got {type(model).__name__}")
    return adapter()


def takes_batch(metric: Callable) -> bool:
    """Whether ``metric`` takes a third positional argument (the batch of inputs)."""
    try:
        parameters = inspect.signature(metric).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


@functools.lru_cache(maxsize=64)
def _scored(metric: Callable) -> Callable:
    """``(model, inputs, labels) -> metric(outputs, labels[, inputs])``, one object per metric (compiles once)."""
    with_batch = takes_batch(metric)

    def score(model, inputs, labels):
        outputs = call(model, inputs)
        return metric(outputs, labels, inputs) if with_batch else metric(outputs, labels)

    return score


@dataclass
class _NNXEngine:
    model: object

    def check_layers(self, layers, inputs):
        return paths.check_layers(self.model, layers)

    def widths(self, inputs, layers):
        return tuple(shape[-1] for shape in output_shapes(self.model, inputs, layers).values())

    def means(self, inputs, layers, valid=None):
        return layer_means(self.model, inputs, layers, valid=valid)

    def evaluate(self, masks, values, metric, inputs, labels, batch_size):
        ones = {layer: np.ones(m.shape[1], np.float32) for layer, m in masks.items()}
        if values is None:
            variant = ablate(self.model, ones, "zero")
        else:
            variant = ablate(self.model, ones, "value", values=values)
        inputs = jax.tree.map(jnp.asarray, as_batch(inputs))
        labels = jax.tree.map(jnp.asarray, labels)
        return sweep(variant, _scored(metric), inputs, labels, masks=masks, batch_size=batch_size)
