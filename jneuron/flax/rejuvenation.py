"""Neural Rejuvenation (Qiao et al., CVPR 2019) for NNX models with BatchNorm.

A neuron is dead when the absolute BatchNorm scale ``|gamma|`` is below ``threshold`` times the largest of its
layer. An L1 penalty on the scales (:func:`bn_scale_l1`) drives unneeded neurons there; :func:`utilization`
counts the weights still in use; :func:`rejuvenate` revives dead neurons (He init, gamma 0.5, beta 0),
rescales weak survivors with compensation in the next layer, and can reallocate widths across layers.

:func:`utilization` and :func:`rejuvenate` work on chain models like :class:`BNMLP`: a sequence ``blocks`` of
``Linear -> BatchNorm -> ReLU`` (attributes ``linear``, ``norm``) followed by a ``head`` Linear.

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> model = BNMLP(8, (6, 4), 3, rngs=nnx.Rngs(0))
>>> model.blocks[0].norm.scale.set_value(jnp.array([1.0, 0.001, 1.0, 1.0, 1.0, 1.0]))
>>> dead_neurons(model)["blocks/0/norm"].tolist()
[False, True, False, False, False, False]
>>> utilization(model)  # (8*5 + 5*4 + 4*3) / (8*6 + 6*4 + 4*3)
0.8571428571428571
>>> fresh = rejuvenate(model, jax.random.key(0))
>>> round(float(fresh.blocks[0].norm.scale[...][1]), 2), utilization(fresh)
(0.5, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jneuron.config import HIGHEST
from jneuron.errors import JNeuronError


class BNBlock(nnx.Module):
    """``relu(BatchNorm(x W))`` (no Linear bias: BatchNorm's shift replaces it)."""

    def __init__(self, inputs: int, outputs: int, *, rngs: nnx.Rngs, momentum: float = 0.9,
                 epsilon: float = 1e-5):
        self.linear = nnx.Linear(inputs, outputs, use_bias=False, precision=HIGHEST,
                                 kernel_init=nnx.initializers.he_normal(), rngs=rngs)
        self.norm = nnx.BatchNorm(outputs, momentum=momentum, epsilon=epsilon, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.norm(self.linear(x)))


class BNMLP(nnx.Module):
    """A BatchNorm MLP classifier: ``blocks/0``, ``blocks/1``, ... then ``head``."""

    def __init__(self, inputs: int, hidden: Sequence[int], outputs: int, *, rngs: nnx.Rngs,
                 momentum: float = 0.9, epsilon: float = 1e-5):
        sizes = (inputs, *hidden)
        self.blocks = nnx.List([BNBlock(a, b, rngs=rngs, momentum=momentum, epsilon=epsilon)
                                for a, b in zip(sizes[:-1], sizes[1:])])
        self.head = nnx.Linear(sizes[-1], outputs, precision=HIGHEST, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _check_threshold(threshold: float) -> None:
    if not 0 <= threshold < 1:
        raise JNeuronError(f"threshold must be in [0, 1) (a fraction of the layer's largest |gamma|), got {threshold}")


def _dead(scale: jax.Array, threshold: float) -> np.ndarray:
    magnitude = np.abs(np.asarray(scale, np.float64))
    return magnitude < threshold * magnitude.max(initial=0.0)


def _batchnorms(model: nnx.Module) -> dict[str, nnx.BatchNorm]:
    norms = {"/".join(map(str, path)): node for path, node in nnx.iter_graph(model)
             if isinstance(node, nnx.BatchNorm)}
    if not norms:
        raise JNeuronError(f"{type(model).__name__} has no BatchNorm layer; Neural Rejuvenation reads BatchNorm scales")
    return norms


def dead_neurons(model: nnx.Module, threshold: float = 0.01) -> dict[str, np.ndarray]:
    """Per BatchNorm layer (by path): which neurons are dead, ``|gamma| < threshold * max |gamma|``."""
    _check_threshold(threshold)
    norms = _batchnorms(model)
    for path, norm in norms.items():
        if norm.scale is None:
            raise JNeuronError(f"BatchNorm {path} has no scale (use_scale=False); its neurons cannot be judged")
    return {path: _dead(norm.scale[...], threshold) for path, norm in norms.items()}


def _chain(model: nnx.Module) -> tuple[list, nnx.Linear]:
    blocks, head = getattr(model, "blocks", None), getattr(model, "head", None)
    if blocks is None or head is None or not all(hasattr(b, "linear") and hasattr(b, "norm") for b in blocks):
        raise JNeuronError(f"{type(model).__name__} is not a chain model: expected .blocks (each with .linear "
                           "and .norm) and a .head Linear, like jneuron.flax.BNMLP")
    return list(blocks), head


def _live_masks(model: nnx.Module, threshold: float) -> list[np.ndarray]:
    """Live masks of the inputs, every block and the head's outputs."""
    blocks, head = _chain(model)
    masks = [np.ones(blocks[0].linear.kernel.get_value().shape[0], bool)]
    masks += [~_dead(block.norm.scale[...], threshold) for block in blocks]
    return masks + [np.ones(head.kernel.get_value().shape[1], bool)]


def utilization(model: nnx.Module, threshold: float = 0.01) -> float:
    """Live weights over all weights of the chain's Linear kernels.

    A weight is live when both the neuron it reads (an input, or a live neuron of the previous block) and
    the neuron it feeds (a live neuron, or a head output) are live.
    """
    _check_threshold(threshold)
    masks = _live_masks(model, threshold)
    live = sum(int(a.sum()) * int(b.sum()) for a, b in zip(masks[:-1], masks[1:]))
    total = sum(len(a) * len(b) for a, b in zip(masks[:-1], masks[1:]))
    return live / total


def bn_scale_mask(model: nnx.Module):
    """A boolean pytree over ``nnx.state(model, nnx.Param)``: True at BatchNorm scales."""
    scales = {path + "/scale" for path in _batchnorms(model)}

    def is_scale(keypath, _):
        names = [k.key if isinstance(k, jax.tree_util.DictKey) else k.idx for k in keypath
                 if isinstance(k, (jax.tree_util.DictKey, jax.tree_util.SequenceKey))]
        return "/".join(map(str, names)) in scales

    return jax.tree_util.tree_map_with_path(is_scale, nnx.state(model, nnx.Param))


def bn_scale_l1(model: nnx.Module, strength: float = 1.5e-4) -> optax.GradientTransformation:
    """Adds the L1 subgradient ``strength * sign(gamma)`` to the gradients of every BatchNorm scale.

    Chain it before the optimizer, ``optax.chain(bn_scale_l1(model), optax.adam(1e-3))``, and pass
    ``nnx.state(model, nnx.Param)`` as ``params`` to ``update``.
    """
    if strength < 0:
        raise JNeuronError(f"strength must be non-negative, got {strength}")

    def update(updates, state, params=None):
        if params is None:
            raise JNeuronError("bn_scale_l1 needs params: call update(grads, state, params)")
        return jax.tree.map(lambda u, p: u + strength * jnp.sign(p).astype(u.dtype), updates, params), state

    return optax.masked(optax.GradientTransformation(lambda params: optax.EmptyState(), update),
                        bn_scale_mask(model))


def _param_count(inputs: int, widths: Sequence[int], outputs: int) -> int:
    """Parameters of a :class:`BNMLP`: kernels, BatchNorm scale and shift, head bias."""
    sizes = (inputs, *widths)
    return sum(a * b + 2 * b for a, b in zip(sizes[:-1], sizes[1:])) + sizes[-1] * outputs + outputs


def reallocated_widths(live: Sequence[int], inputs: int, outputs: int, budget: int) -> list[int]:
    """Widths ``max(1, floor(rho * live_l))`` for the largest ``rho`` whose :class:`BNMLP` fits ``budget``."""
    live = [max(1, int(n)) for n in live]

    def widths(rho: float) -> list[int]:
        return [max(1, int(np.floor(rho * n))) for n in live]

    lo, hi = 0.0, 1.0
    while _param_count(inputs, widths(hi), outputs) <= budget:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _param_count(inputs, widths(mid), outputs) <= budget else (lo, mid)
    return widths(lo)


def rejuvenate(model: nnx.Module, key: jax.Array, *, threshold: float = 0.01, target: float | None = 0.5,
               gamma: float = 0.5, reallocate: bool = False) -> nnx.Module:
    """Revive the dead neurons of a chain model; returns a new model (the argument is untouched).

    Dead neurons get fresh He-initialized incoming and outgoing weights, BatchNorm scale ``gamma``, shift 0
    and running statistics (0, 1). A live neuron with ``|scale| < target`` is scaled up to ``target``
    (scale and shift times ``s``) and the next layer's weights from it are divided by ``s``: ReLU is
    positively homogeneous, so this part keeps the function exactly. With ``reallocate``, widths become
    proportional to each layer's live count under the model's parameter budget (a new :class:`BNMLP`:
    survivors first, then new neurons).

    Args:
      model: a chain model (see the module docstring) with ReLU blocks.
      key: randomness for the new weights.
      threshold: dead when ``|gamma| < threshold * max |gamma|`` of the layer.
      target: smallest ``|gamma|`` a survivor keeps, or ``None`` for no rescaling.
      gamma: BatchNorm scale of revived neurons.
      reallocate: redistribute widths across layers under the same parameter count.
    """
    _check_threshold(threshold)
    if target is not None and target <= 0:
        raise JNeuronError(f"target must be positive or None, got {target}")
    blocks, head = _chain(model)
    masks = _live_masks(model, threshold)
    widths = [len(m) for m in masks[1:-1]]
    inputs, outputs = len(masks[0]), len(masks[-1])
    if reallocate:
        budget = _param_count(inputs, widths, outputs)
        new_widths = reallocated_widths([int(m.sum()) for m in masks[1:-1]], inputs, outputs, budget)
        sources = [np.concatenate([np.flatnonzero(m), np.full(max(0, w - int(m.sum())), -1)])[:w]
                   for m, w in zip(masks[1:-1], new_widths)]
        first = blocks[0]
        if any(block.linear.bias is not None for block in blocks):
            raise JNeuronError("reallocate builds a BNMLP, whose block Linears have no bias; fold the biases "
                               "into the BatchNorm running means first")
        result = nnx.eval_shape(lambda: BNMLP(inputs, new_widths, outputs, rngs=nnx.Rngs(0),
                                              momentum=first.norm.momentum, epsilon=first.norm.epsilon))
    else:
        sources = [np.where(m, np.arange(len(m)), -1) for m in masks[1:-1]]
        result = nnx.clone(model)
    sources = [np.arange(inputs), *sources, np.arange(outputs)]
    # per-neuron factor s of every block (1 for revived ones): scale and shift times s, next rows over s
    factors = []
    for block, source in zip(blocks, sources[1:-1]):
        scale = np.asarray(block.norm.scale[...], np.float64)[np.maximum(source, 0)]
        grow = np.ones_like(scale)
        if target is not None:
            weak = (source >= 0) & (np.abs(scale) < target)
            grow[weak] = target / np.abs(scale[weak])
        factors.append(grow)
    ones = [np.ones(inputs)]
    generator = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    layers = [(b.linear, r.linear) for b, r in zip(blocks, _chain(result)[0])] + [(head, _chain(result)[1])]
    for i, (old, new) in enumerate(layers):
        src_in, src_out = sources[i], sources[i + 1]
        kernel = np.asarray(old.kernel[...])
        fresh = generator.standard_normal((len(src_in), len(src_out))) * np.sqrt(2.0 / len(src_in))
        copied = kernel[np.maximum(src_in, 0)][:, np.maximum(src_out, 0)] / (ones + factors)[i][:, None]
        keep = (src_in >= 0)[:, None] & (src_out >= 0)[None, :]
        new.kernel.set_value(jnp.asarray(np.where(keep, copied, fresh), kernel.dtype))
        if old.bias is not None and new.bias is not None:
            bias = np.asarray(old.bias[...])
            new.bias.set_value(jnp.asarray(np.where(src_out >= 0, bias[np.maximum(src_out, 0)], 0), bias.dtype))
        elif new.bias is not None:
            new.bias.set_value(jnp.zeros(len(src_out), kernel.dtype))
    for block, new, source, factor in zip(blocks, _chain(result)[0], sources[1:-1], factors):
        pick = np.maximum(source, 0)
        alive = source >= 0
        for name, revived, scaled in (("scale", gamma, True), ("bias", 0.0, True), ("mean", 0.0, False),
                                      ("var", 1.0, False)):
            old, target_variable = getattr(block.norm, name), getattr(new.norm, name)
            if old is None or target_variable is None:
                continue
            values = np.asarray(old[...], np.float64)[pick] * (factor if scaled else 1.0)
            target_variable.set_value(jnp.asarray(np.where(alive, values, revived), old[...].dtype))
    return result


class SRLinear(nnx.Module):
    """The mixed layer between survived (S) and rejuvenated (R) neurons with cross-attention gating.

    ``O_S = W_SS I_S + 2 sigmoid(W_SS I_S) * (W_RS I_R)`` and ``O_R = W_RR I_R + 2 sigmoid(W_RR I_R) *
    (W_SR I_S)``: each part's own response gates what the other part sends it (a gate of 1 at zero).
    Kernels are ``(inputs, outputs)``: ``ss`` S->S, ``rs`` R->S, ``sr`` S->R, ``rr`` R->R.
    """

    def __init__(self, in_s: int, in_r: int, out_s: int, out_r: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.he_normal()
        self.ss = nnx.Param(init(rngs.params(), (in_s, out_s)))
        self.rs = nnx.Param(init(rngs.params(), (in_r, out_s)))
        self.sr = nnx.Param(init(rngs.params(), (in_s, out_r)))
        self.rr = nnx.Param(init(rngs.params(), (in_r, out_r)))

    def __call__(self, i_s: jax.Array, i_r: jax.Array) -> tuple[jax.Array, jax.Array]:
        own_s = jnp.matmul(i_s, self.ss[...], precision=HIGHEST)
        own_r = jnp.matmul(i_r, self.rr[...], precision=HIGHEST)
        cross_s = jnp.matmul(i_r, self.rs[...], precision=HIGHEST)
        cross_r = jnp.matmul(i_s, self.sr[...], precision=HIGHEST)
        return own_s + 2 * jax.nn.sigmoid(own_s) * cross_s, own_r + 2 * jax.nn.sigmoid(own_r) * cross_r
