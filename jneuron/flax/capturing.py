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
import os
import shutil
import tempfile
import uuid
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jneuron.data.source import IteratorSource, as_source, reads_dtype
from jneuron.errors import JNeuronError
from jneuron.flax import paths
from jneuron.results import NeuronIndex, Result, to_plain


class Recorder(paths.Wrapper):
    """Wraps a submodule and records its output (or, for a ``":input"`` path, its first input) each call."""

    def __init__(self, inner: nnx.Module, layer: str):
        self.inner = inner
        self.layer = layer

    def __call__(self, *args, **kwargs):
        if paths.split_site(self.layer)[1]:
            self.sow(nnx.Intermediate, "recorded", args[0] if args else next(iter(kwargs.values())))
            return self.inner(*args, **kwargs)
        output = self.inner(*args, **kwargs)
        self.sow(nnx.Intermediate, "recorded", output)
        return output


wrap = paths.wrap_all


def tapped(model: nnx.Module, layers: Sequence[str]) -> nnx.Module:
    """A copy of ``model`` with a :class:`Recorder` at every path in ``layers`` (the model is unchanged)."""
    layers = paths.check_layers(model, layers)
    copy = nnx.clone(model)
    wrap(copy, layers, Recorder)
    return copy


def call(model, batch):
    """``model`` on one batch: a dict is passed as keyword arguments, a tuple as positional arguments,
    anything else as the one argument."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, tuple):
        return model(*batch)
    return model(batch)


def run_tapped(model: nnx.Module, layers: Sequence[str], batch) -> tuple[object, dict[str, jax.Array]]:
    """Call a :func:`tapped` model on one ``batch`` (see :func:`call`): its output and each layer's record."""
    output, recorded = nnx.capture(call, nnx.Intermediate)(model, batch)
    names = {path: module.layer for path, module in nnx.iter_modules(model) if isinstance(module, Recorder)}
    found = {names[tuple(path[:-1])]: variable.get_value() for path, variable in nnx.to_flat_state(recorded)
             if tuple(path[:-1]) in names}
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
def _forward(graphdef, layers, state, batch):
    return run_tapped(nnx.merge(graphdef, state), layers, batch)[1]


def run_with_cache(model: nnx.Module, batch, layers: Sequence[str]) -> tuple[object, dict[str, jax.Array]]:
    """The model's output on one ``batch`` and the raw outputs of ``layers`` (``(batch, ..., d)`` device
    arrays, nothing flattened or copied to the host): traceable, so it runs inside ``jax.jit``.

    >>> import jax, numpy as np
    >>> from flax import nnx
    >>> from jneuron.models import MLP
    >>> model = MLP(8, (4,), 2, rngs=nnx.Rngs(0))
    >>> out, cache = jax.jit(lambda m, x: run_with_cache(m, x, ["layers/0"]))(model, np.ones((3, 8), np.float32))
    >>> out.shape, cache["layers/0"].shape
    ((3, 2), (3, 4))
    """
    layers = paths.check_layers(model, layers)
    return run_tapped(tapped(model, layers), layers, as_batch(batch))


def as_batch(inputs):
    """The model's inputs as a pytree whose leaves share their first (batch) axis: an array, a tuple of
    positional arguments (a list counts as a tuple) or a dict of keyword arguments."""
    if isinstance(inputs, list):
        inputs = tuple(inputs)
    leaves = jax.tree.leaves(inputs)
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if not leaves or len(sizes) != 1 or None in sizes:
        raise JNeuronError("inputs must share their first (batch) axis; got shapes "
                           f"{jax.tree.map(np.shape, inputs)}")
    return inputs


def sample_count(inputs) -> int:
    """How many samples ``inputs`` hold (the leading axis of its leaves)."""
    return int(np.shape(jax.tree.leaves(as_batch(inputs))[0])[0])


def output_shapes(model: nnx.Module, inputs, layers: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """One sample's output shape per layer, traced abstractly (nothing is computed or compiled)."""
    layers = paths.check_layers(model, layers)
    graphdef, state = nnx.split(tapped(model, layers))
    sample = jax.tree.map(lambda x: jax.ShapeDtypeStruct((1, *np.shape(x)[1:]), np.asarray(x[:1]).dtype),
                          as_batch(inputs))
    shapes = jax.eval_shape(functools.partial(_forward, graphdef, layers), state, sample)
    return {layer: tuple(shapes[layer].shape[1:]) for layer in layers}


def batches(inputs, batch_size: int | None) -> Iterator[tuple[object, int]]:
    """Batches of ``batch_size`` samples of an input pytree, the last one padded with zeros (so every batch
    compiles once): ``(batch, rows)`` with ``rows`` the real samples in it."""
    inputs = as_batch(inputs)
    count = sample_count(inputs)
    if count == 0:
        raise JNeuronError("inputs are empty: no samples to run the model on")
    size = count if batch_size is None else int(batch_size)
    if size < 1:
        raise JNeuronError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, count, size):
        rows = min(size, count - start)

        def part(x, start=start, rows=rows):
            piece = np.asarray(x[start : start + rows])
            if rows < size:
                piece = np.concatenate([piece, np.zeros((size - rows, *piece.shape[1:]), piece.dtype)])
            return jnp.asarray(piece)

        yield jax.tree.map(part, inputs), rows


def valid_rows(valid, batch, rows: int, start: int, count: int):
    """The validity of one batch's samples as a boolean array ``(rows, ...)``, or ``None`` (all valid).

    ``valid`` is ``None``, a boolean array over all samples (``(samples,)`` or ``(samples, positions...)``),
    or a function of a batch of inputs (same structure as ``inputs``) returning that batch's mask.
    """
    if valid is None:
        return None
    if callable(valid):
        mask = np.asarray(valid(batch))[:rows]
    else:
        mask = np.asarray(valid)
        if mask.ndim == 0 or mask.shape[0] != count:
            raise JNeuronError(f"valid must have one row per sample ({count}), got shape {mask.shape}")
        mask = mask[start : start + rows]
    if mask.dtype != np.bool_:
        raise JNeuronError(f"valid must be boolean (e.g. attention_mask > 0), got dtype {mask.dtype}")
    return mask


def keep_valid(layer: str, output: np.ndarray, mask) -> np.ndarray:
    """Which flattened rows of ``output`` ``(batch, *positions, d)`` are valid: ``mask`` covers the leading
    axes (``(batch,)``, ``(batch, positions)``, ...) and is broadcast over the rest."""
    grid = output.shape[:-1]
    if mask is None:
        return np.ones(int(np.prod(grid)), bool)
    if mask.ndim > len(grid) or mask.shape != grid[: mask.ndim]:
        raise JNeuronError(f"layer '{layer}': valid of shape {mask.shape} per batch does not cover the leading "
                           f"axes of the output {output.shape} (expected a prefix of {grid})")
    return np.broadcast_to(mask.reshape(mask.shape + (1,) * (len(grid) - mask.ndim)), grid).reshape(-1)


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


def _run(model: nnx.Module, inputs, layers: tuple[str, ...], batch_size: int | None, valid=None
         ) -> Iterator[tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, tuple]]]:
    """Per batch: each layer's valid rows and their ``[sample, *position]`` (padding samples and invalid
    positions dropped), and each layer's per-sample output shape."""
    inputs = as_batch(inputs)
    count = sample_count(inputs)
    graphdef, state = nnx.split(tapped(model, layers))
    start = 0
    for batch, rows in batches(inputs, batch_size):
        outputs = _forward(graphdef, layers, state, batch)
        mask = valid_rows(valid, batch, rows, start, count)
        flat = {}
        for layer in layers:
            out = np.asarray(outputs[layer][:rows])
            acts, where = flatten(out, start)
            keep = keep_valid(layer, out, mask)
            flat[layer] = (acts[keep], where[keep])
        yield flat, {layer: tuple(outputs[layer].shape[1:]) for layer in layers}
        start += rows


def capture_batches(model: nnx.Module, inputs, layers: Sequence[str], *, batch_size: int | None = None,
                    valid=None) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Run ``model`` batch by batch and yield ``(activations, positions)`` per batch, flattened to rows
    (valid rows only, see :func:`capture`).

    Only one batch of activations is held at a time, so this streams inputs of any size.
    """
    layers = paths.check_layers(model, layers)
    for flat, _ in _run(model, inputs, layers, batch_size, valid):
        yield {k: v[0] for k, v in flat.items()}, {k: v[1] for k, v in flat.items()}


def capture(model: nnx.Module, inputs, layers: Sequence[str], *, batch_size: int | None = None,
            valid=None) -> Capture:
    """The outputs of the submodules at ``layers`` on ``inputs``, as ``(tokens, neurons)`` arrays.

    Args:
      model: a Flax NNX module (left unchanged).
      inputs: the model's input array (batch first), a tuple of arrays passed as positional arguments,
        or a dict of arrays passed as keyword arguments (``model(**inputs)``, e.g. a tokenizer's batch).
      layers: submodule paths as Flax shows them, e.g. ``"layers/0"``, ``"blocks/1/mlp"`` or a tap
        (:class:`~jneuron.flax.taps.Tap`) such as ``"blocks/1/mlp/post"``; ``"blocks/1/mlp:input"`` is
        the submodule's first input. A block and a submodule inside it can be named together.
      batch_size: samples per compiled forward pass (default: all at once).
      valid: which rows count: a boolean array ``(samples, positions)`` (or ``(samples,)``), or a function
        of a batch of inputs returning its mask (``lambda batch: batch["attention_mask"] > 0``). Invalid
        rows (padding, special tokens) are never returned; ``positions`` says where each kept row is from.

    >>> import numpy as np
    >>> from flax import nnx
    >>> from jneuron.models import MLP
    >>> model = MLP(4, (3,), 2, rngs=nnx.Rngs(0))
    >>> x = np.ones((5, 4), np.float32)
    >>> capture(model, x, ["layers/0"], valid=np.array([True, False, True, True, False]))["layers/0"].shape
    (3, 3)
    """
    layers = paths.check_layers(model, layers)
    parts = list(_run(model, inputs, layers, batch_size, valid))
    return Capture({layer: np.concatenate([flat[layer][0] for flat, _ in parts]) for layer in layers},
                   {layer: np.concatenate([flat[layer][1] for flat, _ in parts]) for layer in layers},
                   parts[0][1])


CACHE_MODES = ("auto", "memory", "disk", None)
MEMORY_CACHE_BYTES = 2 << 30  # "auto" keeps up to 2 GiB of captured chunks in memory, then spills to disk


class _Replay:
    """Chunks of a model run, recorded on the first complete pass and replayed on later ones (in memory, or
    in a temporary folder once they outgrow ``memory_bytes``); ``cache=None`` runs the model every pass and
    warns from the second on."""

    def __init__(self, run, mode: str | None, memory_bytes: int):
        self.run, self.mode, self.memory_bytes = run, mode, memory_bytes
        self.chunks: list | None = None  # the recorded pass: tuples of arrays, or .npz paths on disk
        self.folder = None
        self.passes = 0

    def __call__(self):
        if self.chunks is not None:
            return self._replay()
        return self._record()

    def _replay(self):
        for chunk in self.chunks:
            if isinstance(chunk, str):
                with np.load(chunk) as saved:
                    yield tuple(saved[f"a{k}"] for k in range(len(saved.files)))
            else:
                yield chunk

    def _record(self):
        self.passes += 1
        if self.mode is None:
            if self.passes > 2:  # the first pass is the source's peek at its first chunk
                warnings.warn(f"capture_source: pass {self.passes - 1} runs the model again (cache=None)",
                              stacklevel=3)
            yield from self.run()
            return
        recorded, size, spill = [], 0, self.mode == "disk"
        for chunk in self.run():
            size += sum(a.nbytes for a in chunk)
            if not spill and self.mode == "auto" and size > self.memory_bytes:
                spill = True
                recorded = [self._save(c) for c in recorded]
            recorded.append(self._save(chunk) if spill else chunk)
            yield chunk
        self.chunks = recorded

    def _save(self, chunk) -> str:
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="jneuron-capture-")
            weakref.finalize(self, shutil.rmtree, self.folder, True)  # removed with the source
        path = os.path.join(self.folder, f"{uuid.uuid4().hex}.npz")
        np.savez(path, **{f"a{k}": a for k, a in enumerate(chunk)})
        return path


@reads_dtype
def capture_source(model: nnx.Module, inputs, layers: Sequence[str], *, batch_size: int = 256,
                   valid=None, cache: str | None = "auto", memory_bytes: int = MEMORY_CACHE_BYTES) -> IteratorSource:
    """A re-iterable chunk source over the captured layers (one "model" per layer), for streaming analyses.

    ``jn.comoments(src.chunks(n))`` or ``jn.maxcorr(src)`` then run batch by batch, never holding all
    activations at once on the device. Layers must give the same number of rows per sample (e.g. all
    per-token outputs). ``valid`` (see :func:`capture`) drops padding before any statistic sees it.

    Analyses that pass over the data several times (MaxCorr's tiles) run the model once: ``cache="auto"``
    (default) records the first complete pass in memory up to ``memory_bytes`` and in a temporary folder
    beyond; ``"memory"`` or ``"disk"`` choose; ``None`` runs the model on every pass, with a warning.

    >>> import numpy as np, jneuron as jn
    >>> from flax import nnx
    >>> from jneuron.models import MLP
    >>> model = MLP(8, (4,), 2, rngs=nnx.Rngs(0))
    >>> src = capture_source(model, np.random.default_rng(0).normal(size=(100, 8)), ["layers/0"], batch_size=32)
    >>> jn.comoments(src.chunks(64)).count
    100
    """
    layers = paths.check_layers(model, layers)
    if cache not in CACHE_MODES:
        raise JNeuronError(f"cache must be one of {CACHE_MODES}, got {cache!r}")

    def chunks():
        for acts, _ in capture_batches(model, inputs, layers, batch_size=batch_size, valid=valid):
            yield tuple(acts[layer] for layer in layers)

    return as_source(_Replay(chunks, cache, int(memory_bytes)), names=layers)
