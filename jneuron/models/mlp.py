"""Small Flax NNX models and a compiled trainer, used by the demos and studies.

>>> from flax import nnx
>>> model = MLP(64, (16, 8), 10, rngs=nnx.Rngs(0))
>>> import jax.numpy as jnp
>>> model(jnp.ones((2, 64))).shape
(2, 10)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


class Dense(nnx.Linear):
    """``nnx.Linear`` followed by an activation, so the layer's output is the hidden neurons' activation."""

    def __init__(self, inputs: int, outputs: int, *, rngs: nnx.Rngs,
                 activation: Callable[[jax.Array], jax.Array] = nnx.relu):
        super().__init__(inputs, outputs, rngs=rngs)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.activation(super().__call__(x))


class MLP(nnx.Module):
    """A feed-forward classifier; hidden layers are ``layers/0``, ``layers/1``, ... (:class:`Dense`: Linear +
    activation, so a layer's output is its neurons' post-activation values), then the linear ``head``."""

    def __init__(self, inputs: int, hidden: Sequence[int], outputs: int, *, rngs: nnx.Rngs,
                 activation: Callable[[jax.Array], jax.Array] = nnx.relu):
        sizes = (inputs, *hidden)
        self.layers = nnx.List([Dense(a, b, rngs=rngs, activation=activation)
                                for a, b in zip(sizes[:-1], sizes[1:])])
        self.head = nnx.Linear(sizes[-1], outputs, rngs=rngs)
        self.activation = activation

    def hidden(self, x: jax.Array) -> list[jax.Array]:
        """The activations of every hidden layer, in order."""
        outputs = []
        for layer in self.layers:
            x = layer(x)
            outputs.append(x)
        return outputs

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.hidden(x)[-1])


def train_classifier(model: nnx.Module, inputs: np.ndarray, labels: np.ndarray, *, epochs: int = 20,
                     batch_size: int = 32, learning_rate: float = 1e-3, weight_decay: float = 0.0,
                     seed: int = 0) -> nnx.Module:
    """Train with Adam on cross-entropy (+ optional L2), shuffled minibatches; each epoch is one ``lax.scan``.

    Non-parameter state (e.g. BatchNorm running statistics) is carried through training. Returns the
    trained model (a new object; the argument is left as it was).
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer = optax.adam(learning_rate)
    batches = len(labels) // batch_size
    x = jnp.asarray(inputs, jnp.float32)
    y = jnp.asarray(labels, jnp.int32)

    def loss_fn(params, rest, xb, yb):
        step_model = nnx.merge(graphdef, params, rest, copy=True)
        logits = step_model(xb)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        l2 = sum(jnp.sum(p * p) for p in jax.tree.leaves(params))
        return loss + weight_decay * l2, nnx.state(step_model, nnx.Not(nnx.Param))

    @jax.jit
    def epoch(carry, key):
        order = jax.random.permutation(key, len(labels))[: batches * batch_size].reshape(batches, batch_size)

        def step(carry, index):
            params, rest, opt_state = carry
            grads, rest = jax.grad(loss_fn, has_aux=True)(params, rest, x[index], y[index])
            with jax.numpy_dtype_promotion("standard"):  # optax's bias correction is float ** int
                updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), rest, opt_state), None

        return jax.lax.scan(step, carry, order)[0]

    carry = (params, rest, optimizer.init(params))
    for key in jax.random.split(jax.random.key(seed), epochs):
        carry = epoch(carry, key)
    return nnx.merge(graphdef, carry[0], carry[1], copy=True)


def accuracy(model: nnx.Module, inputs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of inputs whose arg-max logit is the label."""
    predictions = jnp.argmax(model(jnp.asarray(inputs, jnp.float32)), axis=-1)
    return float(jnp.mean(predictions == jnp.asarray(labels)))
