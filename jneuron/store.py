"""Activation stores: zarr v3, one ``(tokens, neurons)`` array per model and layer, appendable along tokens.

Each array is chunked along tokens and carries attributes ``model``, ``layer``, ``width``, ``dtype`` and
``tokenization``; the root group lists the arrays in column order (``attrs["jneuron"]``). Token text,
sentence ids and labels, when given, are stored as UTF-8 byte arrays with end offsets, so they append
too. Extraction appends chunk by chunk (:class:`StoreWriter`); :func:`open_store` reads it back as a
chunk source that streams.

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

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from jneuron.errors import JNeuronError
from jneuron.formats._source import Column, FileSource, Text

FORMAT = 1
DEFAULT_CHUNK_TOKENS = 8192


def _zarr():
    try:
        import zarr
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise JNeuronError("activation stores need zarr>=3: pip install 'jneuron[files]'") from None
    return zarr


class StoreWriter:
    """Write (or append to) a zarr v3 activation store, one model layer and chunk of tokens at a time.

    Args:
      path: the store's folder (``*.zarr`` by convention).
      mode: ``"w"`` creates (replacing an existing store), ``"a"`` appends to an existing one.
      tokenization: free text describing how rows map to inputs (e.g. ``"bert-base-cased wordpieces"``).
      chunk_tokens: rows per stored chunk.
      compressors: zarr compressors (``"auto"``: zarr's default; ``None`` stores raw bytes, fastest to read).
    """

    def __init__(self, path: str | Path, *, mode: str = "w", tokenization: str | None = None,
                 chunk_tokens: int = DEFAULT_CHUNK_TOKENS, compressors="auto"):
        if mode not in ("w", "a"):
            raise JNeuronError(f"mode must be 'w' or 'a', got {mode!r}")
        self.path = Path(path)
        self.chunk_tokens = int(chunk_tokens)
        self.compressors = compressors
        zarr = _zarr()
        if mode == "a":
            if not (self.path / "zarr.json").is_file():
                raise JNeuronError(f"no activation store to append to at {self.path}")
            self.group = zarr.open_group(self.path, mode="r+")
            self.meta = dict(self.group.attrs.get("jneuron", {}))
            if "arrays" not in self.meta:
                raise JNeuronError(f"{self.path}: not a jneuron activation store")
        else:
            self.group = zarr.open_group(self.path, mode="w")
            self.meta = {"format": FORMAT, "arrays": [], "tokenization": tokenization, "text": False}
            self._save_meta()
        self.tokenization = self.meta.get("tokenization")

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing is buffered; kept so the writer can be used as a context manager."""

    def _save_meta(self) -> None:
        self.group.attrs["jneuron"] = self.meta

    def append(self, model: str, layer: str, activations) -> None:
        """Append ``(tokens, width)`` activations of one model layer (created on first use)."""
        values = np.asarray(activations)
        if values.ndim != 2:
            raise JNeuronError(f"'{model}/{layer}': expected (tokens, neurons) activations, got shape {values.shape}")
        if "/" in model or "," in model or not model:
            raise JNeuronError(f"model names must be non-empty without '/' or ',', got {model!r}")
        entry = next((e for e in self.meta["arrays"] if e["model"] == model and e["layer"] == layer), None)
        if entry is None:
            key = self._new_key(model, layer)
            attrs = {"model": model, "layer": layer, "width": int(values.shape[1]),
                     "dtype": str(values.dtype), "tokenization": self.tokenization}
            self.group.create_array(key, shape=(0, values.shape[1]), dtype=values.dtype,
                                    chunks=(self.chunk_tokens, values.shape[1]),
                                    compressors=self.compressors, attributes=attrs)
            self.meta["arrays"].append({"key": key, "model": model, "layer": layer})
            self._save_meta()
        else:
            key = entry["key"]
        array = self.group[key]
        if values.shape[1] != array.shape[1]:
            raise JNeuronError(f"'{model}/{layer}': has {array.shape[1]} neurons, cannot append {values.shape[1]}")
        array.append(values.astype(array.dtype, copy=False), axis=0)

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
        return self.group[name]

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
    """Read a zarr v3 activation store as a chunk source (models, layers, token text if stored)."""
    path = Path(path)
    zarr = _zarr()
    try:
        group = zarr.open_group(path, mode="r")
        meta = group.attrs.get("jneuron")
        if not isinstance(meta, dict) or "arrays" not in meta:
            raise JNeuronError(f"{path}: a zarr group but not a jneuron activation store (no 'jneuron' attribute)")
        arrays = [(entry, group[entry["key"]]) for entry in meta["arrays"]]
    except JNeuronError:
        raise
    except Exception as error:
        raise JNeuronError(f"{path}: not a readable activation store (corrupt?): {type(error).__name__}: {error}") from None
    if not arrays:
        raise JNeuronError(f"{path}: the store holds no activations")
    counts = {f"{e['model']}/{e['layer']}": a.shape[0] for e, a in arrays}
    if len(set(counts.values())) != 1:
        raise JNeuronError(f"{path}: mismatched token counts between arrays (an interrupted write?): {counts}")
    columns = tuple(
        Column(e["model"], e["layer"], a.shape[1], np.dtype(str(a.dtype)), lambda i, j, a=a: a[i:j])
        for e, a in arrays
    )
    tokens = next(iter(counts.values()))
    text = _text_reader(group, path, tokens, bool(meta.get("labels"))) if meta.get("text") else None
    return FileSource(str(path), columns, tokens, None, text)


def _text_reader(group, path: Path, tokens: int, labels: bool) -> Callable[[], Text]:
    def strings(name: str) -> tuple[str, ...]:
        blob = group[f"{name}_bytes"][:].tobytes()
        ends = group[f"{name}_ends"][:]
        starts = np.concatenate([[0], ends[:-1]])
        return tuple(blob[s:e].decode("utf-8") for s, e in zip(starts, ends))

    def read() -> Text:
        words = strings("_tokens")
        if len(words) != tokens:
            raise JNeuronError(f"mismatched tokens: {path} has {tokens} activation rows but {len(words)} token strings")
        return Text(words, group["_sentence"][:], strings("_labels") if labels else None)

    return read


def write_store(source: FileSource, path: str | Path, *, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                tokenization: str | None = None, compressors="auto",
                on_chunk: Callable[[int], None] | None = None) -> Path:
    """Copy a source (and its token text) into a new store, atomically: a temporary folder renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        with StoreWriter(temporary, tokenization=tokenization, chunk_tokens=chunk_tokens,
                         compressors=compressors) as writer:
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
        _replace_folder(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return path


def _replace_folder(new: Path, path: Path) -> None:
    """Move ``new`` to ``path``; an existing ``path`` is swapped out first, then deleted."""
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
        os.replace(path, old / "store")
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, path)
