"""Ablate neurons of a Flax NNX model by masking layer outputs; evaluate many masks in one compiled call.

:func:`ablate` returns a copy of the model whose named layers are wrapped in :class:`Masked`:
``output * mask + value * (1 - mask) + shift`` per neuron, where ``value`` is 0 (``mode="zero"``), the
neuron's mean output (``"mean"``, bias balancing: for a dense next layer this equals folding
``w_jk * E[t_j]`` into its bias) or given values (``"value"``), and ``shift`` is an additive steering
vector (:func:`steer`; 0 otherwise). Values shaped like the whole activation ``(batch, positions, d)``
patch per example and position (:func:`patch`: activation patching from another run). Masks, values and
shifts are data (``nnx.Variable`` leaves), not structure, so :func:`sweep` evaluates K of them with one
``jax.vmap`` (or ``lax.map`` in batches) over a single compiled program.

>>> import numpy as np, jax.numpy as jnp
>>> from flax import nnx
>>> from jneuron.models import MLP
>>> model = MLP(8, (4,), 2, rngs=nnx.Rngs(0))
>>> x = jnp.ones((3, 8))
>>> variant = ablate(model, {"layers/0": np.zeros(4)})        # zero every hidden neuron
>>> bool(jnp.allclose(variant(x)[0], model.head.bias[...]))
True
>>> masks = {"layers/0": np.eye(4)[::-1]}                       # 4 variants, one neuron kept in each
>>> sweep(variant, lambda m, x: m(x).sum(), x, masks=masks).shape
(4,)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jneuron import config
from jneuron.config import HIGHEST
from jneuron.errors import JNeuronError
from jneuron.flax import paths
from jneuron.flax.capturing import capture, wrap

MODES = ("zero", "mean", "value")


def variants_per_step(batch_size: int | str | None) -> int | None:
    """Resolve ``batch_size`` for a sweep: ``"auto"`` is all variants in one vmap on GPU/TPU and
    :data:`jneuron.config.CPU_MASKS_PER_STEP` per ``lax.map`` step on CPU (cache-sized steps); ``None`` is
    one vmap."""
    if batch_size == "auto":
        return config.CPU_MASKS_PER_STEP if jax.default_backend() == "cpu" else None
    if batch_size is not None and (isinstance(batch_size, str) or batch_size < 1):
        raise JNeuronError(f"batch_size must be a positive integer, None or 'auto', got {batch_size!r}")
    return batch_size


class AblationMask(nnx.Variable):
    """Per-neuron keep factor of a :class:`Masked` layer: 1 keeps the output, 0 replaces it by the value."""


class AblationValue(nnx.Variable):
    """Per-neuron replacement value of a :class:`Masked` layer."""


class AblationShift(nnx.Variable):
    """Per-neuron additive shift of a :class:`Masked` layer (a steering vector)."""


class Masked(paths.Wrapper):
    """Wraps a submodule: ``output * mask + value * (1 - mask) + shift`` (for a ``":input"`` path, the same on
    its first input before the submodule runs).

    ``mask``, ``value`` and ``shift`` broadcast against the output's trailing axes: shape ``(d,)`` acts at
    every position, ``(time, d)`` or ``(h, w, c)`` at chosen positions, and the full activation shape
    ``(batch, time, d)`` per example (then the model runs on batches of exactly that size).
    """

    def __init__(self, inner: nnx.Module, layer: str, mask, value, shift=0.0):
        self.inner = inner
        self.layer = layer
        self.mask = AblationMask(jnp.asarray(mask))
        self.value = AblationValue(jnp.asarray(value))
        self.shift = AblationShift(jnp.asarray(shift, jnp.float32))
        self.fit = False  # True (set by control): a per-position mask is fitted to each input's length

    def __call__(self, *args, **kwargs):
        edit = lambda x: mask_output(self.layer, x, self.mask[...], self.value[...], self.shift[...], fit=self.fit)
        if paths.split_site(self.layer)[1]:
            if not args:
                raise JNeuronError(f"layer '{self.layer}': the submodule was called without a positional input")
            return self.inner(edit(args[0]), *args[1:], **kwargs)
        return edit(self.inner(*args, **kwargs))


def mask_output(layer: str, output, mask: jax.Array, value: jax.Array, shift: jax.Array | None = None, *,
                fit: bool = False) -> jax.Array:
    """``output * mask + value * (1 - mask) + shift``, each checked against the output's shape."""
    if not isinstance(output, jax.Array) or output.ndim < 1:
        raise JNeuronError(f"layer '{layer}': can only mask an array output, got {type(output).__name__}")
    if fit:
        mask = fit_positions(mask, output.shape)
    arrays = (("mask", mask), ("value", value)) + (() if shift is None else (("shift", shift),))
    for name, array in arrays:
        _check_fits(layer, name, array.shape, output.shape)
    mask = jnp.broadcast_to(mask.astype(output.dtype), output.shape)
    value = jnp.broadcast_to(value.astype(output.dtype), output.shape)
    edited = output * mask + value * (1 - mask)
    return edited if shift is None else edited + jnp.broadcast_to(shift.astype(output.dtype), output.shape)


def fit_positions(mask: jax.Array, output_shape: tuple) -> jax.Array:
    """A per-position mask ``(P, ..., d)`` fitted to the output's first position axis ``T``: positions past
    ``P`` are kept (mask 1), positions past ``T`` dropped, so a mask naming positions works at any length."""
    if mask.ndim != len(output_shape) - 1 or mask.ndim < 2 or mask.shape[0] in (1, output_shape[1]):
        return mask
    length = output_shape[1]
    if mask.shape[0] > length:
        return mask[:length]
    return jnp.concatenate([mask, jnp.ones((length - mask.shape[0], *mask.shape[1:]), mask.dtype)])


def _check_fits(layer: str, what: str, shape: tuple, output_shape: tuple) -> None:
    """An edit fits if its shape is a suffix of one sample's output shape, or the whole output shape (per
    example); broadcasting 1s allowed."""
    sample_shape = output_shape[1:]
    if len(shape) == 0:
        return
    if shape[-1] not in (1, sample_shape[-1]):
        raise JNeuronError(f"layer '{layer}': {what} has {shape[-1]} neurons; the layer has {sample_shape[-1]}")
    if len(shape) == len(output_shape):
        if any(s not in (1, o) for s, o in zip(shape, output_shape)):
            raise JNeuronError(f"layer '{layer}': per-example {what} of shape {shape} does not fit the "
                               f"activation {output_shape} (batch, ..., neurons)")
        return
    if len(shape) > len(sample_shape) or any(
            s not in (1, o) for s, o in zip(shape[::-1], sample_shape[::-1])):
        raise JNeuronError(f"layer '{layer}': {what} of shape {shape} does not fit the layer's output "
                           f"shape per sample {sample_shape} (expected (d,), trailing axes of it, or the "
                           f"whole activation {output_shape})")


def layer_means(model, inputs, layers, *, batch_size: int | None = None, valid=None,
                axes: int = 1) -> dict[str, np.ndarray]:
    """Each layer's mean output over all valid samples and positions (the values of ``mode="mean"``), taken
    in float64 and given in the layer's dtype.

    Args:
      model: a Flax NNX module, or a Linen model bound by :class:`jneuron.flax.linen.Linen` (no ``valid``).
      inputs, layers, batch_size, valid: as for :func:`~jneuron.flax.capture` (invalid rows, such
        as padding, count in no mean).
      axes: trailing output axes kept apart: 1 gives ``(d,)`` per neuron; 2 gives e.g. ``(heads, d)`` for
        a per-head output ``(batch, positions, heads, d)`` (mean ablation of whole heads).
    """
    if isinstance(model, nnx.Module):
        captured = capture(model, inputs, layers, batch_size=batch_size, valid=valid)
    else:
        from jneuron.flax import linen  # linen builds on this module

        if not isinstance(model, linen.Linen):
            raise JNeuronError(f"layer_means needs a Flax NNX module or jneuron.flax.linen.Linen(module, variables), "
                               f"got {type(model).__name__}")
        if valid is not None:
            raise JNeuronError("layer_means: valid= is implemented for Flax NNX models, not Linen ones")
        captured = linen.capture(model, inputs, layers, batch_size=batch_size)
    means = {}
    for layer in captured.layers:
        kept = tuple(captured.shapes[layer][len(captured.shapes[layer]) - axes:])
        if len(kept) != axes:
            raise JNeuronError(f"layer '{layer}': axes={axes} but one sample's output has shape {captured.shapes[layer]}")
        rows = captured[layer].reshape(-1, *kept).astype(np.float64)
        if rows.shape[0] == 0:
            raise JNeuronError(f"layer '{layer}': no valid rows to average")
        means[layer] = rows.mean(axis=0).astype(captured[layer].dtype)
    return means


def ablate(model: nnx.Module, masks: Mapping[str, object], mode: str = "zero", *,
           values: Mapping[str, object] | None = None, inputs=None,
           batch_size: int | None = None, valid=None) -> nnx.Module:
    """A copy of ``model`` whose named layers' outputs are masked (the model itself is unchanged).

    Args:
      model: a Flax NNX module.
      masks: layer path (a submodule, a tap, or ``"path:input"``) to mask, shape ``(d,)`` (or trailing
        output axes, for chosen positions and heads; or the whole activation, per example); 1 keeps a
        neuron, 0 replaces it.
      mode: ``"zero"`` (replace by 0), ``"mean"`` (by the neuron's mean output, from ``values`` or
        computed on ``inputs``) or ``"value"`` (by ``values``).
      values: layer path to replacement values (``"mean"``: precomputed means; ``"value"``: required).
      inputs: data for the means of ``mode="mean"`` when ``values`` is not given.
      batch_size: samples per forward pass when computing means.
      valid: which rows of ``inputs`` the means count (see :func:`~jneuron.flax.capture`).
    """
    if mode not in MODES:
        raise JNeuronError(f"mode must be one of {MODES}, got '{mode}'")
    layers = paths.check_layers(model, list(masks))
    values = dict(values or {})
    unknown = set(values) - set(layers)
    if unknown:
        raise JNeuronError(f"values given for layers without a mask: {sorted(unknown)}; masked: {list(layers)}")
    if mode == "zero":
        if values:
            raise JNeuronError("mode='zero' takes no values (use mode='value')")
        values = {layer: np.zeros((), np.float32) for layer in layers}
    elif mode == "mean" and not values:
        if inputs is None:
            raise JNeuronError("mode='mean' needs the means: pass values={layer: means} or inputs=")
        values = layer_means(model, inputs, layers, batch_size=batch_size, valid=valid)
    missing = [layer for layer in layers if layer not in values]
    if missing:
        raise JNeuronError(f"mode='{mode}' needs values for every masked layer; missing {missing}")
    variant = nnx.clone(model)
    wrap(variant, layers, lambda inner, layer: Masked(inner, layer, masks[layer], values[layer]))
    return variant


def patch(model: nnx.Module, values: Mapping[str, object], *, positions=None) -> nnx.Module:
    """A copy of ``model`` whose layers take the given activations (activation patching).

    Args:
      model: a Flax NNX module (unchanged).
      values: layer path to the activation to write, shaped like the layer's whole activation
        ``(batch, positions, d)`` (e.g. from :func:`~jneuron.flax.capturing.run_with_cache` on another
        input); the patched model then runs on batches of that size.
      positions: where to patch: ``None`` (everywhere), or a boolean ``(batch, positions)`` array
        (per example and position).

    >>> import numpy as np, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jneuron.models import MLP
    >>> from jneuron.flax.capturing import run_with_cache
    >>> model = MLP(4, (3,), 2, rngs=nnx.Rngs(0))
    >>> a, b = jnp.ones((2, 4)), jnp.zeros((2, 4))
    >>> out_a, cache = run_with_cache(model, a, ["layers/0"])
    >>> patched = patch(model, {"layers/0": cache["layers/0"]}, positions=np.array([True, False]))
    >>> bool(jnp.allclose(patched(b)[0], out_a[0])), bool(jnp.allclose(patched(b)[1], model(b)[1]))
    (True, True)
    """
    masks = {}
    for layer, value in values.items():
        value = jnp.asarray(value)
        if positions is None:
            masks[layer] = np.zeros((), np.float32)
            continue
        where = np.asarray(positions)
        if where.dtype != np.bool_ or where.shape != value.shape[: where.ndim] or where.ndim >= value.ndim:
            raise JNeuronError(f"patch: positions must be a boolean array over the leading axes of "
                               f"'{layer}' {value.shape}, got {where.dtype} {where.shape}")
        keep = (~where).astype(np.float32)
        masks[layer] = keep.reshape(keep.shape + (1,) * (value.ndim - where.ndim))
    return ablate(model, masks, "value", values=values)


def steer(model: nnx.Module, vectors: Mapping[str, object], *, scale: float = 1.0) -> nnx.Module:
    """A copy of ``model`` with ``scale * vectors[layer]`` added to each layer's output (activation
    steering). A vector of shape ``(d,)`` acts at every position, ``(positions, d)`` per position, the whole
    activation shape per example; :func:`sweep` with ``shifts=`` evaluates many strengths at once.

    >>> import numpy as np, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jneuron.models import MLP
    >>> model = MLP(4, (3,), 2, rngs=nnx.Rngs(0))
    >>> steered = steer(model, {"layers/0": np.ones(3)}, scale=0.0)
    >>> bool(jnp.allclose(steered(jnp.ones((2, 4))), model(jnp.ones((2, 4)))))
    True
    """
    layers = paths.check_layers(model, list(vectors))
    variant = nnx.clone(model)
    wrap(variant, layers, lambda inner, layer: Masked(
        inner, layer, np.ones((), np.float32), np.zeros((), np.float32),
        scale * np.asarray(vectors[layer], np.float32)))
    return variant


def masked_layers(variant: nnx.Module) -> dict[str, Masked]:
    """The :class:`Masked` wrappers of an ablated model, by layer path (as given to :func:`ablate`)."""
    return {module.layer: module for _, module in nnx.iter_modules(variant) if isinstance(module, Masked)}


@functools.partial(jax.jit, static_argnames=("graphdef", "fn", "batch_size"))
def _sweep(graphdef, fn, batch_size, masks, values, shifts, rest, args):
    def one(variant_state):
        return fn(nnx.merge(graphdef, *variant_state, rest), *args)

    if batch_size is None:
        return jax.vmap(one)((masks, values, shifts))
    return jax.lax.map(one, (masks, values, shifts), batch_size=batch_size)


def sweep(variant: nnx.Module, fn: Callable, *args, masks: Mapping[str, object] | None = None,
          values: Mapping[str, object] | None = None, shifts: Mapping[str, object] | None = None,
          batch_size: int | str | None = "auto"):
    """Evaluate ``fn(variant_k, *args)`` for K masks and/or values in one compiled call.

    Args:
      variant: a model returned by :func:`ablate` (its masks and values are the defaults).
      fn: a jit-able function of the model variant and ``args``; keep the same function object across
        calls (a module-level function) so that new masks reuse the compiled program.
      *args: arrays passed to ``fn`` (data, labels): arguments, not constants, so they do not recompile.
      masks: layer path to ``(K, ...)`` masks; layers left out keep the variant's mask.
      values: layer path to ``(K, ...)`` replacement values; layers left out keep the variant's values
        (``(K, batch, positions, d)``: K activation patches, per example).
      shifts: layer path to ``(K, ...)`` additive shifts (steering vectors, see :func:`steer`).
      batch_size: variants per ``lax.map`` step (bounds memory); ``None``: all in one ``jax.vmap``;
        ``"auto"`` (default): one vmap on GPU/TPU, steps of :data:`jneuron.config.CPU_MASKS_PER_STEP` on CPU.

    Returns:
      ``fn``'s outputs stacked over the K variants.
    """
    wrappers = masked_layers(variant)
    masks, values, shifts = dict(masks or {}), dict(values or {}), dict(shifts or {})
    if not masks and not values and not shifts:
        raise JNeuronError("sweep: give masks, values and/or shifts with a leading axis over the variants")
    counts = {}
    for kind, given in (("masks", masks), ("values", values), ("shifts", shifts)):
        for layer, array in given.items():
            if layer not in wrappers:
                raise JNeuronError(f"sweep: '{layer}' is not a masked layer of the variant; masked: {list(wrappers)}")
            array = jnp.asarray(array)
            if array.ndim == 0:
                raise JNeuronError(f"sweep: {kind}['{layer}'] needs a leading axis over the variants")
            counts[f"{kind}['{layer}']"] = array.shape[0]
            given[layer] = array
    if len(set(counts.values())) != 1:
        raise JNeuronError(f"sweep: every mask and value needs the same number of variants, got {counts}")
    batch_size = variants_per_step(batch_size)
    count = next(iter(counts.values()))
    stacked = nnx.clone(variant)
    for layer, wrapper in masked_layers(stacked).items():
        for variable, given in ((wrapper.mask, masks), (wrapper.value, values), (wrapper.shift, shifts)):
            current = variable[...]
            variable.set_value(given.get(layer, jnp.broadcast_to(current, (count, *current.shape))))
    graphdef, mask_state, value_state, shift_state, rest = nnx.split(
        stacked, AblationMask, AblationValue, AblationShift, ...)
    return _sweep(graphdef, fn, batch_size, mask_state, value_state, shift_state, rest, args)



def balance_bias(model: nnx.Module, layer: str, next_layer: str, removed: Sequence[int], means) -> nnx.Module:
    """A copy of ``model`` with units ``removed`` of ``layer`` cut and their mean contribution in ``next_layer``.

    ``next_layer`` must be a dense layer (``kernel (inputs, outputs)``, ``bias``) reading ``layer``'s output
    directly: the fold is ``b_k += sum_{j removed} w_jk * E[t_j]`` and ``w_jk = 0``. On such a layer it
    equals mean ablation (``jneuron.flax.ablate(..., mode="mean")``) exactly up to float rounding.

    >>> import numpy as np
    >>> from jneuron.models import MLP
    >>> model = MLP(8, (4, 4), 3, rngs=nnx.Rngs(0))
    >>> folded = balance_bias(model, "layers/0", "layers/1", [0, 2], np.ones(4, np.float32))
    >>> kernel = np.asarray(folded.layers[1].kernel[...])      # rows 0 and 2 (the removed inputs) are cut
    >>> bool(kernel[[0, 2]].any()), bool(kernel[1].any())
    (False, True)
    """
    variant = nnx.clone(model)
    dense = paths.find(variant, next_layer)
    if not (hasattr(dense, "kernel") and hasattr(dense, "bias") and dense.bias is not None):
        raise JNeuronError(f"'{next_layer}' is not a dense layer with a kernel and a bias")
    kernel = dense.kernel[...]
    removed = np.asarray(removed, np.int64)
    means = np.asarray(means)
    if kernel.ndim != 2 or means.shape != (kernel.shape[0],):
        raise JNeuronError(f"'{next_layer}' reads {kernel.shape[0]} inputs but means has shape {means.shape}")
    if removed.size and (removed.min() < 0 or removed.max() >= kernel.shape[0]):
        raise JNeuronError(f"removed units must lie in 0..{kernel.shape[0] - 1} (the width of '{layer}')")
    keep = np.ones(kernel.shape[0], np.float32)
    keep[removed] = 0
    folded = jnp.dot(jnp.asarray((1 - keep) * means, kernel.dtype), kernel, precision=HIGHEST)
    dense.bias.set_value(dense.bias[...] + folded)
    dense.kernel.set_value(kernel * jnp.asarray(keep, kernel.dtype)[:, None])
    return variant
