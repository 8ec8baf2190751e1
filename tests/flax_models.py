"""Small non-MLP models for the adapter tests: a transformer-style encoder and a CNN (Flax NNX)."""

import jax
import flax.linen as nn
import jax.numpy as jnp
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
