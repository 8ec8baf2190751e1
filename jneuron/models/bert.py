"""A BERT-family encoder (BERT, MiniLM) in Flax NNX, with tap points on the values neuron studies need.

Every value researchers ask for is a named submodule path, so ``jnf.capture``, ``ablate``, ``sweep``,
``control`` and ``conductance`` reach it like any layer:

- ``embeddings``: the embedding output (hidden state 0); ``layers/{i}``: layer ``i``'s output (hidden state
  ``i + 1``), each ``(batch, positions, hidden)``;
- ``layers/{i}/mlp/post``: the MLP neurons after GELU, ``(batch, positions, intermediate)`` (the neurons the
  literature studies); ``layers/{i}/mlp/fc1`` is the same before GELU;
- ``layers/{i}/attention/probs``: attention probabilities ``(batch, heads, queries, keys)``;
- ``layers/{i}/attention/heads``: each head's output before the output projection,
  ``(batch, positions, heads, head_size)``; a mask of shape ``(heads, 1)`` ablates whole heads.

:func:`load` reads a Hugging Face checkpoint folder (``config.json``, ``model.safetensors`` and
``tokenizer.json``; needs the ``lm`` extra: ``safetensors``, ``tokenizers``), and :func:`encode` turns
sentences into a padded batch ``{"input_ids", "attention_mask", "token_type_ids"}`` that the model takes
as keyword arguments: ``model(**batch)``.

>>> import numpy as np
>>> from flax import nnx
>>> config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
...                     intermediate_size=16, max_position_embeddings=16)
>>> model = Bert(config, rngs=nnx.Rngs(0))
>>> ids = np.array([[2, 7, 9, 3], [2, 5, 3, 0]])
>>> model(ids, attention_mask=(ids > 0).astype(np.int32)).shape
(2, 4, 8)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jneuron.errors import JNeuronError
from jneuron.flax.taps import Tap


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The architecture, named as in a Hugging Face ``config.json`` (unknown keys there are ignored)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    @classmethod
    def from_dict(cls, config: dict) -> BertConfig:
        """The fields of ``config`` this model uses; checks the architecture is one it implements."""
        if config.get("model_type", "bert") != "bert":
            raise JNeuronError(f"config.json: model_type '{config['model_type']}' is not a BERT encoder")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise JNeuronError("config.json: only absolute position embeddings are implemented, got "
                               f"'{config['position_embedding_type']}'")
        fields = {f.name for f in dataclasses.fields(cls)}
        made = cls(**{k: v for k, v in config.items() if k in fields})
        if made.hidden_act not in ACTIVATIONS:
            raise JNeuronError(f"config.json: hidden_act '{made.hidden_act}' is not one of {sorted(ACTIVATIONS)}")
        if made.hidden_size % made.num_attention_heads:
            raise JNeuronError(f"config.json: hidden_size {made.hidden_size} is not a multiple of "
                               f"num_attention_heads {made.num_attention_heads}")
        return made


ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # BERT's gelu is the exact (erf) one
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def _linear(inputs: int, outputs: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(inputs, outputs, rngs=rngs, precision=jax.lax.Precision.HIGHEST)


class Embeddings(nnx.Module):
    """Word + position + token-type embeddings, then LayerNorm."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.words = nnx.Embed(config.vocab_size, config.hidden_size, rngs=rngs)
        self.positions = nnx.Embed(config.max_position_embeddings, config.hidden_size, rngs=rngs)
        self.token_types = nnx.Embed(config.type_vocab_size, config.hidden_size, rngs=rngs)
        self.norm = nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, rngs=rngs)

    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        positions = self.positions(jnp.arange(input_ids.shape[1])[None, :])
        return self.norm(self.words(input_ids) + positions + self.token_types(token_type_ids))


class Attention(nnx.Module):
    """Multi-head self-attention with the output projection, residual and LayerNorm (post-norm, as BERT)."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        width = config.hidden_size
        self.heads_count = config.num_attention_heads
        self.query = _linear(width, width, rngs)
        self.key = _linear(width, width, rngs)
        self.value = _linear(width, width, rngs)
        self.probs = Tap()
        self.heads = Tap()
        self.output = _linear(width, width, rngs)
        self.norm = nnx.LayerNorm(width, epsilon=config.layer_norm_eps, rngs=rngs)

    def __call__(self, x: jax.Array, key_bias: jax.Array) -> jax.Array:
        batch, length, width = x.shape
        split = lambda y: y.reshape(batch, length, self.heads_count, width // self.heads_count)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest") / np.sqrt(q.shape[-1]).astype(q.dtype)
        probs = self.probs(jax.nn.softmax(scores + key_bias[:, None, None, :], axis=-1))
        heads = self.heads(jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision="highest"))
        return self.norm(x + self.output(heads.reshape(batch, length, width)))


class MLP(nnx.Module):
    """``fc2(act(fc1(x)))`` with residual and LayerNorm; ``post`` taps the neurons after the activation."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.fc1 = _linear(config.hidden_size, config.intermediate_size, rngs)
        self.post = Tap()
        self.fc2 = _linear(config.intermediate_size, config.hidden_size, rngs)
        self.norm = nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, rngs=rngs)
        self.act = config.hidden_act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(x + self.fc2(self.post(ACTIVATIONS[self.act](self.fc1(x)))))


class Layer(nnx.Module):
    """One encoder layer: attention, then the MLP."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.attention = Attention(config, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x: jax.Array, key_bias: jax.Array) -> jax.Array:
        return self.mlp(self.attention(x, key_bias))


class Bert(nnx.Module):
    """A BERT encoder: ``model(input_ids, attention_mask=, token_type_ids=)`` -> last hidden state
    ``(batch, positions, hidden)``. Padding (``attention_mask == 0``) is never attended to."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = Embeddings(config, rngs=rngs)
        self.layers = nnx.List([Layer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> jax.Array:
        return self.hidden_states(input_ids, attention_mask, token_type_ids)[-1]

    def from_embeddings(self, x: jax.Array, attention_mask=None) -> jax.Array:
        """The last hidden state from the embedding output ``x`` ``(batch, positions, hidden)``: the
        path conductance and steering in embedding space start from."""
        return self._layers(x, attention_mask)[-1]

    def hidden_states(self, input_ids, attention_mask=None, token_type_ids=None) -> list[jax.Array]:
        """The embedding output and every layer's output (``num_hidden_layers + 1`` arrays), as
        Hugging Face's ``output_hidden_states``."""
        input_ids = jnp.asarray(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        return self._layers(self.embeddings(input_ids, jnp.asarray(token_type_ids)), attention_mask)

    def _layers(self, x: jax.Array, attention_mask) -> list[jax.Array]:
        if attention_mask is None:
            attention_mask = jnp.ones(x.shape[:2], jnp.int32)
        key_bias = jnp.where(jnp.asarray(attention_mask) > 0, 0.0, jnp.finfo(x.dtype).min).astype(x.dtype)
        states = [x]
        for layer in self.layers:
            states.append(layer(states[-1], key_bias))
        return states


def _hf_weights(weights: dict[str, np.ndarray], layers: int) -> dict[tuple, np.ndarray]:
    """Hugging Face tensor names -> this model's parameter paths (linear weights transposed to (in, out))."""
    prefix = "bert." if any(name.startswith("bert.") for name in weights) else ""

    def get(name: str) -> np.ndarray:
        for candidate in (name, name.replace(".weight", ".gamma").replace(".bias", ".beta")):
            if prefix + candidate in weights:
                return np.asarray(weights[prefix + candidate])
        raise JNeuronError(f"model.safetensors: no tensor '{prefix + name}'; is this a BERT checkpoint?")

    def linear(path: tuple, name: str) -> dict:
        return {(*path, "kernel"): get(f"{name}.weight").T, (*path, "bias"): get(f"{name}.bias")}

    def norm(path: tuple, name: str) -> dict:
        return {(*path, "scale"): get(f"{name}.weight"), (*path, "bias"): get(f"{name}.bias")}

    out = {("embeddings", "words", "embedding"): get("embeddings.word_embeddings.weight"),
           ("embeddings", "positions", "embedding"): get("embeddings.position_embeddings.weight"),
           ("embeddings", "token_types", "embedding"): get("embeddings.token_type_embeddings.weight"),
           **norm(("embeddings", "norm"), "embeddings.LayerNorm")}
    for i in range(layers):
        hf, at = f"encoder.layer.{i}", ("layers", i)
        for part in ("query", "key", "value"):
            out.update(linear((*at, "attention", part), f"{hf}.attention.self.{part}"))
        out.update(linear((*at, "attention", "output"), f"{hf}.attention.output.dense"))
        out.update(norm((*at, "attention", "norm"), f"{hf}.attention.output.LayerNorm"))
        out.update(linear((*at, "mlp", "fc1"), f"{hf}.intermediate.dense"))
        out.update(linear((*at, "mlp", "fc2"), f"{hf}.output.dense"))
        out.update(norm((*at, "mlp", "norm"), f"{hf}.output.LayerNorm"))
    return out


def _missing(package: str, error: ImportError) -> JNeuronError:
    return JNeuronError(f"reading a Hugging Face checkpoint needs the '{package}' package: "
                        f"pip install 'jneuron[lm]' ({error})")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError as error:
        raise _missing("safetensors", error) from error
    return load_file(str(path))


def load_model(folder: str | Path, *, dtype=np.float32) -> Bert:
    """A :class:`Bert` with the weights of a Hugging Face checkpoint folder (``config.json`` +
    ``model.safetensors``), parameters cast to ``dtype``."""
    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise JNeuronError(f"{folder}: no {name}; expected a Hugging Face checkpoint folder")
    config = BertConfig.from_dict(json.loads((folder / "config.json").read_text()))
    weights = _read_safetensors(folder / "model.safetensors")
    model = Bert(config, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    for path, array in _hf_weights(weights, config.num_hidden_layers).items():
        variable = flat[path]
        if variable.get_value().shape != array.shape:
            raise JNeuronError(f"model.safetensors: '{'/'.join(map(str, path))}' has shape {array.shape}, "
                               f"config.json implies {variable.get_value().shape}")
        variable.set_value(jnp.asarray(array, dtype))
    nnx.update(model, state)
    return model


def load_tokenizer(folder: str | Path):
    """The checkpoint's ``tokenizers.Tokenizer`` (from ``tokenizer.json``), with padding and truncation off."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise JNeuronError(f"{folder}: no tokenizer.json; expected a Hugging Face checkpoint folder")
    try:
        from tokenizers import Tokenizer
    except ImportError as error:
        raise _missing("tokenizers", error) from error
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def load(folder: str | Path, *, dtype=np.float32):
    """``(model, tokenizer)`` from a Hugging Face BERT checkpoint folder; see :func:`load_model`."""
    return load_model(folder, dtype=dtype), load_tokenizer(folder)


def encode(tokenizer, sentences: Sequence[str] | Sequence[Sequence[str]], *, length: int | None = None,
           max_length: int = 512, first: int = 1) -> dict[str, np.ndarray]:
    """Sentences -> a right-padded batch: ``input_ids``, ``attention_mask``, ``token_type_ids`` (int32,
    ``(sentences, length)``) and ``word_ids`` (each position's word index in its sentence, -1 for special
    tokens and padding).

    Args:
      tokenizer: a ``tokenizers.Tokenizer`` (from :func:`load_tokenizer`).
      sentences: texts, or sentences already split into words (lists of strings; then ``word_ids`` count
        those words, as NeuroX's word-level activations do).
      length: positions per row (default: the longest encoded sentence); a longer sentence is an error.
      max_length: the model's position limit; a sentence longer than this is an error (never cut silently).
      first: the number of the first sentence, for error messages (lines of a file counted from 1).
    """
    if isinstance(sentences, str):
        raise JNeuronError("encode: give a list of sentences, not one string")
    sentences = list(sentences)
    split = bool(sentences) and not isinstance(sentences[0], str)
    encodings = tokenizer.encode_batch([list(s) for s in sentences] if split else sentences,
                                       is_pretokenized=split)
    longest = max((len(e.ids) for e in encodings), default=0)
    length = longest if length is None else int(length)
    for row, e in enumerate(encodings, start=first):
        if len(e.ids) > min(length, max_length):
            raise JNeuronError(f"sentence {row} has {len(e.ids)} tokens, more than the "
                               f"{min(length, max_length)} positions allowed")
    batch = {name: np.zeros((len(encodings), length), np.int32)
             for name in ("input_ids", "attention_mask", "token_type_ids")}
    batch["word_ids"] = np.full((len(encodings), length), -1, np.int32)
    for row, e in enumerate(encodings):
        n = len(e.ids)
        batch["input_ids"][row, :n] = e.ids
        batch["attention_mask"][row, :n] = e.attention_mask
        batch["token_type_ids"][row, :n] = e.type_ids
        batch["word_ids"][row, :n] = [-1 if w is None else w for w in e.word_ids]
    return batch


SUBWORDS = ("first", "last", "mean")


def pool_words(activations, word_ids, how: str = "first") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sub-word rows -> one row per word (NeuroX's word-level activations), padding and special tokens dropped.

    Args:
      activations: ``(sentences, positions, d)``.
      word_ids: ``(sentences, positions)`` word index of each position, -1 for special tokens and padding
        (from :func:`encode`).
      how: ``"first"``, ``"last"`` or ``"mean"`` sub-word of each word.

    Returns:
      ``(rows, sentence, word)``: ``(words, d)`` activations in sentence then word order, and each row's
      sentence (0-based within the batch) and word index.

    >>> acts = np.arange(12.0).reshape(1, 4, 3)
    >>> rows, sentence, word = pool_words(acts, np.array([[-1, 0, 0, 1]]), "mean")
    >>> rows.tolist(), word.tolist()
    ([[4.5, 5.5, 6.5], [9.0, 10.0, 11.0]], [0, 1])
    """
    if how not in SUBWORDS:
        raise JNeuronError(f"sub-word choice must be one of {SUBWORDS}, got '{how}'")
    activations, word_ids = np.asarray(activations), np.asarray(word_ids)
    if word_ids.shape != activations.shape[:2]:
        raise JNeuronError(f"word_ids {word_ids.shape} do not match the activations {activations.shape}")
    sentence, position = np.nonzero(word_ids >= 0)
    word = word_ids[sentence, position]
    # one group per (sentence, word), in order; positions of a word are contiguous in BERT tokenizations
    starts = np.flatnonzero(np.r_[True, (np.diff(sentence) != 0) | (np.diff(word) != 0)])
    rows = activations[sentence, position]
    if how == "first":
        pooled = rows[starts]
    elif how == "last":
        pooled = rows[np.r_[starts[1:], len(rows)] - 1]
    else:
        sums = np.add.reduceat(rows.astype(np.float64), starts, axis=0) if len(rows) else rows.astype(np.float64)
        pooled = (sums / np.diff(np.r_[starts, len(rows)])[:, None]).astype(rows.dtype)
    return pooled, sentence[starts], word[starts]
