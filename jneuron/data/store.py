"""Activation stores: zarr v3, one ``(tokens, neurons)`` array per model and layer, appendable along tokens.

Each array is chunked along tokens and carries attributes ``model``, ``layer``, ``width``, ``dtype`` and
``tokenization``; the root group lists the arrays in the order they were created (``attrs["jneuron"]``),
and a model's layers are read side by side in that order, whatever order the models were written in.
Token text, sentence ids and labels, when given, are stored as UTF-8 byte arrays with end offsets, so
they append too. Extraction appends chunk by chunk (:class:`StoreWriter`); :func:`open_store` reads it
back as a chunk source that streams.

Every chunk is written, even one of zeros (zarr skips those by default), so a chunk file that is missing
was lost: reading it is an error naming the layer and its tokens, never rows of zeros. Stores of format 1
(older writers) may lack all-zero chunks; the same error says so.

>>> import numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "acts.zarr")
>>> with StoreWriter(path, tokenization="words") as w:
...     for chunk in np.split(np.arange(12.0, dtype=np.float32).reshape(6, 2), 3):
...         w.append("mlp", "layers/0", chunk)
>>> src = open_store(path)
>>> src.layers, src.tokens, src.read(4, 6).tolist()
({'mlp': (('layers/0', 2),)}, 6, [[8.0, 9.0], [10.0, 11.0]])
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from jneuron import config
from jneuron.data.atomic import aside, clean_leftovers, replace_path
from jneuron.data.file_source import (
    Column,
    FileSource,
    Text,
    column_dtype,
    group_by_model,
    to_column_dtype,
)
from jneuron.errors import JNeuronError

FORMAT = 2  # 2: every chunk is written; 1: chunks of zeros were left out
_EVERY_CHUNK = {"write_empty_chunks": True}


def _zarr():
    try:
        import zarr
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise JNeuronError("activation stores need zarr>=3 (a dependency of jneuron): pip install 'zarr>=3'") from None
    return zarr


class StoreWriter:
    """Write (or append to) a zarr v3 activation store, one model layer and chunk of tokens at a time.

    With ``mode="w"`` the store is built aside (``.NAME.<pid>.<hex>.tmp`` next to ``path``) and appears at
    ``path``, replacing any store there in one step, on :meth:`close` (leaving the ``with`` block); an
    error inside the block discards it and leaves what was at ``path`` untouched. With ``mode="a"``
    arrays grow in place.

    Args:
      path: the store's folder (``*.zarr`` by convention).
      mode: ``"w"`` creates (replacing an existing store), ``"a"`` appends to an existing one.
      tokenization: free text describing how rows map to inputs (e.g. ``"bert-base-cased wordpieces"``).
      chunk_tokens: rows per stored chunk (default: :data:`jneuron.config.STORE_CHUNK_TOKENS`).
      compressors: zarr compressors (``"auto"``: zarr's default; ``None`` stores raw bytes, fastest to read).
    """

    def __init__(self, path: str | Path, *, mode: str = "w", tokenization: str | None = None,
                 chunk_tokens: int | None = None, compressors="auto"):
        if mode not in ("w", "a"):
            raise JNeuronError(f"mode must be 'w' or 'a', got {mode!r}")
        self.path = Path(path)
        self.chunk_tokens = int(config.STORE_CHUNK_TOKENS if chunk_tokens is None else chunk_tokens)
        self.compressors = compressors
        self._arrays: dict = {}
        zarr = _zarr()
        clean_leftovers(self.path)
        if mode == "a":
            if not (self.path / "zarr.json").is_file():
                raise JNeuronError(f"no activation store to append to at {self.path}")
            self._folder = None
            self.group = zarr.open_group(self.path, mode="r+")
            self.meta = dict(self.group.attrs.get("jneuron", {}))
            if "arrays" not in self.meta:
                raise JNeuronError(f"{self.path}: not a jneuron activation store")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._folder = aside(self.path)
            self.group = zarr.open_group(self._folder, mode="w")
            self.meta = {"format": FORMAT, "arrays": [], "tokenization": tokenization, "text": False}
            self._save_meta()
        self.tokenization = self.meta.get("tokenization")
        self.closed = False

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.discard()

    def close(self) -> None:
        """Finish: a new store (``mode="w"``) is moved into place at ``path``."""
        if not self.closed and self._folder is not None:
            replace_path(self._folder, self.path)
        self.closed = True

    def discard(self) -> None:
        """Drop a new store unfinished (``mode="w"``: nothing appears at ``path``); appends already made stay."""
        if not self.closed and self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        self.closed = True

    def _save_meta(self) -> None:
        self.group.attrs["jneuron"] = self.meta

    def append(self, model: str, layer: str, activations) -> None:
        """Append ``(tokens, width)`` activations of one model layer (created on first use).

        Booleans, integers and floats are stored as they are. bfloat16 and the other ml_dtypes types
        (float8, int4, ...), which zarr cannot store, are stored as float32, which holds each of their
        values exactly. Complex numbers, strings and other non-numbers are refused before anything is written.
        """
        values = self._storable(model, layer, activations)
        array = self._array(model, layer, values)
        if values.shape[1] != array.shape[1]:
            raise JNeuronError(f"'{model}/{layer}': has {array.shape[1]} neurons, cannot append {values.shape[1]}")
        array.append(values.astype(array.dtype, copy=False), axis=0)

    def _storable(self, model: str, layer: str, activations) -> np.ndarray:
        """``activations`` checked and in the dtype they are stored as."""
        if self.closed:
            raise JNeuronError(f"{self.path}: the writer is closed")
        if "/" in model or "," in model or not model:
            raise JNeuronError(f"model names must be non-empty without '/' or ',', got {model!r}")
        values = np.asarray(activations)
        if values.ndim != 2 or values.shape[1] == 0:
            raise JNeuronError(f"'{model}/{layer}': expected (tokens, neurons) activations, got shape {values.shape}")
        return to_column_dtype(values, column_dtype(values.dtype, f"'{model}/{layer}'"))

    def _array(self, model: str, layer: str, values: np.ndarray):
        """The zarr array of ``model/layer``, created for ``values`` on first use (writing every chunk)."""
        entry = next((e for e in self.meta["arrays"] if e["model"] == model and e["layer"] == layer), None)
        if entry is None:
            key = self._new_key(model, layer)
            attrs = {"model": model, "layer": layer, "width": int(values.shape[1]),
                     "dtype": str(values.dtype), "tokenization": self.tokenization}
            self._arrays[key] = self.group.create_array(
                key, shape=(0, values.shape[1]), dtype=values.dtype, chunks=(self.chunk_tokens, values.shape[1]),
                compressors=self.compressors, attributes=attrs, config=_EVERY_CHUNK)
            self.meta["arrays"].append({"key": key, "model": model, "layer": layer})
            self._save_meta()
            return self._arrays[key]
        return self._opened(entry["key"])

    def _opened(self, key: str):
        if key not in self._arrays:
            self._arrays[key] = self.group[key].with_config(_EVERY_CHUNK)
        return self._arrays[key]

    def append_text(self, tokens: Sequence[str], sentence: Sequence[int] | None = None,
                    labels: Sequence[str] | None = None) -> None:
        """Append token strings (one per row), their sentence ids and optionally one label per row."""
        if sentence is None:
            sentence = np.zeros(len(tokens), np.int64)
        if len(sentence) != len(tokens) or (labels is not None and len(labels) != len(tokens)):
            raise JNeuronError("tokens, sentence ids and labels must have one entry per row")
        self._append_strings("_tokens", tokens)
        self._append_numbers("_sentence", np.asarray(sentence, np.int64))
        if labels is not None:
            self._append_strings("_labels", labels)
        self.meta["text"] = True
        self.meta["labels"] = labels is not None or self.meta.get("labels", False)
        self._save_meta()

    def _append_strings(self, name: str, items: Sequence[str]) -> None:
        encoded = [str(item).encode("utf-8") for item in items]
        blob = np.frombuffer(b"".join(encoded), np.uint8)
        ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)
        previous = self._numbers(f"{name}_bytes", np.uint8).shape[0]
        self._append_numbers(f"{name}_bytes", blob)
        self._append_numbers(f"{name}_ends", ends + previous)

    def _numbers(self, name: str, dtype):
        if name not in self.group:
            self.group.create_array(name, shape=(0,), dtype=dtype, chunks=(1 << 20,), compressors=self.compressors)
        return self._opened(name)

    def _append_numbers(self, name: str, values: np.ndarray) -> None:
        self._numbers(name, values.dtype).append(values, axis=0)

    def _new_key(self, model: str, layer: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{model}.{layer}" if layer else model)
        taken = {e["key"] for e in self.meta["arrays"]}
        key, n = base, 1
        while key in taken or key.startswith("_"):
            key, n = f"{base}.{n}", n + 1
        return key


def open_store(path: str | Path) -> FileSource:
    """Read a zarr v3 activation store as a chunk source (models, layers, token text if stored).

    Every chunk file is checked at open and again as it is read: a missing one is an error naming the
    layer and the tokens it held (see the module docstring).
    """
    path = Path(path)
    group, meta, arrays = _open_arrays(path)
    if not arrays:
        raise JNeuronError(f"{path}: the store holds no activations")
    counts = {f"{e['model']}/{e['layer']}": a.shape[0] for e, a in arrays}
    if len(set(counts.values())) != 1:
        raise JNeuronError(f"{path}: mismatched token counts between arrays (an interrupted write?): {counts}")
    older = meta.get("format", 1) < 2
    columns = []
    for entry, array in arrays:
        where = f"{path}: '{entry['model']}/{entry['layer']}'"
        if array.ndim != 2:
            raise JNeuronError(f"{where}: expected (tokens, neurons) activations, got shape {array.shape}")
        chunks = _Chunks(array, path, where, older)
        chunks.check_all()
        dtype = column_dtype(array.dtype, where)
        columns.append(Column(entry["model"], entry["layer"], array.shape[1], dtype,
                              lambda i, j, c=chunks, d=dtype: to_column_dtype(c.read(i, j), d)))
    tokens = next(iter(counts.values()))
    text = _text_reader(group, path, tokens, bool(meta.get("labels")), older) if meta.get("text") else None
    return FileSource(str(path), group_by_model(columns), tokens, None, text)


def _open_arrays(path: Path):
    """The root group, its ``jneuron`` attribute and ``(entry, array)`` per listed array; one-line errors."""
    zarr = _zarr()
    try:
        group = zarr.open_group(path, mode="r")
        meta = group.attrs.get("jneuron")
        if not isinstance(meta, dict) or "arrays" not in meta:
            raise JNeuronError(f"{path}: a zarr group but not a jneuron activation store (no 'jneuron' attribute)")
        return group, meta, [(entry, group[entry["key"]]) for entry in meta["arrays"]]
    except JNeuronError:
        raise
    except Exception as error:
        raise JNeuronError(f"{path}: not a readable activation store (corrupt?): {type(error).__name__}: {error}") from None


class _Chunks:
    """Reads a zarr array's rows one stored chunk at a time, first checking that the chunk's file exists.

    Reading chunk by chunk keeps a corrupt chunk's error alone: a read spanning many chunks runs them as
    concurrent tasks in zarr's event loop, and the ones still pending when the first fails are reported
    as "Task was destroyed but it is pending!" when the process exits. ``required=False`` reads a missing
    chunk as zarr fills it (zeros), for the text arrays of older stores.
    """

    def __init__(self, array, store: Path, where: str, older: bool, required: bool = True):
        self.array, self.where, self.older, self.required = array, where, older, required
        self.folder = store / array.path
        self.rows = (array.shards or array.chunks)[0]
        self.grid = [-(-n // c) for n, c in zip(array.shape, array.shards or array.chunks)]

    def check_all(self) -> None:
        """Check every chunk (a listing first: fast when none is missing)."""
        if self.array.nchunks_initialized < self.array.nchunks:
            for k in range(self.grid[0]):
                self.check(k)

    def check(self, k: int) -> None:
        """Raise if a file of the ``k``-th chunk of rows is missing."""
        if not self.required:
            return
        for rest in np.ndindex(*self.grid[1:]):
            key = self.array.metadata.encode_chunk_key((k, *rest))
            if not (self.folder / key).is_file():
                lo, hi = k * self.rows, min((k + 1) * self.rows, self.array.shape[0])
                older = (" This store is from an older jneuron writer, which left chunks of zeros unwritten: "
                         "if these rows are zeros, write the store again from its source.") if self.older else ""
                raise JNeuronError(f"{self.where}: chunk {key} (tokens {lo}:{hi}) is missing from the store "
                                   f"(deleted or lost).{older}")

    def read(self, i: int, j: int) -> np.ndarray:
        """Rows ``i:j``."""
        if i >= j:
            return self.array[i:j]
        parts = []
        for k in range(i // self.rows, (j - 1) // self.rows + 1):
            self.check(k)
            parts.append(self.array[max(i, k * self.rows):min(j, (k + 1) * self.rows)])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _text_reader(group, path: Path, tokens: int, labels: bool, older: bool) -> Callable[[], Text]:
    """Token text, sentence ids and labels, read when first asked for.

    Stores of format 1 left text chunks of zeros unwritten (sentence ids default to 0), so their text
    arrays are read as zarr fills them; every chunk of a newer store's text is checked.
    """
    def numbers(name: str) -> np.ndarray:
        array = group[name]
        return _Chunks(array, path, f"{path}: '{name}'", older, required=not older).read(0, array.shape[0])

    def strings(name: str) -> tuple[str, ...]:
        blob = numbers(f"{name}_bytes").tobytes()
        ends = numbers(f"{name}_ends")
        starts = np.concatenate([[0], ends[:-1]])
        return tuple(blob[s:e].decode("utf-8") for s, e in zip(starts, ends))

    def read() -> Text:
        words = strings("_tokens")
        if len(words) != tokens:
            raise JNeuronError(f"mismatched tokens: {path} has {tokens} activation rows but {len(words)} token strings")
        return Text(words, numbers("_sentence"), strings("_labels") if labels else None)

    return read


def write_store(source: FileSource, path: str | Path, *, chunk_tokens: int | None = None,
                tokenization: str | None = None, compressors="auto",
                on_chunk: Callable[[int], None] | None = None) -> Path:
    """Copy a source (and its token text) into a new store at ``path``, which appears only when complete
    (see :class:`StoreWriter`)."""
    path = Path(path)
    chunk_tokens = config.STORE_CHUNK_TOKENS if chunk_tokens is None else chunk_tokens
    with StoreWriter(path, tokenization=tokenization, chunk_tokens=chunk_tokens, compressors=compressors) as writer:
        edges = np.cumsum([0] + [c.width for c in source.columns])
        for chunk in source.chunks(chunk_tokens):
            for column, lo, hi in zip(source.columns, edges[:-1], edges[1:]):
                part = chunk[:, lo:hi]  # back to the file's own dtype unless a dtype was asked for
                writer.append(column.model, column.layer, part if source.out_dtype else part.astype(column.dtype))
            if on_chunk is not None:
                on_chunk(chunk.shape[0])
        if source.text is not None:
            text = source.text()
            writer.append_text(text.tokens, text.sentence, text.labels)
    return path
