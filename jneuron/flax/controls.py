"""Control neurons (Bau et al., ICLR 2019): set them to ``mean + v * std`` or to a scaled class mean, at all or
chosen positions, and measure how the model's output changes; erase a subspace by projection.

>>> import numpy as np
>>> from flax import nnx
>>> from jneuron.models import MLP
>>> model = MLP(8, (4,), 3, rngs=nnx.Rngs(0))
>>> x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
>>> stats = neuron_stats(model, x, ["layers/0"], labels=np.arange(40) % 3)
>>> stats.mean["layers/0"].shape, stats.class_mean["layers/0"].shape
((4,), (3, 4))
>>> effect = control_sweep(model, x, "layers/0", [1, 2], stats, vs=[-1.0, 0.0, 1.0])
>>> effect.change.shape, effect.flipped.shape
((3,), (3,))
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jneuron.errors import JNeuronError
from jneuron.flax import paths
from jneuron.flax.ablation import ablate, masked_layers, sweep
from jneuron.flax.capturing import as_batch, call, capture_batches, output_shapes, sample_count, valid_rows

HIGHEST = jax.lax.Precision.HIGHEST


@dataclass(frozen=True)
class NeuronStats:
    """Per-neuron statistics of layer outputs over all samples and positions (host float64).

    Attributes:
      layers: the layers, by path.
      count: rows (tokens) seen per layer.
      mean, std: per layer, ``(d,)`` mean and population standard deviation.
      shapes: per layer, one sample's output shape (e.g. ``(time, d)``).
      classes: the sorted label values (``None`` without labels).
      class_mean: per layer, ``(classes, d)`` mean output over the rows of each class.
    """

    layers: tuple[str, ...]
    count: Mapping[str, int]
    mean: Mapping[str, np.ndarray]
    std: Mapping[str, np.ndarray]
    shapes: Mapping[str, tuple[int, ...]]
    classes: np.ndarray | None = None
    class_mean: Mapping[str, np.ndarray] | None = None


def _row_labels(labels: np.ndarray, positions: np.ndarray, layer: str) -> np.ndarray:
    if labels.ndim == 1:
        return labels[positions[:, 0]]
    if labels.ndim == positions.shape[1]:
        return labels[tuple(positions.T)]
    raise JNeuronError(f"labels of shape {labels.shape} fit neither samples nor the positions of layer "
                       f"'{layer}' ({positions.shape[1] - 1} position axes)")


def neuron_stats(model: nnx.Module, inputs, layers: Sequence[str], *, labels=None,
                 batch_size: int | None = None, valid=None) -> NeuronStats:
    """Stream the layers' outputs once: per-neuron mean and std (Chan's merge in float64), and with
    ``labels`` (per sample, or per position like ``(batch, time)``) the mean of each class. ``valid``
    (see :func:`~jneuron.flax.capture`) keeps padding out of every statistic."""
    layers = paths.check_layers(model, layers)
    count = dict.fromkeys(layers, 0)
    mean = {layer: 0.0 for layer in layers}
    m2 = {layer: 0.0 for layer in layers}
    sums, totals = {}, {}
    if labels is not None:
        labels = np.asarray(labels)
        classes = np.unique(labels)
        if np.shape(labels)[0] != sample_count(inputs):
            raise JNeuronError(f"labels cover {np.shape(labels)[0]} samples, the inputs {sample_count(inputs)}")
    shapes = output_shapes(model, inputs, layers)
    for acts, where in capture_batches(model, inputs, layers, batch_size=batch_size, valid=valid):
        for layer in layers:
            rows = acts[layer].astype(np.float64)
            if rows.shape[0] == 0:
                continue
            n, batch_mean = rows.shape[0], rows.mean(axis=0)
            batch_m2 = ((rows - batch_mean) ** 2).sum(axis=0)
            total = count[layer] + n
            delta = batch_mean - mean[layer]
            m2[layer] = m2[layer] + batch_m2 + delta**2 * count[layer] * n / total
            mean[layer] = mean[layer] + delta * n / total
            count[layer] = total
            if labels is not None:
                own = np.searchsorted(classes, _row_labels(labels, where[layer], layer))
                sums[layer] = sums.get(layer, 0.0) + np.eye(len(classes))[own].T @ rows
                totals[layer] = totals.get(layer, 0) + np.bincount(own, minlength=len(classes))
    empty = [layer for layer in layers if count[layer] == 0]
    if empty:
        raise JNeuronError(f"neuron_stats: no valid rows for layers {empty}")
    std = {layer: np.sqrt(m2[layer] / count[layer]) for layer in layers}
    class_mean = None
    if labels is not None:
        class_mean = {layer: sums[layer] / np.maximum(totals[layer], 1)[:, None] for layer in layers}
    return NeuronStats(layers, count, mean, std, shapes, None if labels is None else classes, class_mean)


def _neuron_list(neurons, width: int, layer: str) -> np.ndarray:
    chosen = np.atleast_1d(np.asarray(neurons, dtype=np.int64))
    if chosen.size == 0 or chosen.min() < 0 or chosen.max() >= width:
        raise JNeuronError(f"layer '{layer}': neurons must be unit indices in 0..{width - 1}, got {chosen.tolist()}")
    return chosen


def control_values(stats: NeuronStats, layer: str, *, v=0.0, target=None, alpha: float = 1.0) -> np.ndarray:
    """The ``(d,)`` values neurons of ``layer`` are set to: ``mean + v * std``, or ``alpha`` times the mean
    of class ``target`` (a label value) when ``target`` is given."""
    if layer not in stats.mean:
        raise JNeuronError(f"no statistics for layer '{layer}'; they cover {list(stats.layers)}")
    if target is None:
        return stats.mean[layer] + np.asarray(v, np.float64) * stats.std[layer]
    if stats.class_mean is None:
        raise JNeuronError("class-conditional control needs neuron_stats(..., labels=...)")
    where = np.flatnonzero(stats.classes == target)
    if where.size == 0:
        raise JNeuronError(f"class {target!r} is not among the labels {stats.classes.tolist()}")
    return alpha * stats.class_mean[layer][where[0]]


def _control_mask(stats: NeuronStats, layer: str, neurons, positions) -> np.ndarray:
    shape = stats.shapes[layer]
    chosen = _neuron_list(neurons, shape[-1], layer)
    if positions is None:
        mask = np.ones(shape[-1], np.float32)
        mask[chosen] = 0
        return mask
    if len(shape) < 2:
        raise JNeuronError(f"layer '{layer}' has no position axis (output per sample {shape}); drop positions=")
    where = np.atleast_1d(np.asarray(positions, dtype=np.int64))
    if where.min() < 0:
        raise JNeuronError(f"layer '{layer}': positions must be non-negative, got {where.tolist()}")
    # as long as the positions need: the mask is fitted to each input's length when it runs (positions
    # past the end of a shorter input are simply absent), never tied to the reference data's length
    mask = np.ones((int(where.max()) + 1, *shape[1:]), np.float32)
    mask[np.ix_(where, *(np.arange(s) for s in shape[1:-1]), chosen)] = 0
    return mask


def control(model: nnx.Module, neurons: Mapping[str, Sequence[int]], stats: NeuronStats, *, v=0.0,
            target=None, alpha: float = 1.0, positions: Sequence[int] | None = None) -> nnx.Module:
    """A copy of ``model`` with chosen neurons set to ``mean + v * std`` (or ``alpha`` x class mean).

    Args:
      model: a Flax NNX module (unchanged).
      neurons: layer path to the unit indices to control.
      stats: from :func:`neuron_stats` on reference data.
      v: standard deviations from the mean (scalar or per neuron of the layer).
      target, alpha: set the neurons to ``alpha`` times the mean of class ``target`` instead.
      positions: indices along the first position axis (e.g. time steps) to control; default all.
    """
    masks = {layer: _control_mask(stats, layer, units, positions) for layer, units in neurons.items()}
    values = {layer: control_values(stats, layer, v=v, target=target, alpha=alpha).astype(np.float32)
              for layer in neurons}
    return _fitted(ablate(model, masks, "value", values=values))


def _fitted(variant: nnx.Module) -> nnx.Module:
    """Control masks name positions, not a length: fit them to each input's length when they run."""
    for wrapper in masked_layers(variant).values():
        wrapper.fit = True
    return variant


@dataclass(frozen=True)
class ControlSweep:
    """Outputs of a model whose chosen neurons were set to ``mean + v * std`` for each ``v``.

    Attributes:
      vs: the values of ``v``, ``(V,)``.
      outputs: the model's outputs per ``v``, ``(V, *output shape)``.
      change: mean over samples of the L2 norm of the output change along the last axis, ``(V,)``.
      flipped: fraction of samples (and positions) whose arg-max output changed, ``(V,)``.
    """

    vs: np.ndarray
    outputs: np.ndarray
    change: np.ndarray
    flipped: np.ndarray


def _outputs(model, inputs):
    return call(model, inputs)


def control_sweep(model: nnx.Module, inputs, layer: str, neurons: Sequence[int], stats: NeuronStats,
                  vs: Sequence[float], *, positions: Sequence[int] | None = None,
                  batch_size: int | None = None, valid=None) -> ControlSweep:
    """Set ``neurons`` of ``layer`` to ``mean + v * std`` for every ``v`` in ``vs`` (one compiled call) and
    measure the change of the model's output against the intact model; with ``valid`` (a boolean
    ``(samples, positions)`` array or a function of the inputs, as for :func:`~jneuron.flax.capture`),
    ``change`` and ``flipped`` average over valid positions only (outputs ``(batch, positions, classes)``)."""
    vs = np.asarray(vs, np.float64).reshape(-1)
    mask = _control_mask(stats, layer, neurons, positions)
    values = np.stack([control_values(stats, layer, v=v) for v in vs]).astype(np.float32)
    variant = _fitted(ablate(model, {layer: mask}, "value", values={layer: values[0]}))
    inputs = jax.tree.map(jnp.asarray, as_batch(inputs))
    outputs = np.asarray(sweep(variant, _outputs, inputs, values={layer: values}, batch_size=batch_size))
    intact = np.asarray(_intact(nnx.graphdef(model), nnx.state(model), inputs))
    count = sample_count(inputs)
    mask = valid_rows(valid, inputs, count, 0, count)
    keep = np.ones(intact.shape[:-1], bool)
    if mask is not None:
        if mask.shape != intact.shape[: mask.ndim] or mask.ndim >= intact.ndim:
            raise JNeuronError(f"control_sweep: valid of shape {mask.shape} does not cover the leading axes of "
                               f"the model's output {intact.shape}")
        keep = np.broadcast_to(mask.reshape(mask.shape + (1,) * (intact.ndim - 1 - mask.ndim)), keep.shape)
    change = np.sqrt(((outputs - intact[None]) ** 2).sum(axis=-1))[:, keep].mean(axis=1)
    flipped = (outputs.argmax(-1) != intact.argmax(-1)[None])[:, keep].mean(axis=1)
    return ControlSweep(vs, outputs, change, flipped)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _intact(graphdef, state, inputs):
    return call(nnx.merge(graphdef, state), inputs)


class Erased(paths.Wrapper):
    """Wraps a submodule: removes the output's component in a subspace, ``y - ((y - c) Q) Q^T``."""

    def __init__(self, inner: nnx.Module, layer: str, basis: np.ndarray, center: np.ndarray):
        self.inner = inner
        self.layer = layer
        self.basis = nnx.Variable(jnp.asarray(basis))
        self.center = nnx.Variable(jnp.asarray(center))

    def __call__(self, *args, **kwargs):
        output = self.inner(*args, **kwargs)
        basis, center = self.basis[...].astype(output.dtype), self.center[...].astype(output.dtype)
        if output.shape[-1] != basis.shape[0]:
            raise JNeuronError(f"layer '{self.layer}': directions have {basis.shape[0]} neurons; "
                               f"the layer has {output.shape[-1]}")
        offset = output - jnp.broadcast_to(center, output.shape)
        coords = jnp.einsum("...d,dk->...k", offset, basis, precision=HIGHEST)
        return output - jnp.einsum("...k,dk->...d", coords, basis, precision=HIGHEST)


def orthonormal_basis(directions, layer: str = "layer") -> np.ndarray:
    """``(d, r)`` orthonormal basis of the span of ``(k, d)`` direction rows (rank-deficient rows dropped)."""
    directions = np.atleast_2d(np.asarray(directions, np.float64))
    if directions.ndim != 2 or not np.isfinite(directions).all():
        raise JNeuronError(f"layer '{layer}': directions must be a finite (k, d) array, got shape {directions.shape}")
    u, s, _ = np.linalg.svd(directions.T, full_matrices=False)
    keep = s > max(directions.shape) * np.finfo(np.float64).eps * (s[0] if s.size else 0.0)
    if not keep.any():
        raise JNeuronError(f"layer '{layer}': the directions are all zero; nothing to erase")
    return u[:, keep]


def erase(model: nnx.Module, directions: Mapping[str, object], *,
          center: Mapping[str, object] | None = None) -> nnx.Module:
    """A copy of ``model`` with the span of ``directions[layer]`` (rows in neuron space, e.g. SVCCA
    directions) projected out of each layer's output, around ``center[layer]`` (default 0; pass the
    layer means to keep the mean's component, the subspace analogue of mean ablation)."""
    layers = paths.check_layers(model, list(directions))
    variant = nnx.clone(model)
    for layer in layers:
        basis = orthonormal_basis(directions[layer], layer)
        offset = np.zeros(basis.shape[0]) if center is None or layer not in center else np.asarray(center[layer])
        if offset.shape != (basis.shape[0],):
            raise JNeuronError(f"layer '{layer}': center must have shape ({basis.shape[0]},), got {offset.shape}")
        paths.replace(variant, layer, Erased(paths.find(variant, layer), layer, basis.astype(np.float32),
                                             offset.astype(np.float32)))
    return variant
