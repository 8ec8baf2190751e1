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
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jneuron.config import HIGHEST
from jneuron.data.source import as_source
from jneuron.errors import JNeuronError
from jneuron.flax import paths
from jneuron.flax.ablation import ablate, masked_layers, sweep
from jneuron.flax.capturing import as_batch, call, capture_batches, output_shapes, sample_count, valid_rows
from jneuron.kernels import information as kinfo
from jneuron.kernels import sharded as ksharded
from jneuron.kernels.moments import count_dtype
from jneuron.precision import follow_dtype
from jneuron.results import NeuronIndex, Result, to_plain
from jneuron.streaming.constant import constant_neurons, warn_constant, with_range
from jneuron.streaming.mesh import resolve_mesh
from jneuron.streaming.passes import (
    chunk_callback,
    default_chunk_tokens,
    on_host,
    raise_on_bad_value,
    run_pass,
)


@dataclass(frozen=True)
class NeuronStats(Result):
    """Per-neuron statistics of layer outputs over all samples and positions (host float64).

    Attributes:
      layers: the layers, by path.
      count: rows (tokens) seen per layer.
      mean, std: per layer, ``(d,)`` mean and population standard deviation.
      shapes: per layer, one sample's output shape (e.g. ``(time, d)``).
      classes: the sorted label values (``None`` without labels).
      class_mean: per layer, ``(classes, d)`` mean output over the rows of each class.
      dead: per layer, the constant units (:mod:`jneuron.streaming.constant`): their std is 0.
    """

    layers: tuple[str, ...]
    count: Mapping[str, int]
    mean: Mapping[str, np.ndarray]
    std: Mapping[str, np.ndarray]
    shapes: Mapping[str, tuple[int, ...]]
    classes: np.ndarray | None = None
    class_mean: Mapping[str, np.ndarray] | None = None
    dead: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def neurons(self) -> NeuronIndex:
        """Every layer's neurons, layer-major, in one model ``"model"``."""
        return NeuronIndex.from_layers([("model", [(layer, len(self.mean[layer])) for layer in self.layers])])

    def to_dict(self) -> dict:
        """Per layer: count, shape, mean and std (and class means), with the neurons, as JSON-ready plain Python."""
        return {"layers": list(self.layers), "count": to_plain(dict(self.count)), "mean": to_plain(dict(self.mean)),
                "std": to_plain(dict(self.std)), "shapes": to_plain(dict(self.shapes)),
                "classes": to_plain(self.classes),
                "class_mean": None if self.class_mean is None else to_plain(dict(self.class_mean)),
                "dead": to_plain(dict(self.dead)),
                "neurons": self.neurons.records()}


def _row_labels(labels: np.ndarray, positions: np.ndarray, layer: str) -> np.ndarray:
    if labels.ndim == 1:
        return labels[positions[:, 0]]
    if labels.ndim == positions.shape[1]:
        return labels[tuple(positions.T)]
    raise JNeuronError(f"labels of shape {labels.shape} fit neither samples nor the positions of layer "
                       f"'{layer}' ({positions.shape[1] - 1} position axes)")


def neuron_stats(model: nnx.Module, inputs, layers: Sequence[str], *, labels=None, batch_size: int | None = None,
                 chunk_tokens: int | None = None, valid=None, devices=None, mesh=None, checkpoint=None,
                 progress: bool = False, on_chunk=None) -> NeuronStats:
    """Stream the layers' outputs once through the one pass: per-neuron mean and std (Chan's merge, in
    float64), and with ``labels`` (per sample, or per position like ``(batch, time)``) the mean of each class.
    ``valid`` (see :func:`~jneuron.flax.capture`) keeps padding out of every statistic.

    Layers whose outputs have the same positions per sample share one pass (one run of the model); each
    other shape of layer takes a run of its own.

    Args:
      model: a Flax NNX module (left unchanged).
      inputs: the model's inputs (batch first): an array, a tuple of positional arguments or a dict.
      layers: submodule paths, e.g. ``"layers/0"``.
      labels: class labels per sample or per position, or None.
      batch_size: samples per compiled forward pass (default: all at once).
      valid: boolean ``(batch, positions)`` mask of the rows that count, or a function of the batch.
      chunk_tokens, devices, mesh, checkpoint, progress, on_chunk: the one pass's keywords (see
        :func:`jneuron.streaming.passes.run_pass`): rows per statistics update, sharding of the rows,
        a checkpoint folder to resume from, a progress line, a callback with each chunk's rows.
    """
    layers = paths.check_layers(model, layers)
    classes = None
    if labels is not None:
        labels = np.asarray(labels)
        classes = np.unique(labels)
        samples = sample_count(inputs)
        if np.shape(labels)[0] != samples:
            raise JNeuronError(f"labels cover {np.shape(labels)[0]} samples, the inputs {samples}")
    mesh = resolve_mesh(devices, mesh)
    count, mean, std, class_mean, dead = {}, {}, {}, {}, {}
    shapes = output_shapes(model, inputs, layers)
    for group in _groups_by_positions(shapes, layers):
        source, held_in = _layer_source(model, inputs, group, labels, classes, batch_size, valid)
        width = sum(source.widths) - (classes is not None)
        first = len(source.first[0])  # rows of one batch: chunks as long as a batch (never padded far past it)
        rows = chunk_tokens or min(default_chunk_tokens(sum(source.widths)), first)
        with follow_dtype(np.float64) as dtype:
            reduction = with_range(_moments_reduction(width, 0 if classes is None else len(classes), jnp.dtype(dtype)),
                                   width, jnp.dtype(dtype))
            done = run_pass(source, reduction, rows, mesh=mesh, checkpoint=checkpoint,
                            on_chunk=chunk_callback(progress, on_chunk, None),
                            key={"statistic": "neuron_stats", "classes": 0 if classes is None else len(classes)})
            ranged = on_host(done.state, mesh)
        total = ranged.state
        raise_on_bad_value(int(total.bad_row), int(total.bad_col), source, done.position)
        constant = constant_neurons(ranged.low, ranged.high, np.result_type(np.float32, *held_in.values()))
        edges = np.cumsum([0] + [source.widths[i] for i in range(len(group))])
        n = int(total.count)
        if n == 0:
            raise JNeuronError(f"neuron_stats: no valid rows for layers {group}")
        for i, layer in enumerate(group):
            cut = slice(int(edges[i]), int(edges[i + 1]))
            count[layer], mean[layer] = n, np.asarray(total.mean[cut], np.float64)
            dead[layer] = np.flatnonzero(constant[cut])
            std[layer] = np.sqrt(np.asarray(total.m2[cut], np.float64) / max(n, 1))
            std[layer][dead[layer]] = 0.0  # not their rounding-level jitter
            if classes is not None:
                class_mean[layer] = total.sums[:, cut] / np.maximum(total.totals, 1)[:, None]
    warn_constant("neuron_stats", [f"{layer}/{unit}" for layer in layers for unit in dead[layer]], "get std 0", 2)
    return NeuronStats(layers, count, mean, std, shapes, classes, None if classes is None else class_mean, dead)


class _Moments(NamedTuple):
    """Running per-neuron count, mean and centred sum of squares; per-class sums and counts; first bad value."""

    count: jax.Array
    mean: jax.Array
    m2: jax.Array
    sums: jax.Array
    totals: jax.Array
    bad_row: jax.Array
    bad_col: jax.Array


@functools.lru_cache(maxsize=16)
def _moments_reduction(width: int, classes: int, dtype) -> ksharded.Reduction:
    """:class:`_Moments` as a reduction of the one pass, in ``dtype``."""

    def init():
        none = jnp.array(-1, count_dtype())
        return _Moments(jnp.zeros((), count_dtype()), jnp.zeros(width, dtype), jnp.zeros(width, dtype),
                        jnp.zeros((classes, width), dtype), jnp.zeros(classes, count_dtype()), none, none)

    def chunk(columns, n_valid, row0):
        x = columns[:, :width].astype(dtype)
        valid = jnp.arange(x.shape[0]) < n_valid
        n = n_valid.astype(dtype)
        mean = jnp.where(valid[:, None], x, 0).sum(0) / jnp.maximum(n, 1)
        m2 = jnp.where(valid[:, None], (x - mean[None, :]) ** 2, 0).sum(0)
        target = jnp.where(valid, columns[:, width].astype(jnp.int32), classes) if classes else None
        sums = jax.ops.segment_sum(jnp.where(valid[:, None], x, 0), target, classes + 1)[:classes] if classes else (
            jnp.zeros((0, width), dtype))
        totals = jax.ops.segment_sum(valid.astype(count_dtype()), target, classes + 1)[:classes] if classes else (
            jnp.zeros(0, count_dtype()))
        none = jnp.full_like(jnp.asarray(row0, count_dtype()), -1)
        row, col = jax.lax.cond(jnp.all(jnp.isfinite(m2)), lambda: (none, none),
                                lambda: kinfo.first_bad(x, n_valid, row0))
        return _Moments(n_valid.astype(count_dtype()), mean, m2, sums, totals, row, col)

    def merge(a: _Moments, b: _Moments) -> _Moments:
        na, nb = a.count.astype(dtype), b.count.astype(dtype)
        n = jnp.maximum(na + nb, 1)
        delta = b.mean - a.mean
        take_a = (a.bad_row >= 0) & ((b.bad_row < 0) | (a.bad_row <= b.bad_row))
        return _Moments(a.count + b.count, a.mean + delta * nb / n, a.m2 + b.m2 + delta**2 * na * nb / n,
                        a.sums + b.sums, a.totals + b.totals, jnp.where(take_a, a.bad_row, b.bad_row),
                        jnp.where(take_a, a.bad_col, b.bad_col))

    return ksharded.Reduction(init, chunk, merge)


def _groups_by_positions(shapes, layers) -> list[list[str]]:
    """The layers in groups sharing their positions per sample (one pass, one model run, per group)."""
    groups: dict = {}
    for layer in layers:
        groups.setdefault(tuple(shapes[layer][:-1]), []).append(layer)
    return list(groups.values())


def _layer_source(model, inputs, group, labels, classes, batch_size, valid):
    """A re-iterable source over the group's valid rows (float64), with class ids as a last column when
    labelled (batches without a valid row are left out), and the dtype each layer computes in (filled as
    the source is read)."""
    held_in = {}

    def batches():
        for acts, where in capture_batches(model, inputs, group, batch_size=batch_size, valid=valid):
            held_in.update({layer: np.asarray(acts[layer]).dtype for layer in group})
            if not len(acts[group[0]]):
                continue
            parts = tuple(np.asarray(acts[layer], np.float64) for layer in group)
            if classes is not None:
                own = np.searchsorted(classes, _row_labels(labels, where[group[0]], group[0]))
                parts += (own.astype(np.float64)[:, None],)
            yield parts

    names = tuple(group) + (("labels",) if classes is not None else ())
    return as_source(batches, names=names), held_in


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
class ControlSweep(Result):
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

    def to_dict(self) -> dict:
        """Everything, as JSON-ready plain Python."""
        return {"vs": to_plain(self.vs), "outputs": to_plain(self.outputs), "change": to_plain(self.change),
                "flipped": to_plain(self.flipped)}


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
