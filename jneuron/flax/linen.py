"""Flax Linen support: capture, ablate and ablation curves through ``nn.intercept_methods``.

A Linen model is its module plus its variables, bound with :class:`Linen`. Layers are named by the module
path Linen gives them, joined by ``/`` (``"layers_0"``, ``"encoder/block_1/mlp"``); the output of a
layer's ``__call__`` is what is captured or masked, in the same compiled forward pass.

>>> import numpy as np, jax, jax.numpy as jnp
>>> import flax.linen as nn
>>> class Net(nn.Module):
...     @nn.compact
...     def __call__(self, x):
...         return nn.Dense(2, name="head")(nn.relu(nn.Dense(4, name="hidden")(x)))
>>> net = Net()
>>> model = Linen(net, net.init(jax.random.key(0), jnp.ones((1, 3))))
>>> x = np.ones((5, 3), np.float32)
>>> capture(model, x, ["hidden"])["hidden"].shape
(5, 4)
>>> np.asarray(ablate(model, {"hidden": np.zeros(4)})(x))[0].tolist() == np.asarray(
...     model.variables["params"]["head"]["bias"]).tolist()
True
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jneuron.errors import JNeuronError
from jneuron.flax.ablation import MODES, layer_means, mask_output, variants_per_step
from jneuron.flax.capturing import Capture, batches, flatten


def as_inputs(inputs) -> tuple:
    """A Linen model's positional inputs as a tuple of arrays sharing their first (batch) axis."""
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in inputs}
    if len(sizes) != 1 or None in sizes:
        raise JNeuronError(f"inputs must share their first (batch) axis; got shapes {[np.shape(x) for x in inputs]}")
    return inputs


@dataclass(frozen=True, eq=False)
class Linen:
    """A Linen module with its variables (``module.init(...)`` output): what the adapters take for Linen."""

    module: nn.Module
    variables: Mapping

    def layer_paths(self, inputs) -> tuple[str, ...]:
        """Every submodule path whose ``__call__`` runs on ``inputs`` (traced abstractly, nothing computed)."""
        inputs = as_inputs(inputs)
        seen: list[str] = []

        def record(next_fun, args, kwargs, context):
            path = "/".join(context.module.path)
            if context.method_name == "__call__" and path and path not in seen:
                seen.append(path)
            return next_fun(*args, **kwargs)

        def run(variables, *arrays):
            with nn.intercept_methods(record):
                return self.module.apply(variables, *arrays)

        jax.eval_shape(run, self.variables, *[jax.ShapeDtypeStruct((1, *np.shape(x)[1:]), np.asarray(x[:1]).dtype)
                                              for x in inputs])
        return tuple(seen)

    def check_layers(self, layers: Sequence[str], inputs) -> tuple[str, ...]:
        """Validate layer paths against the ones that run; unknown paths list the layers that exist."""
        layers = (layers,) if isinstance(layers, str) else tuple(str(layer) for layer in layers)
        if not layers:
            raise JNeuronError("no layers given: name at least one layer path")
        if len(set(layers)) != len(layers):
            raise JNeuronError(f"layer paths must be unique, got {list(layers)}")
        known = self.layer_paths(inputs)
        for layer in layers:
            if layer not in known:
                listed = ", ".join(f"'{p}'" for p in known)
                raise JNeuronError(f"no layer '{layer}' in the Linen model; the layers are: {listed}")
        return layers

    def output_shapes(self, inputs, layers: Sequence[str]) -> dict[str, tuple[int, ...]]:
        """One sample's output shape per layer, traced abstractly (nothing is computed or compiled)."""
        layers = self.check_layers(layers, inputs)
        sample = tuple(jax.ShapeDtypeStruct((1, *np.shape(x)[1:]), np.asarray(x[:1]).dtype) for x in as_inputs(inputs))
        shapes = jax.eval_shape(functools.partial(_forward, self.module, layers), self.variables, sample)
        return {layer: tuple(shapes[layer].shape[1:]) for layer in layers}

    def curve_engine(self):
        return _LinenEngine(self)


def _apply(module, layers, variables, inputs, masks=None, values=None):
    """Run ``module`` intercepting the outermost ``__call__`` of each layer: mask it, record it."""
    recorded: dict[str, list] = {layer: [] for layer in layers}
    active: set[str] = set()

    def intercept(next_fun, args, kwargs, context):
        path = "/".join(context.module.path)
        if context.method_name != "__call__" or path not in recorded or path in active:
            return next_fun(*args, **kwargs)
        active.add(path)
        try:
            output = next_fun(*args, **kwargs)
        finally:
            active.discard(path)
        if masks is not None and path in masks:
            output = mask_output(path, output, masks[path], values[path])
        recorded[path].append(output)
        return output

    with nn.intercept_methods(intercept):
        output = module.apply(variables, *inputs)
    for layer, outputs in recorded.items():
        if len(outputs) != 1:
            raise JNeuronError(f"layer '{layer}' ran {len(outputs)} times in one forward pass; "
                               "capture needs a layer that runs exactly once")
    return output, {layer: outputs[0] for layer, outputs in recorded.items()}


@functools.partial(jax.jit, static_argnames=("module", "layers"))
def _forward(module, layers, variables, inputs):
    return _apply(module, layers, variables, inputs)[1]


def capture(model: Linen, inputs, layers: Sequence[str], *, batch_size: int | None = None) -> Capture:
    """The outputs of the Linen submodules at ``layers``, as ``(tokens, neurons)`` rows with positions.

    Same result type and flattening as :func:`jneuron.flax.capturing`.
    """
    layers = model.check_layers(layers, inputs)
    acts, where, shapes = {layer: [] for layer in layers}, {layer: [] for layer in layers}, {}
    start = 0
    for batch, rows in batches(as_inputs(inputs), batch_size):
        outputs = _forward(model.module, layers, model.variables, batch)
        for layer in layers:
            output = np.asarray(outputs[layer][:rows])
            shapes[layer] = output.shape[1:]
            rows_out, positions = flatten(output, start)
            acts[layer].append(rows_out)
            where[layer].append(positions)
        start += rows
    return Capture({k: np.concatenate(v) for k, v in acts.items()},
                   {k: np.concatenate(v) for k, v in where.items()}, shapes)


def ablate(model: Linen, masks: Mapping[str, object], mode: str = "zero", *,
           values: Mapping[str, object] | None = None, inputs=None) -> Callable:
    """A function ``f(*inputs) -> outputs`` of the model with masked layers (see :func:`jneuron.flax.ablation`).

    ``mode="mean"`` takes ``values`` (means) or computes them on ``inputs``; ``"value"`` needs ``values``.
    """
    if mode not in MODES:
        raise JNeuronError(f"mode must be one of {MODES}, got '{mode}'")
    layers = tuple(masks)
    if mode == "zero":
        values = {layer: np.zeros((), np.float32) for layer in layers}
    elif mode == "mean" and not values:
        if inputs is None:
            raise JNeuronError("mode='mean' needs the means: pass values={layer: means} or inputs=")
        values = layer_means(model, inputs, layers)
    values = dict(values or {})
    missing = [layer for layer in layers if layer not in values]
    if missing:
        raise JNeuronError(f"mode='{mode}' needs values for every masked layer; missing {missing}")
    masks = {layer: jnp.asarray(masks[layer]) for layer in layers}
    values = {layer: jnp.asarray(values[layer]) for layer in layers}

    def variant(*inputs):
        model.check_layers(layers, inputs)
        return _masked(model.module, layers, model.variables, masks, values, inputs)

    return variant


@functools.partial(jax.jit, static_argnames=("module", "layers"))
def _masked(module, layers, variables, masks, values, inputs):
    return _apply(module, layers, variables, inputs, masks, values)[0]


@functools.partial(jax.jit, static_argnames=("module", "layers", "fn", "batch_size"))
def _sweep(module, layers, fn, batch_size, variables, masks, values, args):
    inputs, rest = args[0], args[1:]

    def one(variant):
        return fn(_apply(module, layers, variables, inputs, *variant)[0], *rest)

    if batch_size is None:
        return jax.vmap(one)((masks, values))
    return jax.lax.map(one, (masks, values), batch_size=batch_size)


def sweep(model: Linen, fn: Callable, inputs, *args, masks: Mapping[str, object],
          values: Mapping[str, object] | None = None, batch_size: int | str | None = "auto"):
    """``fn(outputs_k, *args)`` for K masks ``{layer: (K, d)}`` (replacement ``values``: ``{layer: (d,)}``,
    default 0) in one compiled call; ``batch_size`` as in :func:`jneuron.flax.sweep`."""
    inputs = tuple(jnp.asarray(x) for x in as_inputs(inputs))
    layers = model.check_layers(list(masks), inputs)
    masks = {layer: jnp.asarray(masks[layer]) for layer in layers}
    counts = {layer: m.shape[0] if m.ndim else 0 for layer, m in masks.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise JNeuronError(f"sweep: every mask needs the same leading number of variants, got {counts}")
    values = dict(values or {})
    count = next(iter(counts.values()))
    stacked = {layer: jnp.broadcast_to(jnp.asarray(values.get(layer, np.zeros((), np.float32))),
                                       (count, *np.shape(values.get(layer, np.zeros(())))))
               for layer in layers}
    return _sweep(model.module, layers, fn, variants_per_step(batch_size), model.variables, masks, stacked,
                  (inputs, *args))


@dataclass
class _LinenEngine:
    """What :func:`jneuron.flax.ablation_curve` needs from a Linen model."""

    model: Linen

    def check_layers(self, layers, inputs):
        return self.model.check_layers(layers, inputs)

    def widths(self, inputs, layers):
        return tuple(shape[-1] for shape in self.model.output_shapes(inputs, layers).values())

    def means(self, inputs, layers):
        return layer_means(self.model, inputs, layers)

    def evaluate(self, masks, values, metric, inputs, labels, batch_size):
        return sweep(self.model, metric, inputs, jnp.asarray(labels), masks=masks, values=values,
                     batch_size=batch_size)
