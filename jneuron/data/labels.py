"""NeuroX-style label data: a token file and a label file, one sentence per line, space-separated and
aligned token for token; checked against each other and against the activations.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "tokens.txt").write_text("the cat sat\\nit ran\\n")
>>> _ = (folder / "labels.txt").write_text("DT NN VBD\\nPRP VBD\\n")
>>> data = load_labels(folder / "tokens.txt", folder / "labels.txt")
>>> data.flat().tolist(), data.tokens_per_sentence().tolist()
(['DT', 'NN', 'VBD', 'PRP', 'VBD'], [3, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jneuron.errors import JNeuronError


def label_values(labels, what: str = "labels", tokens: int | None = None) -> np.ndarray:
    """Labels checked once for every analysis: 1-D, one per row (``tokens`` when given); objects become strings.

    >>> label_values(["DT", "NN"], tokens=2).tolist()
    ['DT', 'NN']
    """
    values = np.asarray(labels)
    if values.dtype.kind == "O":
        values = values.astype(str)
    if values.ndim != 1 or (tokens is not None and len(values) != tokens):
        expected = "one label per token (1-D)" if tokens is None else f"{tokens} labels (one per activation row)"
        raise JNeuronError(f"{what}: expected {expected}, got shape {values.shape}")
    return values


def class_ids(labels, what: str = "labels", tokens: int | None = None, classes: int | None = None,
              row0: int = 0) -> np.ndarray:
    """Integer classes in ``[0, classes)`` as int64, or a one-line error naming the first bad row (from ``row0``).

    >>> class_ids([0, 2, 1], classes=3).tolist()
    [0, 2, 1]
    """
    values = label_values(labels, what, tokens)
    if values.dtype.kind not in "iub":
        raise JNeuronError(f"{what}: expected integer classes, got dtype {values.dtype}")
    values = values.astype(np.int64, copy=False)
    if len(values) and values.min() < 0:
        raise JNeuronError(f"{what}: negative class {int(values.min())} at row {row0 + int(np.argmin(values)) + 1} (counted from 1)")
    if classes is not None and len(values) and values.max() >= classes:
        bad = int(np.flatnonzero(values >= classes)[0])
        raise JNeuronError(f"label {int(values[bad])} at row {row0 + bad + 1} (counted from 1) is out of range for classes={classes} "
                           f"(labels must lie in 0..{classes - 1})")
    return values


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1.

    >>> counted(1, "row"), counted(21, "row"), counted(0, "label")
    ('1 row', '21 rows', '0 labels')
    """
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def sentence_rows(sentence) -> np.ndarray | None:
    """The activation rows of each sentence, from the sentence id of every row, or ``None`` when the ids say nothing.

    Ids are line numbers of the text counted from 0, in row order, as ``extract`` and ``convert`` store them
    (a sentence with no words has no rows). Ids all equal (a store written without them) or out of order
    say nothing about the lines.

    >>> sentence_rows([0, 0, 0, 2, 2]).tolist(), sentence_rows([0, 0, 0])
    ([3, 0, 2], None)
    """
    ids = np.asarray(sentence, np.int64)
    if ids.size < 2 or ids[0] < 0 or ids[0] == ids[-1] or np.any(np.diff(ids) < 0):
        return None
    return np.bincount(ids)


def check_lines(lines: Sequence[Sequence[str]], rows, where: str, items: str = "item") -> None:
    """Raise unless line ``i`` of a NeuroX text file (one sentence per line) has as many items as sentence ``i``
    has activation rows (``rows[i]``, e.g. from :func:`sentence_rows`).

    The error names the first line that differs, counted from 1; a line past the last sentence and a sentence
    past the last line differ when they hold anything.

    >>> check_lines([["DT", "NN"], ["VB"], []], [2, 1], "labels.txt", "label")
    >>> check_lines([["DT"], ["NN", "VB"]], [2, 1], "labels.txt", "label")
    Traceback (most recent call last):
    jneuron.errors.JNeuronError: labels.txt: line 1 (sentence 1) has 1 label but the activations have 2 rows ...
    """
    have = np.array([len(line) for line in lines], np.int64)
    want = np.asarray(rows, np.int64)
    size = max(len(have), len(want))
    differ = np.flatnonzero(np.pad(have, (0, size - len(have))) != np.pad(want, (0, size - len(want))))
    if not differ.size:
        return
    line = int(differ[0]) + 1
    if line > len(want):
        raise JNeuronError(f"{where}: line {line} has {counted(int(have[line - 1]), items)} but the activations have "
                           f"no sentence {line}: they end with sentence {len(want)} (lines and sentences counted from 1)")
    if line > len(have):
        raise JNeuronError(f"{where}: line {line} (sentence {line}) is missing: the file ends after "
                           f"{counted(len(have), 'line')}, but the activations have {counted(int(want[line - 1]), 'row')} "
                           f"for sentence {line} (lines and sentences counted from 1)")
    raise JNeuronError(f"{where}: line {line} (sentence {line}) has {counted(int(have[line - 1]), items)} but the "
                       f"activations have {counted(int(want[line - 1]), 'row')} for sentence {line} (lines and "
                       "sentences counted from 1)")


def read_sentences(path: str | Path) -> list[list[str]]:
    """One list of space-separated items per line (an empty line is an empty sentence)."""
    path = Path(path)
    if not path.is_file():
        raise JNeuronError(f"no such file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise JNeuronError(f"{path}: not UTF-8 text ({error})") from None
    return [line.split() for line in text.splitlines()]


@dataclass(frozen=True)
class LabelledTokens:
    """Aligned sentences of tokens and labels (``labels[i][j]`` belongs to ``tokens[i][j]``)."""

    tokens: list
    labels: list
    source: str = "labels"

    def flat(self) -> np.ndarray:
        """One label per token, all sentences in order: the ``labels`` argument of the probes."""
        return np.array([label for sentence in self.labels for label in sentence], dtype=str)

    def tokens_per_sentence(self) -> np.ndarray:
        """Tokens in each sentence."""
        return np.array([len(sentence) for sentence in self.tokens], np.int64)

    def check(self, activations) -> None:
        """Raise unless the activations have one row per token; the error names the first line and token
        that do not line up. ``activations``: a ``(tokens, neurons)`` array or a list of per-sentence arrays."""
        if isinstance(activations, (list, tuple)):
            if len(activations) != len(self.tokens):
                raise JNeuronError(f"{self.source}: {len(self.tokens)} sentences but {len(activations)} activation "
                                   "arrays")
            for line, (sentence, rows) in enumerate(zip(self.tokens, activations), start=1):
                if np.shape(rows)[0] != len(sentence):
                    first = min(len(sentence), np.shape(rows)[0])
                    word = sentence[first] if first < len(sentence) else "(end of line)"
                    raise JNeuronError(f"{self.source}: line {line} has {counted(len(sentence), 'token')} but its "
                                       f"activations have {counted(np.shape(rows)[0], 'row')}; first unmatched: "
                                       f"token {first + 1} {word!r}")
            return
        rows = int(np.shape(activations)[0])
        lengths = self.tokens_per_sentence()
        total = int(lengths.sum())
        if rows == total:
            return
        if rows > total:
            raise JNeuronError(f"{self.source}: activations have {rows} rows but the {counted(len(lengths), 'line')} "
                               f"have {counted(total, 'token')} ({counted(rows - total, 'row')} left over after the "
                               "last line)")
        line = int(np.searchsorted(np.cumsum(lengths), rows, side="right"))
        token = rows - int(lengths[:line].sum())
        raise JNeuronError(f"{self.source}: activations have {rows} rows but the labels have {total} tokens; "
                           f"the first token without activations is line {line + 1}, token {token + 1} "
                           f"{self.tokens[line][token]!r}")


def load_labels(tokens_path: str | Path, labels_path: str | Path) -> LabelledTokens:
    """Read a token file and a label file and check that they line up.

    Raises:
      JNeuronError: naming the first line whose token and label counts differ, and the first token there
        without a label (or label without a token).
    """
    tokens, labels = read_sentences(tokens_path), read_sentences(labels_path)
    for line, (words, tags) in enumerate(zip(tokens, labels), start=1):
        if len(words) != len(tags):
            first = min(len(words), len(tags))
            what = (f"token {words[first]!r} has no label" if len(words) > first
                    else f"label {tags[first]!r} has no token")
            raise JNeuronError(f"{labels_path}: line {line} has {counted(len(words), 'token')} in {tokens_path} but "
                               f"{counted(len(tags), 'label')}; at position {first + 1}, {what}")
    if len(tokens) != len(labels):
        raise JNeuronError(f"{labels_path}: {len(labels)} lines, but {tokens_path} has {len(tokens)}; "
                           f"line {min(len(tokens), len(labels)) + 1} is in only one of them")
    return LabelledTokens(tokens, labels, str(labels_path))
