"""A source over activation files: named (model, layer) column groups read by token range.

Every file format (zarr store, ``.npy``, ``.npz``, NeuroX HDF5 and JSON-lines) opens into a
:class:`FileSource`: a list of :class:`Column` s, each one layer of one model that can read any token
range, plus optional token text and labels. It is a chunk source (``names``, ``widths``, ``dtype``,
``reiterable``, ``chunks``) whose models are the column groups of each model, layers side by side.

>>> import numpy as np
>>> a = np.arange(12.0).reshape(6, 2)
>>> src = FileSource("demo", (Column("m", "l0", 2, a.dtype, lambda i, j: a[i:j]),), 6)
>>> src.names, src.widths, [c.shape for c in src.chunks(4)]
(('m',), (2,), [(4, 2), (2, 2)])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import ml_dtypes
import numpy as np

from jneuron.data.checks import check_valid
from jneuron.data.source import Rows
from jneuron.errors import JNeuronError


@dataclass(frozen=True)
class Column:
    """One layer of one model: ``read(start, stop)`` returns its ``(stop - start, width)`` rows."""

    model: str
    layer: str
    width: int
    dtype: np.dtype
    read: Callable[[int, int], np.ndarray]

    @property
    def label(self) -> str:
        return f"{self.model}/{self.layer}" if self.layer else self.model


@dataclass(frozen=True)
class Text:
    """Token strings (one per row), the sentence each row belongs to, and optional labels per row."""

    tokens: tuple[str, ...]
    sentence: np.ndarray
    labels: tuple[str, ...] | None = None


@dataclass(frozen=True)
class FileSource:
    """Activations read from files, chunk by chunk (see the module docstring).

    Attributes:
      path: where the data came from (for messages).
      columns: the (model, layer) column groups, in column order; a model's layers are contiguous.
      tokens: rows every column has.
      out_dtype: dtype of the chunks (float32 unless given or every column is float64).
      text: a callable returning the token :class:`Text`, or ``None`` when the files have none.
      valid: boolean ``(tokens,)`` mask of the rows that count, or ``None`` (every row counts).
    """

    path: str
    columns: tuple[Column, ...]
    tokens: int
    out_dtype: np.dtype | None = None
    text: Callable[[], Text] | None = field(default=None, compare=False)
    valid: np.ndarray | None = field(default=None, compare=False)

    reiterable = True

    def __post_init__(self):
        for column in self.columns:
            if column.width < 1:
                raise JNeuronError(f"{self.path}: '{column.label}' has no neurons (shape (tokens, 0))")
        seen = []
        for column in self.columns:
            if seen and column.model != seen[-1] and column.model in seen:
                raise JNeuronError(f"{self.path}: the layers of model '{column.model}' are not contiguous")
            if not seen or column.model != seen[-1]:
                seen.append(column.model)
        labels = [c.label for c in self.columns]
        if len(set(labels)) != len(labels):
            raise JNeuronError(f"{self.path}: (model, layer) names repeat: {sorted(labels)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.model for c in self.columns))

    @property
    def layers(self) -> dict[str, tuple[tuple[str, int], ...]]:
        """Each model's layers and widths, in column order."""
        return {m: tuple((c.layer, c.width) for c in self.columns if c.model == m) for m in self.names}

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sum(w for _, w in layers) for layers in self.layers.values())

    @property
    def dtype(self) -> np.dtype:
        if self.out_dtype is not None:
            return np.dtype(self.out_dtype)
        every64 = all(np.dtype(c.dtype) == np.float64 for c in self.columns)
        return np.dtype(np.float64) if every64 else np.dtype(np.float32)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of every column, side by side, as :attr:`dtype`."""
        out = np.empty((stop - start, sum(c.width for c in self.columns)), self.dtype)
        edge = 0
        for column in self.columns:
            try:
                part = column.read(start, stop)
            except JNeuronError:
                raise
            except Exception as error:  # a corrupt or truncated file surfaces here, in any reader
                raise JNeuronError(
                    f"{self.path}: cannot read tokens {start}:{stop} of '{column.label}' "
                    f"(corrupt or truncated file?): {type(error).__name__}: {error}"
                ) from None
            if np.shape(part) != (stop - start, column.width):
                raise JNeuronError(
                    f"{self.path}: '{column.label}' gave shape {np.shape(part)} for tokens {start}:{stop}, "
                    f"expected {(stop - start, column.width)} (corrupt or truncated file?)"
                )
            out[:, edge : edge + column.width] = part  # filled in place: no second copy of the chunk
            edge += column.width
        return out

    def chunks(self, chunk_tokens: int, start: int = 0) -> Iterator[np.ndarray]:
        """Chunks of ``chunk_tokens`` rows (the last may be shorter), from token ``start`` on."""
        for begin in range(start, self.tokens, chunk_tokens):
            yield self.read(begin, min(begin + chunk_tokens, self.tokens))

    def rows(self, chunk_tokens: int, start: int = 0) -> Iterator[Rows]:
        """The chunks of :meth:`chunks` with their validity masks."""
        for begin, chunk in zip(range(start, self.tokens, chunk_tokens), self.chunks(chunk_tokens, start)):
            yield Rows(chunk, None if self.valid is None else self.valid[begin : begin + len(chunk)])

    def with_valid(self, valid) -> FileSource:
        """The same files with validity mask ``valid`` (boolean, one entry per token)."""
        return replace(self, valid=check_valid(valid, self.tokens, f"{self.path}: valid"))

    def select(self, terms: str | Sequence[str] | None) -> FileSource:
        """Keep some models or layers: ``"model"``, ``"model/layer"``, or a layer of a one-model source.

        ``terms`` is a sequence or a comma-separated string; the selection keeps the order given.
        """
        if terms is None or terms == "":
            return self
        if isinstance(terms, str):
            terms = [t for t in terms.split(",") if t]
        chosen: list[Column] = []
        for term in terms:
            matches = _match(self.columns, term, len(self.names))
            if not matches:
                available = ", ".join(c.label for c in self.columns)
                raise JNeuronError(f"{self.path}: no model or layer '{term}' (available: {available})")
            chosen += [c for c in matches if c not in chosen]
        return replace(self, columns=group_by_model(chosen))

    def with_dtype(self, dtype) -> FileSource:
        """The same source, read as ``dtype`` (``None`` keeps the default)."""
        return replace(self, out_dtype=None if dtype is None else np.dtype(dtype))

    def renamed(self, model: str) -> FileSource:
        """A one-model source given a new model name."""
        if len(self.names) != 1:
            raise JNeuronError(f"{self.path}: only a one-model source can be renamed, this one has {self.names}")
        return replace(self, columns=tuple(replace(c, model=model) for c in self.columns))


def group_by_model(columns: Sequence[Column]) -> tuple[Column, ...]:
    """The columns with each model's layers side by side: models in order of first appearance, each
    model's layers in their own order (a store may be written layer by layer: ``a/l0, b/l0, a/l1``)."""
    models = dict.fromkeys(c.model for c in columns)
    return tuple(c for model in models for c in columns if c.model == model)


def column_dtype(stored, where: str) -> np.dtype:
    """The dtype a column stored as ``stored`` is read as, or a one-line error naming ``where``.

    Booleans, integers and floats up to 64 bits are read as they are. bfloat16 and the other ml_dtypes
    types (float8, int4, ...) are read as float32, which holds all their values exactly; a ``.npy`` file
    records bfloat16 only as 2 raw bytes (``|V2``), which is read as bfloat16. Complex numbers, strings,
    objects, dates, records and other raw bytes are refused.
    """
    stored = np.dtype(stored)
    if _is_ml_dtype(stored) or _is_raw_bfloat16(stored):
        return np.dtype(np.float32)
    if stored.kind in "biuf" and stored.itemsize <= 8:
        return stored
    raise JNeuronError(f"{where}: {_refusal(stored)}")


def to_column_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` as read from a file, converted to their :func:`column_dtype` ``dtype`` (unchanged if it is theirs)."""
    if values.dtype == dtype:
        return values
    if _is_raw_bfloat16(values.dtype):
        values = values.view(ml_dtypes.bfloat16)
    return values.astype(dtype)


def _is_ml_dtype(dtype: np.dtype) -> bool:
    return dtype.type.__module__.partition(".")[0] == "ml_dtypes"


def _is_raw_bfloat16(dtype: np.dtype) -> bool:
    return dtype.type is np.void and dtype.names is None and dtype.itemsize == 2


def _refusal(dtype: np.dtype) -> str:
    """Why values of ``dtype`` are not activations, in a few words."""
    if dtype.kind == "c":
        return f"complex values are not supported (dtype {dtype})"
    if dtype.kind in "SUT":
        return f"strings are not activations (dtype {dtype})"
    reasons = {"O": "Python objects are not activations", "M": "dates are not activations",
               "m": "time spans are not activations", "f": "floats wider than 64 bits are not supported"}
    if dtype.kind in reasons:
        return f"{reasons[dtype.kind]} (dtype {dtype})"
    if dtype.names is not None:
        return f"structured records are not activations (dtype {dtype}); save one numeric array per layer"
    if dtype.itemsize == 1:
        return ("1-byte raw values (|V1): a float8 or int4 type the file does not name; "
                "save the activations as float32")
    return f"unsupported dtype {dtype.str} (raw bytes); save the activations as float32"


def _match(columns: Sequence[Column], term: str, models: int) -> list[Column]:
    by_model = [c for c in columns if c.model == term]
    if by_model:
        return by_model
    exact = [c for c in columns if c.label == term]
    if exact:
        return exact
    if models == 1:
        return [c for c in columns if c.layer == term]
    return []


def combine(sources: Sequence[FileSource], dtype=None) -> FileSource:
    """Several files' models side by side; they must cover the same number of tokens."""
    if not sources:
        raise JNeuronError("no activation files given")
    counts = {s.path: s.tokens for s in sources}
    if len(set(counts.values())) != 1:
        shown = ", ".join(f"{path}: {n}" for path, n in counts.items())
        raise JNeuronError(f"mismatched token counts between inputs ({shown}); they must cover the same tokens")
    names = [name for s in sources for name in s.names]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise JNeuronError(
            f"model name(s) {repeated} appear in more than one input; rename the files or select distinct models"
        )
    if len(sources) == 1:
        return sources[0].with_dtype(dtype) if dtype is not None else sources[0]
    text = next((s.text for s in sources if s.text is not None), None)
    columns = tuple(c for s in sources for c in s.columns)
    path = " + ".join(s.path for s in sources)
    valid = next((s.valid for s in sources if s.valid is not None), None)
    return FileSource(path, columns, sources[0].tokens, None if dtype is None else np.dtype(dtype), text, valid)
