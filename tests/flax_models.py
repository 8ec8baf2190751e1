"""Small non-MLP models for the adapter tests: a transformer-style encoder and a CNN (Flax NNX); and the error
scales their tests bound rounding with (see ``tests/tolerance.py``)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jneuron.models import Dense

HIGHEST = jax.lax.Precision.HIGHEST


class FeedForward(nnx.Module):
    def __init__(self, d: int, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = Dense(d, hidden, rngs=rngs, activation=nnx.gelu)
        self.out = nnx.Linear(hidden, d, rngs=rngs, precision=HIGHEST)

    def __call__(self, x):
        return self.out(self.hidden(x))


class Block(nnx.Module):
    def __init__(self, d: int, heads: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(d, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(heads, d, decode=False, precision=HIGHEST, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d, rngs=rngs)
        self.mlp = FeedForward(d, 2 * d, rngs=rngs)

    def __call__(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Encoder(nnx.Module):
    """Token ids ``(batch, time)`` -> logits ``(batch, time, classes)``; blocks at ``encoder/layers/i``."""

    def __init__(self, vocab: int, d: int, blocks: int, classes: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.encoder = nnx.Dict(layers=nnx.List([Block(d, 2, rngs=rngs) for _ in range(blocks)]))
        self.head = nnx.Linear(d, classes, rngs=rngs, precision=HIGHEST)

    def __call__(self, tokens):
        x = self.embed(tokens)
        for block in self.encoder["layers"]:
            x = block(x)
        return self.head(x)


class CNN(nnx.Module):
    """Images ``(batch, h, w, 1)`` -> logits; convolutions at ``convs/0``, ``convs/1``."""

    def __init__(self, classes: int, *, rngs: nnx.Rngs):
        self.convs = nnx.List([nnx.Conv(1, 4, (3, 3), rngs=rngs, precision=HIGHEST),
                               nnx.Conv(4, 6, (3, 3), strides=2, rngs=rngs, precision=HIGHEST)])
        self.head = nnx.Linear(6, classes, rngs=rngs, precision=HIGHEST)

    def __call__(self, images):
        x = images
        for conv in self.convs:
            x = nnx.relu(conv(x))
        return self.head(jnp.mean(x, axis=(1, 2)))


class LinenDense(nn.Dense):
    """Linen twin of :class:`jneuron.models.Dense` (a subclass whose ``__call__`` calls the parent's)."""

    activation: object = nn.relu

    def __call__(self, x):
        return self.activation(super().__call__(x))


class LinenMLP(nn.Module):
    """Linen twin of :class:`jneuron.models.MLP`: hidden layers ``layers_0``, ``layers_1``, head ``head``."""

    hidden: tuple
    outputs: int

    def setup(self):
        self.layers = [LinenDense(h, precision=HIGHEST) for h in self.hidden]
        self.head = nn.Dense(self.outputs, precision=HIGHEST)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def linen_twin(model):
    """A LinenMLP with the same parameters as an NNX ``jneuron.models.MLP``, as a ``jnf.Linen``."""
    from jneuron.flax import Linen

    params = {f"layers_{i}": {"kernel": layer.kernel[...], "bias": layer.bias[...]}
              for i, layer in enumerate(model.layers)}
    params["head"] = {"kernel": model.head.kernel[...], "bias": model.head.bias[...]}
    return Linen(LinenMLP(tuple(layer.out_features for layer in model.layers), model.head.out_features),
                 {"params": params})


# --- Error scales: what a forward pass's rounding is measured against -------------------------------------------

# Lipschitz constants of the activations: a perturbation of a pre-activation reaches the output at most this much
# (others count as 1, and are evaluated as given).
_LIPSCHITZ = {jax.nn.relu: 1.0, jnp.tanh: 1.0, jax.nn.sigmoid: 0.25, jax.nn.gelu: 1.13}
_NUMPY = {jax.nn.relu: lambda z: np.maximum(z, 0.0), jnp.tanh: np.tanh,
          jax.nn.sigmoid: lambda z: 1 / (1 + np.exp(-z)), None: lambda z: z}


def dense_chain(model) -> list:
    """``(kernel, bias, activation)`` of a :class:`jneuron.models.MLP`'s hidden layers and head, in float64."""
    layers = [*model.layers, model.head]
    return [(np.asarray(layer.kernel[...], np.float64), np.asarray(layer.bias[...], np.float64),
             getattr(layer, "activation", None)) for layer in layers]


def forward_error_scale(chain, x, replace=None):
    """A float64 forward pass through dense layers and its running error scale.

    Returns ``(outputs, scale)``: a float computation of the same pass, whose longest dot product is the largest
    fan-in ``n``, is off by at most ``tolerance(n) * scale`` per output (Higham's running error bound). Layer
    ``l`` adds its own rounding, ``sum_j |w_jk h_j| + |b_k|``, to the error it receives through ``|W|`` from the
    layers before; the activation passes it on at most its Lipschitz constant times and adds a rounding of its
    own value. So the depth factor is not guessed: every layer's rounding is carried to the output at the size
    the weights actually amplify it by.

    ``replace(i, h, e)`` edits layer ``i``'s post-activation output ``h`` and its error scale ``e`` (ablation:
    a removed neuron outputs 0 exactly, or a mean whose rounding the caller states).
    """
    h = np.asarray(x, np.float64)
    e = np.zeros_like(h)
    for i, (w, b, activation) in enumerate(chain):
        z = h @ w + b
        e = _LIPSCHITZ.get(activation, 1.0) * (np.abs(h) @ np.abs(w) + np.abs(b) + e @ np.abs(w))
        h = _NUMPY[activation](z) if activation in _NUMPY else np.asarray(activation(z), np.float64)
        e = e + np.abs(h)
        if replace is not None and i < len(chain) - 1:
            h, e = replace(i, h, e)
    return h, e


def near_ties(logits, margin) -> np.ndarray:
    """Rows whose two largest logits are within ``margin`` (per row or scalar): rounding may flip their arg-max,
    so an accuracy computed by two correct float passes can differ by one sample per such row."""
    top = np.sort(np.asarray(logits, np.float64), axis=-1)
    return (top[..., -1] - top[..., -2]) <= np.asarray(margin)


def abs_model(model):
    """A copy of ``model`` with every parameter replaced by its absolute value.

    On ``|x|`` a ReLU network of such layers computes, layer by layer, ``sum |w x| + |b|`` propagated through
    ``|W|``: the scale every rounding of the network is relative to (ReLU passes non-negative values unchanged,
    a mean over positions is a sum with positive weights).
    """
    twin = nnx.clone(model)
    graphdef, params, rest = nnx.split(twin, nnx.Param, ...)
    return nnx.merge(graphdef, jax.tree.map(jnp.abs, params), rest)


def cnn_error_scale(model: CNN, images) -> tuple[int, np.ndarray]:
    """``(terms, scale)`` of a :class:`CNN`'s logits.

    terms: the roundings in sequence (each convolution's 3x3 fan-in, the positions averaged, the head's
    fan-in). Every rounding reaches the logits through non-negative multiples no larger than the abs model's
    (:func:`abs_model`), so, as in :func:`encoder_error_scale`, the abs model's logits bound its weight and
    ``tolerance(terms) * scale`` bounds the error.
    """
    x = jnp.asarray(images)
    terms = 0
    for conv in model.convs:
        terms += int(np.prod(conv.kernel[...].shape[:-1]))
        x = conv(x)
    terms += int(np.prod(x.shape[1:-1])) + model.head.kernel[...].shape[0]
    return terms, np.asarray(abs_model(model)(jnp.abs(jnp.asarray(images))), np.float64)


def encoder_error_scale(model: Encoder, tokens) -> tuple[int, float, float]:
    """``(terms, condition, scale)`` for the logits (or any activation) of an :class:`Encoder` on ``tokens``.

    The first-order error of the logits is a sum of every rounding on the way, each weighted by how much the
    rest of the network carries it; Higham & Mary's argument for one dot product (``tests/tolerance.py``) holds
    for that sum as well, with ``terms`` the number of roundings and ``scale`` a bound on their weights.

    - terms: the roundings in sequence. Per block: the two LayerNorms' mean and variance (4 sums over d), the
      query/key/value projection (d), the scores (d / heads), the softmax's normalizer and the mix (2 sums over
      the positions), the output projection (d), the feed-forward's two layers (d, 2d), and about 10
      elementwise operations (exp, divisions, square root, GELU, residual additions); then the head (d).
    - condition: how much a LayerNorm amplifies a relative error: an input error ``eps * max|x|`` leaves it as
      ``|g| eps max|x| / std`` against an output of size ``|g| max|x - mean| / std``, so by
      ``max|x| / max|x - mean|`` of its input row (at least 1).
    - scale: the largest magnitude along the residual stream, the sublayers' outputs and the logits, which
      every one of those roundings is relative to.
    """
    x = model.embed(jnp.asarray(tokens))
    peaks, gains = [jnp.abs(x).max()], [jnp.ones(())]
    for block in model.encoder["layers"]:
        for norm, sublayer in ((block.norm1, block.attention), (block.norm2, block.mlp)):
            spread = jnp.abs(x - x.mean(axis=-1, keepdims=True)).max(axis=-1)
            gains.append((jnp.abs(x).max(axis=-1) / spread).max())
            normed = norm(x)
            out = sublayer(normed)
            x = x + out
            peaks += [jnp.abs(normed).max(), jnp.abs(out).max(), jnp.abs(x).max()]
    peaks.append(jnp.abs(model.head(x)).max())
    return encoder_terms(model, x.shape[-2]), jnp.stack(gains).max(), jnp.stack(peaks).max()


def encoder_terms(model: Encoder, positions: int) -> int:
    """The ``terms`` of :func:`encoder_error_scale` (from the shapes alone)."""
    d = model.embed.features
    heads = model.encoder["layers"][0].attention.num_heads
    per_block = 4 * d + d + d // heads + 2 * positions + d + d + 2 * d + 10
    return len(model.encoder["layers"]) * per_block + d


@nnx.jit
def encoder_logits_and_scale(model: Encoder, tokens):
    """The logits and :func:`encoder_error_scale`'s condition and scale, in one compiled call (a model's
    eager forward pass compiles each of its many small operations; this compiles once per structure)."""
    _, condition, scale = encoder_error_scale(model, tokens)
    return model(tokens), condition, scale
