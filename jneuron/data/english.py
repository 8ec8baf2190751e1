"""Real English that ships with Python: the prose of the language reference help topics (``pydoc_data``).

:func:`prose_sentences` keeps the running prose of ``pydoc_data.topics`` (about 34,000 words; code
blocks, grammar rules and headings are dropped), splits it into sentences and tokenizes them: lower
case, word tokens (``[a-z0-9_]`` runs, with an apostrophe suffix such as ``'s``) and the punctuation
``. , ; : ! ? ( )`` as tokens of their own. :func:`load_english` caps the vocabulary (the rest becomes
``<unk>``) and splits train / held-out by sentence with a seeded shuffle. Nothing is downloaded; the
text is the running interpreter's, so it is fixed for a given Python version.

>>> corpus = load_english(vocab_size=500, seed=0)
>>> corpus.vocab[:2], len(corpus.vocab)
(('<unk>', 'the'), 500)
>>> inputs, targets = corpus.windows("train", 20)
>>> inputs.shape[1], bool((inputs[1:, 0] == targets[:-1, -1]).all())
(20, True)
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass

import numpy as np

from jneuron.errors import JNeuronError

UNK = "<unk>"
PUNCTUATION = frozenset(".,;:!?()")
_TOKEN = re.compile(r"[a-z0-9_]+(?:'[a-z]+)?|[.,;:!?()]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")
_RULE = re.compile(r"[*=\-~^#]+")


def _prose_paragraphs() -> list[str]:
    import pydoc_data.topics  # lazily: only the studies read it

    paragraphs = []
    for key in sorted(pydoc_data.topics.topics):
        for block in re.split(r"\n\s*\n", pydoc_data.topics.topics[key]):
            lines = [line for line in block.split("\n") if line.strip()]
            if not lines or any(line[0].isspace() for line in lines):
                continue  # code, grammar and indented examples
            lines = [line for line in lines if not _RULE.fullmatch(line.strip())]
            text = " ".join(lines)
            if len(text.split()) >= 6:  # headings and captions are shorter
                paragraphs.append(text)
    return paragraphs


def tokenize(text: str) -> list[str]:
    """Lower-case word and punctuation tokens of ``text`` (quotes and markup dropped).

    >>> tokenize('The "assert" statement, as it\u2019s called (see below).')
    ['the', 'assert', 'statement', ',', 'as', "it's", 'called', '(', 'see', 'below', ')', '.']
    """
    return _TOKEN.findall(text.replace("\u2019", "'").lower())


def prose_sentences() -> list[list[str]]:
    """The tokenized sentences of the ``pydoc_data.topics`` prose, in topic order (at least 3 tokens each)."""
    sentences = []
    for paragraph in _prose_paragraphs():
        for sentence in _SENTENCE_END.split(paragraph):
            tokens = tokenize(sentence)
            if len(tokens) >= 3:
                sentences.append(tokens)
    return sentences


@dataclass(frozen=True)
class EnglishCorpus:
    """Sentences as token ids over a capped vocabulary, split into train and held-out sentences.

    Attributes:
      vocab: the words, index 0 is ``<unk>``; the rest by descending train frequency (ties alphabetical).
      train: training sentences, each an int32 array of ids.
      heldout: held-out sentences.
    """

    vocab: tuple[str, ...]
    train: tuple[np.ndarray, ...]
    heldout: tuple[np.ndarray, ...]

    def words(self, ids) -> list[str]:
        """The words of a sequence of ids."""
        return [self.vocab[int(i)] for i in ids]

    def tokens(self, split: str) -> int:
        """How many tokens the split (``"train"`` or ``"heldout"``) holds."""
        return sum(len(s) for s in self._split(split))

    def windows(self, split: str, length: int) -> tuple[np.ndarray, np.ndarray]:
        """The split's sentences run together and cut into ``(windows, length)`` inputs and next-token targets.

        Consecutive windows continue the text (window ``i + 1`` starts where window ``i``'s targets end);
        the tail shorter than a window is dropped.
        """
        if length < 1:
            raise JNeuronError(f"window length must be at least 1, got {length}")
        stream = np.concatenate(self._split(split))
        count = (len(stream) - 1) // length
        if count < 1:
            raise JNeuronError(f"the {split} text ({len(stream)} tokens) is shorter than one window of {length}")
        inputs = stream[: count * length].reshape(count, length)
        targets = stream[1 : count * length + 1].reshape(count, length)
        return inputs, targets

    def _split(self, split: str) -> tuple[np.ndarray, ...]:
        if split not in ("train", "heldout"):
            raise JNeuronError(f"split must be 'train' or 'heldout', got {split!r}")
        return self.train if split == "train" else self.heldout


def load_english(*, vocab_size: int = 2000, heldout: float = 0.15, seed: int = 0) -> EnglishCorpus:
    """The ``pydoc_data`` prose as an :class:`EnglishCorpus`.

    Args:
      vocab_size: words kept, ``<unk>`` included (the most frequent in the training sentences).
      heldout: share of the sentences held out (chosen by a seeded shuffle).
      seed: seed of the shuffle.
    """
    if vocab_size < 2:
        raise JNeuronError(f"vocab_size must be at least 2 (<unk> and one word), got {vocab_size}")
    if not 0 < heldout < 1:
        raise JNeuronError(f"heldout must lie strictly between 0 and 1, got {heldout}")
    sentences = prose_sentences()
    order = np.random.default_rng(seed).permutation(len(sentences))
    cut = round(len(sentences) * (1 - heldout))
    train, test = [sentences[i] for i in np.sort(order[:cut])], [sentences[i] for i in np.sort(order[cut:])]
    counts = collections.Counter(token for sentence in train for token in sentence)
    words = sorted(counts, key=lambda w: (-counts[w], w))[: vocab_size - 1]
    vocab = (UNK, *words)
    index = {word: i for i, word in enumerate(vocab)}

    def encode(sentence: list[str]) -> np.ndarray:
        return np.array([index.get(token, 0) for token in sentence], np.int32)

    return EnglishCorpus(vocab, tuple(encode(s) for s in train), tuple(encode(s) for s in test))
