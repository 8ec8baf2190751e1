"""Capture the outputs of named submodules of a Flax NNX model as ``(tokens, neurons)`` arrays.

The model is not edited: a copy gets a recording wrapper at each named path, and the forward pass runs in
one compiled program per batch shape. Sequence outputs ``(batch, time, d)`` and conv outputs
``(batch, h, w, c)`` are flattened to ``(tokens, d)`` rows, with each row's position kept alongside
(``[sample, time]`` or ``[sample, h, w]``).

>>> import numpy as np
>>> from flax import nnx
>>> from jneuron.models import MLP
>>> model = MLP(64, (16, 8), 10, rngs=nnx.Rngs(0))
>>> cap = capture(model, np.ones((5, 64), np.float32), ["layers/0", "layers/1"])
>>> cap["layers/0"].shape, cap.positions["layers/1"].shape
((5, 16), (5, 1))
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jneuron.data.source import IteratorSource, as_source
from jneuron.errors import JNeuronError
from jneuron.flax import paths
from jneuron.results import NeuronIndex, Result, to_plain


class Tap(nnx.Module):
    """Wraps a submodule and records its output (as an ``nnx.Intermediate``) each time it is called."""

    def __init__(self, inner: nnx.Module, layer: str):
        self.inner = inner
        self.layer = layer

    def __call__(self, *args, **kwargs):
        output = self.inner(*args, **kwargs)
        self.sow(nnx.Intermediate, "output", output)
        return output


def tapped(model: nnx.Module, layers: Sequence[str]) -> nnx.Module:
    """A copy of ``model`` with a :class:`Tap` at every path in ``layers`` (the model itself is unchanged)."""
    layers = paths.check_layers(model, layers)
    copy = nnx.clone(model)
    for layer in layers:
        paths.replace(copy, layer, Tap(paths.find(copy, layer), layer))
    return copy


def run_tapped(model: nnx.Module, layers: Sequence[str], *inputs) -> tuple[object, dict[str, jax.Array]]:
    """Call a :func:`tapped` model on ``inputs``: its output and the recorded output of each layer."""
    output, recorded = nnx.capture(lambda module, *args: module(*args), nnx.Intermediate)(model, *inputs)
    found = {"/".join(str(p) for p in path[:-1]): variable.get_value()
             for path, variable in nnx.to_flat_state(recorded)}
    outputs = {}
    for layer in layers:
        values = found.get(layer, ())
        if len(values) != 1:
            raise JNeuronError(f"layer '{layer}' ran {len(values)} times in one forward pass; "
                               "capture needs a layer that runs exactly once")
        value = values[0]
        if not isinstance(value, jax.Array) or value.ndim < 2:
            raise JNeuronError(f"layer '{layer}': expected an array output (batch, ..., neurons), "
                               f"got {type(value).__name__} {getattr(value, 'shape', '')}")
        outputs[layer] = value
    return output, outputs


@functools.partial(jax.jit, static_argnames=("graphdef", "layers"))
def _forward(graphdef, layers, state, inputs):
    return run_tapped(nnx.merge(graphdef, state), layers, *inputs)[1]


def output_shapes(model: nnx.Module, inputs, layers: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """One sample's output shape per layer, traced abstractly (nothing is computed or compiled)."""
    layers = paths.check_layers(model, layers)
    graphdef, state = nnx.split(tapped(model, layers))
    sample = tuple(jax.ShapeDtypeStruct((1, *np.shape(x)[1:]), np.asarray(x[:1]).dtype) for x in as_inputs(inputs))
    shapes = jax.eval_shape(functools.partial(_forward, graphdef, layers), state, sample)
    return {layer: tuple(shapes[layer].shape[1:]) for layer in layers}


def as_inputs(inputs) -> tuple:
    """The model's positional inputs as a tuple of arrays sharing their first (batch) axis."""
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in inputs}
    if len(sizes) != 1 or None in sizes:
        raise JNeuronError(f"inputs must share their first (batch) axis; got shapes {[np.shape(x) for x in inputs]}")
    return inputs


def batches(inputs: tuple, batch_size: int | None) -> Iterator[tuple[tuple, int]]:
    """Batches of ``batch_size`` samples, the last one padded (so every batch compiles once): (batch, rows)."""
    count = np.shape(inputs[0])[0]
    if count == 0:
        raise JNeuronError("inputs are empty: no samples to run the model on")
    size = count if batch_size is None else int(batch_size)
    if size < 1:
        raise JNeuronError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, count, size):
        rows = min(size, count - start)
        batch = []
        for x in inputs:
            part = np.asarray(x[start : start + rows])
            if rows < size:
                part = np.concatenate([part, np.zeros((size - rows, *part.shape[1:]), part.dtype)])
            batch.append(jnp.asarray(part))
        yield tuple(batch), rows


def flatten(output: np.ndarray, first_sample: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(batch, *positions, d)`` to ``(tokens, d)`` rows and their ``(tokens, 1 + len(positions))`` positions."""
    grid = np.indices(output.shape[:-1]).reshape(output.ndim - 1, -1).T
    grid[:, 0] += first_sample
    return output.reshape(-1, output.shape[-1]), grid


@dataclass(frozen=True)
class Capture(Result):
    """Captured activations: ``activations[layer]`` is ``(tokens, neurons)``; ``positions[layer]`` gives each
    row's ``[sample, *position]``; ``shapes[layer]`` is one sample's output shape (e.g. ``(time, d)``);
    ``neurons`` names every layer's columns, layer-major."""

    activations: Mapping[str, np.ndarray]
    positions: Mapping[str, np.ndarray]
    shapes: Mapping[str, tuple[int, ...]]

    def __getitem__(self, layer: str) -> np.ndarray:
        return self.activations[layer]

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.activations)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(a.shape[1] for a in self.activations.values())

    @property
    def neurons(self) -> NeuronIndex:
        """Every layer's neurons, layer-major, in one model ``"model"``."""
        return NeuronIndex.from_layers([("model", list(zip(self.layers, self.widths)))])

    def to_dict(self) -> dict:
        """Activations, positions and shapes per layer, with the neurons, as JSON-ready plain Python (for
        large captures write a store instead: :func:`jneuron.write_store`)."""
        return {"activations": to_plain(dict(self.activations)), "positions": to_plain(dict(self.positions)),
                "shapes": to_plain(dict(self.shapes)), "neurons": self.neurons.records()}


def _run(model: nnx.Module, inputs, layers: tuple[str, ...], batch_size: int | None
         ) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Per batch: the layers' raw outputs (padding rows dropped) and the batch's first sample index."""
    graphdef, state = nnx.split(tapped(model, layers))
    start = 0
    for batch, rows in batches(as_inputs(inputs), batch_size):
        outputs = _forward(graphdef, layers, state, batch)
        yield {layer: np.asarray(outputs[layer][:rows]) for layer in layers}, start
        start += rows


def capture_batches(model: nnx.Module, inputs, layers: Sequence[str], *, batch_size: int | None = None
                    ) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Run ``model`` batch by batch and yield ``(activations, positions)`` per batch, flattened to rows.

    Only one batch of activations is held at a time, so this streams inputs of any size.
    """
    layers = paths.check_layers(model, layers)
    for outputs, start in _run(model, inputs, layers, batch_size):
        flat = {layer: flatten(out, start) for layer, out in outputs.items()}
        yield {k: v[0] for k, v in flat.items()}, {k: v[1] for k, v in flat.items()}


def capture(model: nnx.Module, inputs, layers: Sequence[str], *, batch_size: int | None = None) -> Capture:
    """The outputs of the submodules at ``layers`` on ``inputs``, as ``(tokens, neurons)`` arrays.

    Args:
      model: a Flax NNX module (left unchanged).
      inputs: the model's input array (batch first), or a tuple of arrays passed as positional arguments.
      layers: submodule paths as Flax shows them, e.g. ``"layers/0"`` or ``"blocks/1/mlp"``.
      batch_size: samples per compiled forward pass (default: all at once).
    """
    layers = paths.check_layers(model, layers)
    parts = list(_run(model, inputs, layers, batch_size))
    flat = {layer: [flatten(out[layer], start) for out, start in parts] for layer in layers}
    return Capture({layer: np.concatenate([f[0] for f in flat[layer]]) for layer in layers},
                   {layer: np.concatenate([f[1] for f in flat[layer]]) for layer in layers},
                   {layer: parts[0][0][layer].shape[1:] for layer in layers})


def capture_source(model: nnx.Module, inputs, layers: Sequence[str], *, batch_size: int = 256) -> IteratorSource:
    """A re-iterable chunk source over the captured layers (one "model" per layer), for streaming analyses.

    ``jn.comoments(src.chunks(n))`` or ``jn.maxcorr(src)`` then run batch by batch, never holding all
    activations. Layers must give the same number of rows per sample (e.g. all per-token outputs).

    >>> import numpy as np, jneuron as jn
    >>> from flax import nnx
    >>> from jneuron.models import MLP
    >>> model = MLP(8, (4,), 2, rngs=nnx.Rngs(0))
    >>> src = capture_source(model, np.random.default_rng(0).normal(size=(100, 8)), ["layers/0"], batch_size=32)
    >>> jn.comoments(src.chunks(64)).count
    100
    """
    layers = paths.check_layers(model, layers)

    def chunks():
        for acts, _ in capture_batches(model, inputs, layers, batch_size=batch_size):
            yield tuple(acts[layer] for layer in layers)

    return as_source(chunks, names=layers)
