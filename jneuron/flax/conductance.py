"""Neuron conductance (Dhamdhere et al., ICLR 2019) of every neuron of a named layer of an NNX model.

The conductance of neuron ``j`` of layer output ``y`` for the output ``F`` along the straight path
``x(a) = x' + a (x - x')`` from the baseline ``x'`` is ``integral_0^1 dF/dy_j (dy_j/da) da``. The model is split
at the layer: a stand-in module records the layer's output ``y`` and adds a perturbation to it, so one
backward pass gives ``dF/dy`` at every path point (all points of all inputs in one compiled, vmapped call).

The same pass gives ``dF/dx`` at the path points, so the result splits the completeness gap
``sum_j c_j - (F(x) - F(x'))`` in two: the quadrature error of the path integral (shrinks with ``steps``) and
the **bypass**, the part of ``F``'s change that flows around the layer (structural: a layer inside a
residual block never carries all of it, and more steps do not change that).

Token models interpolate in embedding space: ``embed="embeddings"`` runs the path at that submodule's
output (baseline: zeros, or given embeddings), the ids and other inputs (masks) passing through unchanged.

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> from jneuron.models import MLP
>>> model = MLP(4, (3,), 2, rngs=nnx.Rngs(0))
>>> c = conductance(model, jnp.ones((5, 4)), "layers/0", target=1, steps=64)
>>> c.values.shape, bool(abs(c.gap).max() < 1e-3)
((5, 3), True)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jneuron.config import HIGHEST
from jneuron.errors import JNeuronError
from jneuron.flax import paths
from jneuron.flax.capturing import as_batch, run_with_cache, sample_count, valid_rows
from jneuron.flax.paths import find, path_text, replace
from jneuron.results import NeuronIndex, Ranking, Result, to_plain

Target = int | Callable[[jax.Array], jax.Array] | None
METHODS = ("trapezoid", "gausslegendre")


class _Perturbation(nnx.Variable):
    """What the stand-in adds to the layer's output (zero: only its gradient is used)."""


class _Recorded(nnx.Variable):
    """The layer's output, recorded by the stand-in."""


class _Point(nnx.Variable):
    """The path point an embedding stand-in returns in place of its output."""


class _Start(paths.Wrapper):
    """Stands in for the embedding module: returns the path point (the inner module is not run)."""

    def __init__(self, inner: nnx.Module):
        self.inner = inner
        self.point = _Point(jnp.zeros(()))

    def __call__(self, *args, **kwargs):
        return self.point[...]


class _Tap(paths.Wrapper):
    """Stands in for a layer: records its output ``y`` and returns ``y + perturbation``."""

    def __init__(self, inner: nnx.Module):
        self.inner = inner
        self.perturbation = _Perturbation(jnp.zeros(()))
        self.recorded = _Recorded(jnp.zeros(()))

    def __call__(self, *args, **kwargs):
        y = self.inner(*args, **kwargs)
        self.recorded.set_value(y)
        return y + self.perturbation[...].astype(y.dtype)


@dataclass(frozen=True)
class Conductance(Result):
    """Total conductance of every neuron of one layer, per input.

    Attributes:
      layer: the layer's path.
      method: the quadrature (``"trapezoid"`` or ``"gausslegendre"``).
      steps: path intervals (trapezoid) or nodes (Gauss-Legendre).
      values: ``(inputs, neurons)`` conductance (the layer output flattened per input).
      delta: ``(inputs,)`` ``F(x) - F(baseline)``.
      layer_shape: the layer's output shape per input.
      per_feature: ``(inputs, neurons, features)`` conductance through each input feature, or ``None``.
      path_total: ``(inputs,)`` the path integral of ``dF/dx . (x - x')`` on the same nodes (integrated
        gradients at the path's start): what flows from the start of the path, through the layer or not.
      valid: ``(inputs, positions)`` which positions of the layer count in :meth:`totals` and
        :meth:`ranking` (``None``: all).
    """

    layer: str
    method: str
    steps: int
    values: np.ndarray
    delta: np.ndarray
    layer_shape: tuple[int, ...]
    per_feature: np.ndarray | None = None
    path_total: np.ndarray | None = None
    valid: np.ndarray | None = None

    @property
    def neurons(self) -> NeuronIndex:
        """The identity of the layer's neurons (the columns of ``values``), in one model ``"model"``."""
        return self._neurons("model")

    def _neurons(self, model: str) -> NeuronIndex:
        return NeuronIndex.from_layers([(model, [(self.layer, self.values.shape[1])])])

    @property
    def gap(self) -> np.ndarray:
        """Completeness gap per input: sum of conductances minus ``F(x) - F(baseline)`` (the sum of
        :attr:`quadrature_gap` and :attr:`bypass`)."""
        return self.values.sum(axis=1) - self.delta

    @property
    def quadrature_gap(self) -> np.ndarray:
        """``path_total - (F(x) - F(baseline))``: the quadrature error of the path integral (shrinks with steps)."""
        return self.path_total - self.delta

    @property
    def bypass(self) -> np.ndarray:
        """``path_total - sum of conductances``: the change of ``F`` that flows around the layer (structural,
        e.g. the skip connection of a residual block; ~0, up to quadrature, when every path runs through it)."""
        return self.path_total - self.values.sum(axis=1)

    def totals(self) -> np.ndarray:
        """``(inputs, d)``: each neuron's conductance summed over the layer's valid positions (all
        positions without ``valid``)."""
        d = self.layer_shape[-1]
        values = self.values.reshape(self.values.shape[0], -1, d)
        if self.valid is None:
            return values.sum(axis=1)
        keep = np.broadcast_to(self.valid.reshape(self.valid.shape + (1,) * (len(self.layer_shape) - 1
                                                                          - (self.valid.ndim - 1))),
                               (self.values.shape[0], *self.layer_shape[:-1])).reshape(self.values.shape[0], -1)
        return np.einsum("npd,np->nd", values, keep.astype(values.dtype))

    def ranking(self, model: str = "model") -> Ranking:
        """Neurons ranked by mean absolute conductance over the inputs (details: mean signed conductance);
        a layer with positions is ranked per neuron by its :meth:`totals` over valid positions.

        No neuron is set aside as constant (``dead`` is empty): conductance is measured against the
        baseline, so a neuron constant over the inputs still carries its difference from the baseline (the
        completeness sum needs it); one with no flow scores 0 and ranks last by its score."""
        values = self.values if len(self.layer_shape) == 1 else self.totals()
        width = values.shape[1]
        scores = np.abs(values).mean(axis=0)
        return Ranking("conductance", scores, NeuronIndex.from_layers([(model, [(self.layer, width)])]),
                       details={"mean_conductance": values.mean(axis=0)})

    def to_dict(self) -> dict:
        """Everything, the completeness gap and the neurons, as JSON-ready plain Python."""
        return {"layer": self.layer, "method": self.method, "steps": self.steps, "values": to_plain(self.values),
                "delta": to_plain(self.delta), "gap": to_plain(self.gap), "layer_shape": list(self.layer_shape),
                "per_feature": to_plain(self.per_feature), "neurons": self.neurons.records()}


def _nodes(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Path times (endpoint-inclusive for the trapezoid) and quadrature weights on [0, 1]."""
    if method == "trapezoid":
        alphas = np.linspace(0.0, 1.0, steps + 1)
        weights = np.full(steps + 1, 1.0 / steps)
        weights[[0, -1]] /= 2
        return alphas, weights
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (nodes + 1) / 2, weights / 2


def _select(target: Target, out: jax.Array) -> jax.Array:
    """The scalar output ``F`` per batch row."""
    if callable(target):
        f = target(out)
    elif target is None:
        f = out.reshape(out.shape[0], -1)
        if f.shape[1] != 1:
            raise JNeuronError(f"the model's output has {f.shape[1]} values per input; pass target=<index>")
        f = f[:, 0]
    else:
        flat = out.reshape(out.shape[0], -1)
        if not 0 <= target < flat.shape[1]:
            raise JNeuronError(f"target {target} is out of range for {flat.shape[1]} outputs per input")
        f = flat[:, target]
    if f.shape != out.shape[:1]:
        raise JNeuronError(f"target must give one value per input, got shape {f.shape}")
    return f


def _forward(graphdef, target: Target, states, points: jax.Array, shift: jax.Array, rest, embedded: bool):
    """``F`` and the layer output ``y`` at a batch of points, with ``shift`` added to ``y``. The points are
    the model's first input (``rest``: its other positional inputs) or, ``embedded``, the embedding
    module's output (``rest``: all of the model's inputs, a tuple or dict)."""
    perturbation, recorded, start, others = states
    module = nnx.merge(graphdef, jax.tree.map(lambda _: shift, perturbation), recorded,
                       jax.tree.map(lambda _: points, start), others, copy=True)
    if embedded:
        out = module(**rest) if isinstance(rest, dict) else module(*rest)
    else:
        out = module(points, *rest)
    return _select(target, out), jax.tree.leaves(nnx.state(module, _Recorded))[0]


@functools.lru_cache(maxsize=32)
def _program(graphdef, target: Target, method: str, steps: int, per_feature: bool, batch_size: int | None,
             embedded: bool):
    """The compiled computation for one model structure and setting (weights are arguments, not constants)."""
    alphas, weights = _nodes(method, steps)

    def one_input(states, xi, bi, rest):
        dtype = xi.dtype
        zero = jnp.zeros((), dtype)
        a, w = jnp.asarray(alphas, dtype), jnp.asarray(weights, dtype)
        points = bi[None] + a.reshape(-1, *([1] * xi.ndim)) * (xi - bi)[None]
        along = jax.tree.map(lambda r: jnp.broadcast_to(r[None], (len(alphas), *r.shape)), rest)
        forward = lambda p, shift, r=along: _forward(graphdef, target, states, p, shift, r, embedded)
        shape = jax.eval_shape(lambda p: forward(p, zero)[1], points).shape

        def total(shift, p):
            f, y = forward(p, shift)
            return f.sum(), y

        (grads, point_grads), y = jax.grad(total, argnums=(0, 1), has_aux=True)(jnp.zeros(shape, dtype), points)
        grads, y = grads.reshape(len(alphas), -1), y.reshape(len(alphas), -1)
        ends_rest = jax.tree.map(lambda r: jnp.broadcast_to(r[None], (2, *r.shape)), rest)
        ends = forward(jnp.stack([bi, xi]), zero, ends_rest)[0]
        if method == "trapezoid":
            values = jnp.sum((grads[1:] + grads[:-1]) / 2 * (y[1:] - y[:-1]), axis=0)
        else:
            tangent = jnp.broadcast_to(xi - bi, points.shape)
            dy = jax.jvp(lambda p: forward(p, zero)[1], (points,), (tangent,))[1]
            values = jnp.einsum("k,kj,kj->j", w, grads, dy.reshape(len(alphas), -1), precision=HIGHEST)
        path_total = jnp.einsum("k,kj,j->", w, point_grads.reshape(len(alphas), -1), (xi - bi).reshape(-1),
                                precision=HIGHEST)
        out = {"values": values, "delta": ends[1] - ends[0], "path_total": path_total}
        if per_feature:
            one_rest = jax.tree.map(lambda r: r[None], rest)

            def y_one(p):
                return forward(p[None], zero, one_rest)[1].reshape(-1)

            jac = jax.vmap(jax.jacfwd(y_one))(points).reshape(len(alphas), grads.shape[1], -1)
            out["per_feature"] = jnp.einsum("k,kj,kji->ji", w, grads, jac, precision=HIGHEST) * (xi - bi).reshape(1, -1)
        return out

    @jax.jit
    def run(states, xs, bs, rest):
        if batch_size is None:
            return jax.vmap(one_input, in_axes=(None, 0, 0, 0))(states, xs, bs, rest)
        return jax.lax.map(lambda args: one_input(states, *args), (xs, bs, rest), batch_size=batch_size)

    return run


def conductance(model: nnx.Module, inputs, layer: str | Sequence[str | int], target: Target = None, baseline=None, *,
                steps: int = 50, method: str = "trapezoid", per_feature: bool = False,
                batch_size: int | None = None, embed: str | None = None, valid=None) -> Conductance:
    """Total conductance of every neuron of ``layer`` for output ``target``, for each input.

    Args:
      model: an NNX model called as ``model(x)`` on a batch (put it in evaluation mode first: the path
        points of one input run as one batch).
      inputs: ``(n, *features)`` inputs; or a tuple of arrays (positional arguments: the path runs along
        the first, the others pass through) or, with ``embed``, a tuple or dict of the model's inputs
        (token ids, masks), passed through unchanged.
      layer: path of the child module whose output is analysed, e.g. ``"layers/0"``; it must be called
        once per forward pass.
      target: output index (of the flattened output per input), a function ``out -> (batch,)``, or
        ``None`` for a scalar output.
      baseline: ``(*features)`` or ``(n, *features)`` (with ``embed``: in embedding space, shaped like the
        embedding output); zeros by default.
      steps: path intervals (``"trapezoid"``: ``steps + 1`` endpoint-inclusive points, conductance
        ``sum_k (g_k + g_{k+1})/2 * (y_{k+1} - y_k)``) or Gauss-Legendre nodes (``dy/da`` by forward-mode).
      method: ``"trapezoid"`` or ``"gausslegendre"``.
      per_feature: also return the conductance through each input feature ``i``,
        ``(x_i - x'_i) integral dF/dy_j dy_j/dx_i da`` (gradient form, same nodes; sums over features to the
        total conductance up to quadrature error).
      batch_size: inputs per vmapped batch (all at once by default).
      embed: path of the embedding submodule: the path runs in its output space (token models).
      valid: which positions of the layer count in the per-neuron :meth:`Conductance.totals` and the
        ranking: a boolean ``(n, positions)`` array or a function of the inputs (as for ``capture``).

    Returns:
      A :class:`Conductance` with values, ``F(x) - F(baseline)``, the completeness gap split into
      quadrature error and bypass, and per-neuron totals over valid positions.
    """
    if method not in METHODS:
        raise JNeuronError(f"method must be one of {METHODS}, got {method!r}")
    if int(steps) < 1:
        raise JNeuronError(f"steps must be at least 1, got {steps}")
    model_inputs = as_batch(inputs) if isinstance(inputs, (tuple, list, dict)) else None
    count = sample_count(inputs)
    if embed is not None:
        if model_inputs is None:
            model_inputs = (inputs,)
        x = jnp.asarray(run_with_cache(model, model_inputs, [embed])[1][embed])
        rest = jax.tree.map(jnp.asarray, model_inputs)
    elif isinstance(model_inputs, dict):
        raise JNeuronError("conductance on a dict of inputs: name the embedding submodule (embed=...) so the "
                           "path runs in its output space")
    elif model_inputs is not None:
        x, rest = jnp.asarray(model_inputs[0]), tuple(jnp.asarray(r) for r in model_inputs[1:])
    else:
        x, rest = jnp.asarray(inputs), ()
    if x.ndim < 2 or x.shape[0] == 0:
        raise JNeuronError(f"inputs must be a non-empty (n, *features) array, got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise JNeuronError(f"conductance interpolates its inputs, which are {x.dtype}; for token ids name the "
                           "embedding submodule (embed=...) to run the path in embedding space")
    base = jnp.zeros(x.shape[1:], x.dtype) if baseline is None else jnp.asarray(baseline, x.dtype)
    if base.shape == x.shape[1:]:
        base = jnp.broadcast_to(base, x.shape)
    if base.shape != x.shape:
        raise JNeuronError(f"baseline shape {base.shape} fits neither one input {x.shape[1:]} nor all {x.shape}")
    if not bool(jnp.all(jnp.isfinite(x))) or not bool(jnp.all(jnp.isfinite(base))):
        raise JNeuronError("inputs or baseline contain NaN or Inf")

    tapped = nnx.clone(model)  # a copy to operate on; the caller's model is untouched
    replace(tapped, layer, _Tap(find(tapped, layer)))
    if embed is not None:
        replace(tapped, embed, _Start(find(tapped, embed)))
    graphdef, *states = nnx.split(tapped, _Perturbation, _Recorded, _Point, ...)
    points = jnp.broadcast_to(x[:1], (int(steps) + (method == "trapezoid"), *x.shape[1:]))
    along = jax.tree.map(lambda r: jnp.broadcast_to(r[:1], (points.shape[0], *r.shape[1:])), rest)
    shape = jax.eval_shape(
        lambda st, p: _forward(graphdef, target, st, p, jnp.zeros((), x.dtype), along, embed is not None)[1],
        states, points).shape
    program = _program(graphdef, target, method, int(steps), bool(per_feature), batch_size, embed is not None)
    with jax.default_matmul_precision("highest"):
        result = program(states, x, base, rest)
    mask = valid_rows(valid, model_inputs if model_inputs is not None else inputs, count, 0, count)
    if mask is not None and (mask.ndim < 2 or mask.shape[1:] != tuple(shape[1 : mask.ndim])):
        raise JNeuronError(f"valid of shape {mask.shape} does not cover the positions of layer "
                           f"'{path_text(layer)}' {tuple(shape[1:])} for {count} inputs")
    return Conductance(
        layer=path_text(layer), method=method, steps=int(steps), values=np.asarray(result["values"]),
        delta=np.asarray(result["delta"]), layer_shape=tuple(shape[1:]),
        per_feature=np.asarray(result["per_feature"]) if per_feature else None,
        path_total=np.asarray(result["path_total"]), valid=mask)
