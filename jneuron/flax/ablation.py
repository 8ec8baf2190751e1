"""Ablate neurons of a Flax NNX model by masking layer outputs; evaluate many masks in one compiled call.

:func:`ablate` returns a copy of the model whose named layers are wrapped in :class:`Masked`:
``output * mask + value * (1 - mask)`` per neuron, where ``value`` is 0 (``mode="zero"``), the neuron's
mean output (``"mean"``, bias balancing: for a dense next layer this equals folding ``w_jk * E[t_j]`` into
its bias) or given values (``"value"``). Masks and values are data (``nnx.Variable`` leaves), not
structure, so :func:`sweep` evaluates K of them with one ``jax.vmap`` (or ``lax.map`` in batches) over a
single compiled program.

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
from jneuron.flax.capturing import capture

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


class Masked(nnx.Module):
    """Wraps a submodule: ``output * mask + value * (1 - mask)``.

    ``mask`` and ``value`` broadcast against the output's trailing axes: shape ``(d,)`` acts at every
    position, ``(time, d)`` or ``(h, w, c)`` at chosen positions.
    """

    def __init__(self, inner: nnx.Module, layer: str, mask, value):
        self.inner = inner
        self.layer = layer
        self.mask = AblationMask(jnp.asarray(mask))
        self.value = AblationValue(jnp.asarray(value))

    def __call__(self, *args, **kwargs):
        return mask_output(self.layer, self.inner(*args, **kwargs), self.mask[...], self.value[...])


def mask_output(layer: str, output, mask: jax.Array, value: jax.Array) -> jax.Array:
    """``output * mask + value * (1 - mask)``, with ``mask`` and ``value`` checked against one sample's shape."""
    if not isinstance(output, jax.Array) or output.ndim < 1:
        raise JNeuronError(f"layer '{layer}': can only mask an array output, got {type(output).__name__}")
    for name, array in (("mask", mask), ("value", value)):
        _check_fits(layer, name, array.shape, output.shape[1:])
    mask = jnp.broadcast_to(mask.astype(output.dtype), output.shape)
    value = jnp.broadcast_to(value.astype(output.dtype), output.shape)
    return output * mask + value * (1 - mask)


def _check_fits(layer: str, what: str, shape: tuple, sample_shape: tuple) -> None:
    """A mask/value fits if its shape is a suffix of one sample's output shape (broadcasting 1s allowed)."""
    if len(shape) == 0:
        return
    if shape[-1] not in (1, sample_shape[-1]):
        raise JNeuronError(f"layer '{layer}': {what} has {shape[-1]} neurons; the layer has {sample_shape[-1]}")
    if len(shape) > len(sample_shape) or any(
            s not in (1, o) for s, o in zip(shape[::-1], sample_shape[::-1])):
        raise JNeuronError(f"layer '{layer}': {what} of shape {shape} does not fit the layer's output "
                           f"shape per sample {sample_shape} (expected (d,) or trailing axes of it)")


def layer_means(model, inputs, layers, *, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Each layer's mean output per neuron over all samples and positions (the values of ``mode="mean"``).

    ``model`` is a Flax NNX module or a Linen model bound by :class:`jneuron.flax.linen.Linen`; the mean is
    taken in float64 and given in the layer's dtype.
    """
    if isinstance(model, nnx.Module):
        captured = capture(model, inputs, layers, batch_size=batch_size)
    else:
        from jneuron.flax import linen  # linen builds on this module

        if not isinstance(model, linen.Linen):
            raise JNeuronError(f"layer_means needs a Flax NNX module or jneuron.flax.linen.Linen(module, variables), "
                               f"got {type(model).__name__}")
        captured = linen.capture(model, inputs, layers, batch_size=batch_size)
    return {layer: captured[layer].astype(np.float64).mean(axis=0).astype(captured[layer].dtype)
            for layer in captured.layers}


def ablate(model: nnx.Module, masks: Mapping[str, object], mode: str = "zero", *,
           values: Mapping[str, object] | None = None, inputs=None,
           batch_size: int | None = None) -> nnx.Module:
    """A copy of ``model`` whose named layers' outputs are masked (the model itself is unchanged).

    Args:
      model: a Flax NNX module.
      masks: layer path to mask, shape ``(d,)`` (or trailing output axes, for chosen positions);
        1 keeps a neuron, 0 replaces it.
      mode: ``"zero"`` (replace by 0), ``"mean"`` (by the neuron's mean output, from ``values`` or
        computed on ``inputs``) or ``"value"`` (by ``values``).
      values: layer path to replacement values (``"mean"``: precomputed means; ``"value"``: required).
      inputs: data for the means of ``mode="mean"`` when ``values`` is not given.
      batch_size: samples per forward pass when computing means.
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
        values = layer_means(model, inputs, layers, batch_size=batch_size)
    missing = [layer for layer in layers if layer not in values]
    if missing:
        raise JNeuronError(f"mode='{mode}' needs values for every masked layer; missing {missing}")
    variant = nnx.clone(model)
    for layer in layers:
        paths.replace(variant, layer, Masked(paths.find(variant, layer), layer, masks[layer], values[layer]))
    return variant


def masked_layers(variant: nnx.Module) -> dict[str, Masked]:
    """The :class:`Masked` wrappers of an ablated model, by layer path."""
    return {path: module for path, module in paths.module_paths(variant).items() if isinstance(module, Masked)}


@functools.partial(jax.jit, static_argnames=("graphdef", "fn", "batch_size"))
def _sweep(graphdef, fn, batch_size, masks, values, rest, args):
    def one(variant_state):
        return fn(nnx.merge(graphdef, *variant_state, rest), *args)

    if batch_size is None:
        return jax.vmap(one)((masks, values))
    return jax.lax.map(one, (masks, values), batch_size=batch_size)


def sweep(variant: nnx.Module, fn: Callable, *args, masks: Mapping[str, object] | None = None,
          values: Mapping[str, object] | None = None, batch_size: int | str | None = "auto"):
    """Evaluate ``fn(variant_k, *args)`` for K masks and/or values in one compiled call.

    Args:
      variant: a model returned by :func:`ablate` (its masks and values are the defaults).
      fn: a jit-able function of the model variant and ``args``; keep the same function object across
        calls (a module-level function) so that new masks reuse the compiled program.
      *args: arrays passed to ``fn`` (data, labels): arguments, not constants, so they do not recompile.
      masks: layer path to ``(K, ...)`` masks; layers left out keep the variant's mask.
      values: layer path to ``(K, ...)`` replacement values; layers left out keep the variant's values.
      batch_size: variants per ``lax.map`` step (bounds memory); ``None``: all in one ``jax.vmap``;
        ``"auto"`` (default): one vmap on GPU/TPU, steps of :data:`jneuron.config.CPU_MASKS_PER_STEP` on CPU.

    Returns:
      ``fn``'s outputs stacked over the K variants.
    """
    wrappers = masked_layers(variant)
    masks, values = dict(masks or {}), dict(values or {})
    if not masks and not values:
        raise JNeuronError("sweep: give masks and/or values with a leading axis over the variants")
    counts = {}
    for kind, given in (("masks", masks), ("values", values)):
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
        for variable, given in ((wrapper.mask, masks), (wrapper.value, values)):
            current = variable[...]
            variable.set_value(given.get(layer, jnp.broadcast_to(current, (count, *current.shape))))
    graphdef, mask_state, value_state, rest = nnx.split(stacked, AblationMask, AblationValue, ...)
    return _sweep(graphdef, fn, batch_size, mask_state, value_state, rest, args)


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
