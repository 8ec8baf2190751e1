"""English sentences that ship with Python, and word properties that need no tagger, for probing studies.

:func:`python_prose_sentences` reads the prose paragraphs of ``pydoc_data.topics`` (the language reference
text Python's ``help()`` shows; no download), splits them into sentences and words. :func:`word_labels`
labels every word with properties computed from the text alone: its position bucket, its shape (lower,
Capitalized, UPPER, digit, punct), function word vs content word (a fixed English list) and, for
punctuation, whether it ends the sentence. :func:`control_labels` is Hewitt & Liang's (2019) control task
for any of them: each word type gets one label drawn from the property's label distribution, the same at
every occurrence, so a probe can only reach it by memorising word types.

>>> words = "The cat sat on 2 mats .".split()
>>> word_labels([words])["shape"].tolist()
['Capitalized', 'lower', 'lower', 'lower', 'digit', 'lower', 'punct']
>>> word_labels([words])["function"].tolist()
['function', 'content', 'content', 'function', '', 'content', '']
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from jneuron.errors import JNeuronError

PROPERTIES = ("position", "shape", "function", "final")
"""The properties :func:`word_labels` computes; ``""`` marks a word a property does not apply to."""

_FUNCTION_WORDS_TEXT = """
a about above after again against all also although am among an and another any are as at be because been
before being below besides between both but by can cannot could did do does doing down during each either
else enough every few for from further had has have having he her here hers herself him himself his how
however if in into is it its itself just least less many may me might more most much must my myself
neither no nor not now of off on once one only onto or other others ought our ours ourselves out over own
per rather same several shall she should since so some such than that the their theirs them themselves then
there therefore these they this those though through thus to too toward towards under unless until up upon
us very via was we were what whatever when whenever where whereas wherever whether which while who whoever
whom whose why will with within without would yet you your yours yourself yourselves
"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS_TEXT.split())
"""English function words (determiners, pronouns, prepositions, conjunctions, auxiliaries, modals and common
adverbs of degree), lower case; every other alphabetic word is a content word."""

POSITION_BUCKETS = ((0, "1"), (1, "2-3"), (3, "4-7"), (7, "8-15"), (15, "16+"))
"""``(first 0-based index, name)``: the word's position in its sentence, in roughly doubling buckets."""

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|\d+(?:\.\d+)?|[^\w\s]")
_CODE = re.compile(r"[_\[\]{}=<>*@#`|\\/~^$%\"]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def split_words(sentence: str) -> list[str]:
    """Words and punctuation marks as separate tokens (``"don't"`` stays one word; ``"3.5"`` one number).

    >>> split_words("It's 3.5 times faster, isn't it?")
    ["It's", '3.5', 'times', 'faster', ',', "isn't", 'it', '?']
    """
    return _WORD.findall(sentence)


def _paragraphs(text: str) -> list[str]:
    """The paragraphs of a topic, each on one line (headings left out; code is dropped sentence by sentence)."""
    kept = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.split("\n")]
        if len(lines) > 1 and set(lines[-1]) <= set("*=-"):
            continue  # a heading
        kept.append(" ".join(lines))
    return kept


def python_prose_sentences(*, min_words: int = 6, max_words: int = 30) -> list[list[str]]:
    """Sentences of English prose from ``pydoc_data.topics`` (Python's own help text), split into words.

    Sentences that look like code (underscores, square or curly brackets, quotes, operators) are dropped, as are those
    with fewer than ``min_words`` or more than ``max_words`` words. The order is the topics' sorted order,
    so the result is the same on every run of one Python version.

    >>> sentences = python_prose_sentences()
    >>> len(sentences) > 500, all(6 <= len(s) <= 30 for s in sentences)
    (True, True)
    """
    from pydoc_data.topics import topics

    sentences = []
    for key in sorted(topics):
        for paragraph in _paragraphs(topics[key]):
            for sentence in _SENTENCE_END.split(paragraph):
                if _CODE.search(sentence) or not sentence[:1].isupper() or sentence[-1:] not in ".!?":
                    continue
                words = split_words(sentence)
                if min_words <= len(words) <= max_words:
                    sentences.append(words)
    if not sentences:
        raise JNeuronError("pydoc_data.topics: no prose sentences found (is this a stripped Python build?)")
    return sentences


def word_shape(word: str) -> str:
    """``lower``, ``Capitalized``, ``UPPER``, ``digit``, ``punct`` or ``mixed`` (e.g. ``iPhone``)."""
    core = word.replace("'", "")
    if not core or not any(c.isalnum() for c in core):
        return "punct"
    if core.replace(".", "").isdigit():
        return "digit"
    if core.islower():
        return "lower"
    if core.isupper() and len(core) > 1:
        return "UPPER"
    if core[0].isupper() and (len(core) == 1 or core[1:].islower()):
        return "Capitalized"
    return "mixed"


def position_bucket(index: int) -> str:
    """The bucket name of a 0-based word position (see :data:`POSITION_BUCKETS`)."""
    return next(name for first, name in reversed(POSITION_BUCKETS) if index >= first)


def word_labels(sentences: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    """Every property of every word, in sentence then word order: property name -> ``(words,)`` strings.

    - ``position``: :func:`position_bucket` of the word's index in its sentence;
    - ``shape``: :func:`word_shape`;
    - ``function``: ``function`` / ``content`` for alphabetic words (:data:`FUNCTION_WORDS`), ``""`` otherwise;
    - ``final``: ``final`` / ``internal`` for punctuation marks (the last word of the sentence or not),
      ``""`` for other words.
    """
    labels = {name: [] for name in PROPERTIES}
    for sentence in sentences:
        for index, word in enumerate(sentence):
            shape = word_shape(word)
            labels["position"].append(position_bucket(index))
            labels["shape"].append(shape)
            alphabetic = word.replace("'", "").isalpha()
            labels["function"].append(("function" if word.lower() in FUNCTION_WORDS else "content")
                                      if alphabetic else "")
            labels["final"].append(("final" if index == len(sentence) - 1 else "internal")
                                   if shape == "punct" else "")
    return {name: np.asarray(values, dtype=str) for name, values in labels.items()}


def control_labels(words: Sequence[str], labels, *, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang's control task: each word type gets one label drawn from the empirical distribution of
    ``labels``, the same label at every occurrence of the type (types in order of first occurrence; words
    labelled ``""`` keep ``""`` and count in no distribution).

    >>> control = control_labels(["a", "b", "a", "c"], ["x", "y", "x", "y"], seed=1)
    >>> bool(control[0] == control[2]), set(control.tolist()) <= {"x", "y"}
    (True, True)
    """
    words, labels = np.asarray(words, dtype=str), np.asarray(labels, dtype=str)
    if words.shape != labels.shape or words.ndim != 1:
        raise JNeuronError(f"control_labels: {words.shape} words but {labels.shape} labels; expected one each")
    used = labels != ""
    classes, counts = np.unique(labels[used], return_counts=True)
    control = np.full(labels.shape, "", dtype=labels.dtype if labels.size else str)
    if not used.any():
        return control
    types, first, inverse = np.unique(words[used], return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # draw in order of first occurrence
    drawn = np.random.default_rng(seed).choice(len(classes), size=len(types), p=counts / counts.sum())
    per_type = np.empty(len(types), dtype=np.int64)
    per_type[order] = drawn
    control = control.astype(classes.dtype)
    control[used] = classes[per_type[inverse]]
    return control
