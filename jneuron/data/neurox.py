"""NeuroX activation files: HDF5 (one dataset per sentence) and JSON-lines, with token and label files.

NeuroX's writers store, per sentence ``s``, activations shaped ``(layers, words, width)``: in HDF5 as the
dataset ``str(s)`` plus a dataset ``sentence_to_index`` whose element 0 is a JSON object mapping each
sentence's text to its index; in JSON-lines as one object per line, ``{"linex_index": s, "features":
[{"token": t, "layers": [{"index": l, "values": [...]}, ...]}, ...]}``. Sentences are read in index
order and their words concatenated, so row ``k`` is the ``k``-th word; each layer becomes one column
group of a model named by the file's stem. Token and label files hold one sentence per line, items
separated by spaces, as NeuroX's ``load_data`` reads them.

>>> import json, pathlib, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "acts.json"
>>> line = {"linex_index": 0, "features": [
...     {"token": w, "layers": [{"index": 0, "values": [float(i), 1.0]}]} for i, w in enumerate(["a", "b"])]}
>>> _ = path.write_text(json.dumps(line) + "\\n")
>>> src = open_neurox_json(path)
>>> src.layers, src.read(0, 2).tolist(), src.text().tokens
({'acts': (('0', 2),)}, [[0.0, 1.0], [1.0, 1.0]], ('a', 'b'))
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from jneuron.data.file_source import (
    Column,
    FileSource,
    Text,
    column_dtype,
    to_column_dtype,
)
from jneuron.data.labels import check_lines, read_sentences
from jneuron.errors import JNeuronError

_OCCURRENCE = re.compile(r" \(Occurrence \d+\)$")


def _text(words: list[list[str]], lengths: np.ndarray, where: str, tokens=None, labels=None) -> Text:
    """Token text (from ``tokens`` file or the activation file's own words) checked against the rows."""
    if tokens is not None:
        words = read_sentences(tokens)
        where = str(tokens)
    check_lines(words, lengths, where, "token")
    label_items = None
    if labels is not None:
        label_lines = read_sentences(labels)
        check_lines(label_lines, lengths, str(labels), "label")
        label_items = tuple(item for line in label_lines for item in line)
    sentence = np.repeat(np.arange(len(lengths)), lengths)
    return Text(tuple(w for line in words for w in line), sentence, label_items)


def open_neurox_hdf5(path: str | Path, tokens=None, labels=None) -> FileSource:
    """A NeuroX HDF5 file: one column group per layer; rows are words, sentences in index order."""
    try:
        import h5py
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise JNeuronError("NeuroX .hdf5 files need h5py: pip install 'jneuron[files]'") from None

    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise JNeuronError(f"{path}: not a readable HDF5 file (corrupt or truncated?): {error}") from None
    try:
        index = json.loads(_as_str(handle["sentence_to_index"][0]))
        order = sorted(index.items(), key=lambda item: int(item[1]))
        datasets = [handle[str(key)] for _, key in order]
    except KeyError as error:
        handle.close()
        raise JNeuronError(f"{path}: not a NeuroX activation file (missing dataset {error})") from None
    except (ValueError, TypeError, OSError) as error:
        handle.close()
        raise JNeuronError(f"{path}: unreadable sentence_to_index (corrupt file?): {error}") from None
    if not datasets:
        raise JNeuronError(f"{path}: the file holds no sentences")
    shapes = {ds.shape[0::2] for ds in datasets}
    if len(shapes) != 1 or any(ds.ndim != 3 for ds in datasets):
        raise JNeuronError(f"{path}: sentences differ in (layers, width): {sorted(shapes)}")
    layers, width = shapes.pop()
    lengths = np.array([ds.shape[1] for ds in datasets], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])

    def reader(layer: int):
        def read(i: int, j: int) -> np.ndarray:
            first = int(np.searchsorted(starts, i, side="right") - 1)
            parts = []
            for s in range(first, len(datasets)):
                if starts[s] >= j:
                    break
                lo, hi = max(i, starts[s]) - starts[s], min(j, starts[s + 1]) - starts[s]
                parts.append(datasets[s][layer, lo:hi, :])
            return to_column_dtype(np.concatenate(parts, axis=0), dtype) if parts else np.zeros((0, width), dtype)

        return read

    dtype = column_dtype(datasets[0].dtype, str(path))
    columns = tuple(Column(path.stem, str(layer), width, dtype, reader(layer)) for layer in range(layers))
    words = [_OCCURRENCE.sub("", sentence).split(" ") for sentence, _ in order]
    text = _given_text(words, lengths, path, tokens, labels) if tokens is not None or labels is not None else None
    if text is None:
        try:  # the sentence keys are the words joined by spaces; use them when they line up
            fallback = _text(words, lengths, str(path))
        except JNeuronError:
            fallback = None
        text = fallback
    return FileSource(str(path), columns, int(starts[-1]), None, None if text is None else (lambda: text))


def _given_text(words, lengths: np.ndarray, path: Path, tokens, labels) -> Text:
    """:func:`_text` for an HDF5 file, saying why its sentences can be fewer than the lines: NeuroX keys them
    by their text, and writers without the ``" (Occurrence n)"`` suffix keep a repeated sentence once."""
    try:
        return _text(words, lengths, str(path), tokens, labels)
    except JNeuronError as error:
        lines = len(read_sentences(tokens if tokens is not None else labels))
        if lines <= len(lengths):
            raise
        raise JNeuronError(f"{error} ({path.name} holds {len(lengths)} sentences for {lines} lines: NeuroX keys "
                           "sentences by their text, so a repeated sentence is kept once unless its key ends "
                           "with ' (Occurrence n)')") from None


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def open_neurox_json(path: str | Path, tokens=None, labels=None) -> FileSource:
    """A NeuroX JSON-lines file (read into memory): one column group per layer, words as rows."""
    path = Path(path)
    words, blocks = [], []
    layer_ids = None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise JNeuronError(f"{path}: not a UTF-8 JSON-lines file: {error}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            features = json.loads(line)["features"]
            sentence = [feature["token"] for feature in features]
            ids = [[layer["index"] for layer in feature["layers"]] for feature in features]
            values = np.array(
                [[layer["values"] for layer in feature["layers"]] for feature in features], np.float32
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise JNeuronError(
                f"{path}, line {number}: not a NeuroX activation line (corrupt or truncated?): "
                f"{type(error).__name__}: {error}"
            ) from None
        if values.ndim != 3 or any(i != ids[0] for i in ids):
            raise JNeuronError(f"{path}, line {number}: words have different layers or widths")
        if layer_ids is None:
            layer_ids = ids[0]
        elif ids[0] != layer_ids or values.shape[2] != blocks[0].shape[2]:
            raise JNeuronError(f"{path}, line {number}: layers or width differ from the first line")
        words.append(sentence)
        blocks.append(values)
    if not blocks:
        raise JNeuronError(f"{path}: the file holds no sentences")
    data = np.concatenate(blocks, axis=0)  # (words, layers, width)
    lengths = np.array([len(s) for s in words], np.int64)
    text = _text(words, lengths, str(path), tokens, labels)
    columns = tuple(
        Column(path.stem, str(layer_id), data.shape[2], data.dtype, lambda i, j, k=k: data[i:j, k, :])
        for k, layer_id in enumerate(layer_ids)
    )
    return FileSource(str(path), columns, data.shape[0], None, lambda: text)
