"""Neuron conductance (Dhamdhere et al., ICLR 2019) of every neuron of a named layer of an NNX model.

The conductance of neuron ``j`` of layer output ``y`` for the output ``F`` along the straight path
``x(a) = x' + a (x - x')`` from the baseline ``x'`` is ``integral_0^1 dF/dy_j (dy_j/da) da``. The model is split
at the layer: a stand-in module records the layer's output ``y`` and adds a perturbation to it, so one
backward pass gives ``dF/dy`` at every path point (all points of all inputs in one compiled, vmapped call).

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
from jneuron.flax.paths import find, path_text, replace
from jneuron.results import NeuronIndex, Ranking, Result, to_plain

Target = int | Callable[[jax.Array], jax.Array] | None
METHODS = ("trapezoid", "gausslegendre")


class _Perturbation(nnx.Variable):
    """What the stand-in adds to the layer's output (zero: only its gradient is used)."""


class _Recorded(nnx.Variable):
    """The layer's output, recorded by the stand-in."""


class _Tap(nnx.Module):
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
    """

    layer: str
    method: str
    steps: int
    values: np.ndarray
    delta: np.ndarray
    layer_shape: tuple[int, ...]
    per_feature: np.ndarray | None = None

    @property
    def neurons(self) -> NeuronIndex:
        """The identity of the layer's neurons (the columns of ``values``), in one model ``"model"``."""
        return self._neurons("model")

    def _neurons(self, model: str) -> NeuronIndex:
        return NeuronIndex.from_layers([(model, [(self.layer, self.values.shape[1])])])

    @property
    def gap(self) -> np.ndarray:
        """Completeness gap per input: sum of conductances minus ``F(x) - F(baseline)``."""
        return self.values.sum(axis=1) - self.delta

    def ranking(self, model: str = "model") -> Ranking:
        """Neurons ranked by mean absolute conductance over the inputs (details: mean signed conductance)."""
        scores = np.abs(self.values).mean(axis=0)
        dead = np.flatnonzero(np.abs(self.values).max(axis=0) == 0)
        return Ranking("conductance", scores, self._neurons(model), dead=dead,
                       details={"mean_conductance": self.values.mean(axis=0)})

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


def _forward(graphdef, target: Target, states, points: jax.Array, shift: jax.Array):
    """``F`` and the layer output ``y`` at a batch of points, with ``shift`` added to ``y``."""
    perturbation, recorded, rest = states
    module = nnx.merge(graphdef, jax.tree.map(lambda _: shift, perturbation), recorded, rest, copy=True)
    return _select(target, module(points)), jax.tree.leaves(nnx.state(module, _Recorded))[0]


@functools.lru_cache(maxsize=32)
def _program(graphdef, target: Target, method: str, steps: int, per_feature: bool, batch_size: int | None):
    """The compiled computation for one model structure and setting (weights are arguments, not constants)."""
    alphas, weights = _nodes(method, steps)

    def one_input(states, xi, bi):
        dtype = xi.dtype
        zero = jnp.zeros((), dtype)
        a, w = jnp.asarray(alphas, dtype), jnp.asarray(weights, dtype)
        points = bi[None] + a.reshape(-1, *([1] * xi.ndim)) * (xi - bi)[None]
        shape = jax.eval_shape(lambda p: _forward(graphdef, target, states, p, zero)[1], points).shape

        def total(shift):
            f, y = _forward(graphdef, target, states, points, shift)
            return f.sum(), y

        grads, y = jax.grad(total, has_aux=True)(jnp.zeros(shape, dtype))
        grads, y = grads.reshape(len(alphas), -1), y.reshape(len(alphas), -1)
        ends = _forward(graphdef, target, states, jnp.stack([bi, xi]), zero)[0]
        if method == "trapezoid":
            values = jnp.sum((grads[1:] + grads[:-1]) / 2 * (y[1:] - y[:-1]), axis=0)
        else:
            tangent = jnp.broadcast_to(xi - bi, points.shape)
            dy = jax.jvp(lambda p: _forward(graphdef, target, states, p, zero)[1], (points,), (tangent,))[1]
            values = jnp.einsum("k,kj,kj->j", w, grads, dy.reshape(len(alphas), -1), precision=HIGHEST)
        out = {"values": values, "delta": ends[1] - ends[0]}
        if per_feature:
            def y_one(p):
                return _forward(graphdef, target, states, p[None], zero)[1].reshape(-1)

            jac = jax.vmap(jax.jacfwd(y_one))(points).reshape(len(alphas), grads.shape[1], -1)
            out["per_feature"] = jnp.einsum("k,kj,kji->ji", w, grads, jac, precision=HIGHEST) * (xi - bi).reshape(1, -1)
        return out

    @jax.jit
    def run(states, xs, bs):
        if batch_size is None:
            return jax.vmap(one_input, in_axes=(None, 0, 0))(states, xs, bs)
        return jax.lax.map(lambda args: one_input(states, *args), (xs, bs), batch_size=batch_size)

    return run


def conductance(model: nnx.Module, inputs, layer: str | Sequence[str | int], target: Target = None, baseline=None, *,
                steps: int = 50, method: str = "trapezoid", per_feature: bool = False,
                batch_size: int | None = None) -> Conductance:
    """Total conductance of every neuron of ``layer`` for output ``target``, for each input.

    Args:
      model: an NNX model called as ``model(x)`` on a batch (put it in evaluation mode first: the path
        points of one input run as one batch).
      inputs: ``(n, *features)`` inputs.
      layer: path of the child module whose output is analysed, e.g. ``"layers/0"``; it must be called
        once per forward pass.
      target: output index (of the flattened output per input), a function ``out -> (batch,)``, or
        ``None`` for a scalar output.
      baseline: ``(*features)`` or ``(n, *features)``; zeros by default.
      steps: path intervals (``"trapezoid"``: ``steps + 1`` endpoint-inclusive points, conductance
        ``sum_k (g_k + g_{k+1})/2 * (y_{k+1} - y_k)``) or Gauss-Legendre nodes (``dy/da`` by forward-mode).
      method: ``"trapezoid"`` or ``"gausslegendre"``.
      per_feature: also return the conductance through each input feature ``i``,
        ``(x_i - x'_i) integral dF/dy_j dy_j/dx_i da`` (gradient form, same nodes; sums over features to the
        total conductance up to quadrature error).
      batch_size: inputs per vmapped batch (all at once by default).

    Returns:
      A :class:`Conductance` with values, ``F(x) - F(baseline)`` and the completeness gap.
    """
    if method not in METHODS:
        raise JNeuronError(f"method must be one of {METHODS}, got {method!r}")
    if int(steps) < 1:
        raise JNeuronError(f"steps must be at least 1, got {steps}")
    x = jnp.asarray(inputs)
    if x.ndim < 2 or x.shape[0] == 0:
        raise JNeuronError(f"inputs must be a non-empty (n, *features) array, got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    base = jnp.zeros(x.shape[1:], x.dtype) if baseline is None else jnp.asarray(baseline, x.dtype)
    if base.shape == x.shape[1:]:
        base = jnp.broadcast_to(base, x.shape)
    if base.shape != x.shape:
        raise JNeuronError(f"baseline shape {base.shape} fits neither one input {x.shape[1:]} nor all {x.shape}")
    if not bool(jnp.all(jnp.isfinite(x))) or not bool(jnp.all(jnp.isfinite(base))):
        raise JNeuronError("inputs or baseline contain NaN or Inf")

    tapped = nnx.clone(model)  # a copy to operate on; the caller's model is untouched
    replace(tapped, layer, _Tap(find(tapped, layer)))
    graphdef, *states = nnx.split(tapped, _Perturbation, _Recorded, ...)
    points = jnp.broadcast_to(x[:1], (int(steps) + (method == "trapezoid"), *x.shape[1:]))
    shape = jax.eval_shape(lambda st, p: _forward(graphdef, target, st, p, jnp.zeros((), x.dtype))[1],
                           states, points).shape
    program = _program(graphdef, target, method, int(steps), bool(per_feature), batch_size)
    with jax.default_matmul_precision("highest"):
        result = program(states, x, base)
    return Conductance(
        layer=path_text(layer), method=method, steps=int(steps), values=np.asarray(result["values"]),
        delta=np.asarray(result["delta"]), layer_shape=tuple(shape[1:]),
        per_feature=np.asarray(result["per_feature"]) if per_feature else None)
