"""A small word-level recurrent language model (LSTM or ON-LSTM) and its compiled trainer.

``WordLM`` embeds the words, runs one recurrent layer over time (``lax.scan``) and reads the next word
out of the hidden state with a linear layer. The readout takes an optional affine ``transform``
``(matrix, offset)`` applied to the hidden units fed to it, ``h @ matrix + offset``: erasing neurons
(zeroing them), erasing directions (:meth:`jneuron.DirectionRanking.erasure`) and controlling neurons
(setting them to a value) all act there, inside the model, while the recurrence runs intact.
:func:`train_word_lms` trains several seeds at once (``vmap`` over the models, ``lax.scan`` over the
batches, optax Adam), so the whole training is one compiled call.

>>> import numpy as np
>>> from flax import nnx
>>> model = WordLM(50, 8, 16, onlstm=True, chunk_size=4, rngs=nnx.Rngs(0))
>>> h, distance = model.hidden_states(np.zeros((2, 5), np.int32))
>>> h.shape, distance.shape, model(np.zeros((2, 5), np.int32)).shape
((2, 5, 16), (2, 5), (2, 5, 50))
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
from jneuron.models.onlstm import ONLSTMCell


class LSTMCell(nnx.Module):
    """A standard LSTM step (gates ``i, f, g, o``), its input projection applied to whole sequences."""

    def __init__(self, in_features: int, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = hidden
        self.input = nnx.Linear(in_features, 4 * hidden, precision=HIGHEST, rngs=rngs)
        self.recurrent = nnx.Linear(hidden, 4 * hidden, use_bias=False, precision=HIGHEST, rngs=rngs)

    def __call__(self, carry: tuple[jax.Array, jax.Array], projected: jax.Array):
        """``(h, c), x W + b -> (h', c'), h'`` (the input already projected by ``self.input``)."""
        h, c = carry
        i, f, g, o = jnp.split(projected + self.recurrent(h), 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h


class WordLM(nnx.Module):
    """Embedding, one LSTM (or ON-LSTM) layer, linear readout to the vocabulary.

    Args:
      vocab: vocabulary size.
      embed: embedding width.
      hidden: recurrent width (the neurons the studies rank).
      onlstm: use an ON-LSTM layer (Shen et al., 2019) instead of an LSTM.
      chunk_size: ON-LSTM neurons per master-gate chunk (``hidden`` must be a multiple).
      rngs: the initialisation's random streams.
    """

    def __init__(self, vocab: int, embed: int, hidden: int, *, onlstm: bool = False, chunk_size: int = 4,
                 rngs: nnx.Rngs):
        self.vocab, self.hidden, self.onlstm = vocab, hidden, onlstm
        self.embed = nnx.Embed(vocab, embed, rngs=rngs)
        self.cell = ONLSTMCell(embed, hidden, chunk_size, rngs=rngs) if onlstm else LSTMCell(embed, hidden, rngs=rngs)
        self.output = nnx.Linear(hidden, vocab, precision=HIGHEST, rngs=rngs)

    def hidden_states(self, tokens) -> tuple[jax.Array, jax.Array | None]:
        """Hidden states ``(batch, time, hidden)`` over ``(batch, time)`` token ids, from a zero state, and
        the ON-LSTM master-forget distances ``(batch, time)`` (None for an LSTM)."""
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2:
            raise JNeuronError(f"expected (batch, time) token ids, got shape {tokens.shape}")
        xs = jnp.swapaxes(self.embed(tokens), 0, 1)
        zeros = jnp.zeros((tokens.shape[0], self.hidden), xs.dtype)
        if self.onlstm:
            graphdef, state = nnx.split(self.cell)
            _, out = jax.lax.scan(lambda carry, x: nnx.merge(graphdef, state)(carry, x), (zeros, zeros), xs)
            return jnp.swapaxes(out.hidden, 0, 1), jnp.swapaxes(out.forget_distance, 0, 1)
        graphdef, state = nnx.split(self.cell)
        _, hs = jax.lax.scan(lambda carry, p: nnx.merge(graphdef, state)(carry, p), (zeros, zeros), self.cell.input(xs))
        return jnp.swapaxes(hs, 0, 1), None

    def readout(self, hidden: jax.Array, transform: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        """Next-word logits from hidden states, after ``h @ matrix + offset`` when ``transform`` is given."""
        if transform is not None:
            matrix, offset = transform
            offset = jnp.asarray(offset)
            offset = offset.reshape((1,) * (hidden.ndim - 1) + offset.shape)  # explicit rank promotion
            hidden = jnp.matmul(hidden, matrix, precision=HIGHEST) + offset
        return self.output(hidden)

    def __call__(self, tokens, transform: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        """Next-word logits ``(batch, time, vocab)``."""
        return self.readout(self.hidden_states(tokens)[0], transform)


def train_word_lms(seeds: Sequence[int], inputs, targets, *, vocab: int, embed: int = 64, hidden: int = 64,
                   onlstm: bool = False, chunk_size: int = 4, epochs: int = 4, batch_size: int = 32,
                   learning_rate: float = 3e-3, clip: float = 1.0) -> list[WordLM]:
    """Train one :class:`WordLM` per seed on the same windows (seeded initialisation and batch order).

    Args:
      seeds: one seed per model.
      inputs, targets: ``(windows, time)`` token ids and next-token ids.
      vocab, embed, hidden, onlstm, chunk_size: the models' shape (see :class:`WordLM`).
      epochs: passes over the windows (each a fresh seeded shuffle; the tail short of a batch is dropped).
      batch_size: windows per step.
      learning_rate: Adam's step size.
      clip: gradients are clipped to this global norm.

    Returns:
      The trained models, in the order of ``seeds``.
    """
    inputs, targets = jnp.asarray(inputs, jnp.int32), jnp.asarray(targets, jnp.int32)
    if inputs.ndim != 2 or inputs.shape != targets.shape:
        raise JNeuronError(f"inputs {inputs.shape} and targets {targets.shape} must be the same (windows, time)")
    batches = inputs.shape[0] // batch_size
    if not seeds or batches < 1 or epochs < 1:
        raise JNeuronError(f"need a seed, at least one batch ({inputs.shape[0]} windows of batch {batch_size}) "
                           f"and one epoch ({epochs})")
    models = [WordLM(vocab, embed, hidden, onlstm=onlstm, chunk_size=chunk_size, rngs=nnx.Rngs(s)) for s in seeds]
    graphdef = nnx.graphdef(models[0])
    params = jax.tree.map(lambda *a: jnp.stack(a), *(nnx.state(m) for m in models))
    optimizer = optax.chain(optax.clip_by_global_norm(clip), optax.adam(learning_rate))

    def order(seed: int) -> jax.Array:
        keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), 1), epochs)
        perms = jax.vmap(lambda k: jax.random.permutation(k, inputs.shape[0])[: batches * batch_size])(keys)
        return perms.reshape(epochs * batches, batch_size)

    orders = jnp.stack([order(s) for s in seeds], axis=1)  # (steps, models, batch)

    def loss(state, index):
        logits = nnx.merge(graphdef, state)(inputs[index])
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets[index]).mean()

    def update(state, opt_state, index):
        grads = jax.grad(loss)(state, index)
        updates, opt_state = optimizer.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state

    @jax.jit
    def fit(params):
        def step(carry, index):
            return jax.vmap(update)(*carry, index), None

        return jax.lax.scan(step, (params, jax.vmap(optimizer.init)(params)), orders)[0][0]

    trained = fit(params)
    return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], trained)) for i in range(len(seeds))]


def perplexity(model: WordLM, inputs, targets) -> float:
    """``exp`` of the mean next-word cross-entropy over ``(windows, time)`` inputs and targets.

    >>> model = WordLM(10, 4, 8, rngs=nnx.Rngs(0))
    >>> 1 < perplexity(model, np.zeros((3, 4), np.int32), np.ones((3, 4), np.int32)) < 100
    True
    """
    logits = model(jnp.asarray(inputs, jnp.int32))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(targets, jnp.int32)).mean()
    return float(np.exp(float(loss)))
