"""Chunk sources: one interface over in-memory arrays, files and iterators of chunks, with row validity.

A source holds several *models* (column groups) over the same tokens and yields them chunk by chunk,
side by side, as one ``(tokens, sum of widths)`` float array, so data larger than memory streams.

Every source answers ``rows(chunk_tokens)`` with :class:`Rows`: the chunk and its boolean validity
mask. Invalid rows (padding of a batch of sequences, special tokens, rows a user filters out) count in
no statistic, mean, count or ranking, and a NaN in them is ignored; rows keep their numbers (errors name
the caller's row). Give the mask as ``as_source(..., valid=mask)`` or
``jn.open_activations(..., valid=mask)`` (one entry per token), or let each item of an iterator carry
its own: ``Rows(parts, valid)``. ``chunks(chunk_tokens)`` yields the raw rows, every row.

>>> import numpy as np
>>> src = as_source([np.ones((5, 2)), np.zeros((5, 3))], valid=np.array([1, 1, 0, 1, 1], bool))
>>> src.names, src.widths, [c.shape for c in src.chunks(4)]
(('model0', 'model1'), (2, 3), [(4, 5), (1, 5)])
>>> [r.valid.tolist() for r in src.rows(4)]
[[True, True, False, True], [True]]
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from jneuron.data.checks import as_2d, check_valid
from jneuron.errors import JNeuronError


def float_dtype(dtype) -> np.dtype:
    """float64 stays float64; everything else (f16, bf16, ints, bool) is read as float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def read_dtype(dtype) -> np.dtype | None:
    """The dtype chunks are read as: ``None`` (follow the input), ``"float32"``, ``"float64"`` or a numpy dtype.

    >>> read_dtype("float64"), read_dtype(None)
    (dtype('float64'), None)
    """
    if dtype is None:
        return None
    try:
        chosen = np.dtype(dtype)
    except TypeError:
        chosen = np.dtype(np.object_)
    if chosen.kind != "f" or chosen.itemsize not in (4, 8) or isinstance(dtype, (int, float)):
        raise JNeuronError(f"dtype: expected None, 'float32' or 'float64', got {dtype!r}")
    return chosen


_READ_AS: contextvars.ContextVar[np.dtype | None] = contextvars.ContextVar("jneuron_read_dtype", default=None)

def requested_dtype(natural) -> np.dtype:
    """The dtype the running entry point's ``dtype=`` asks for (see :func:`reads_dtype`), else ``natural``.

    >>> requested_dtype(np.float32)
    dtype('float32')
    """
    chosen = _READ_AS.get()
    return np.dtype(natural) if chosen is None else chosen


_DTYPE_DOC = ("      dtype: the dtype the chunks are read and computed in: ``None`` (default) follows the input\n"
              "        (float64 stays float64, anything else is float32), or ``\"float32\"``/``\"float64\"``.\n")


def reads_dtype(function):
    """Give a streamed entry point the keyword-only ``dtype=`` of the pass tail.

    Every source the entry point builds with :func:`as_source` while it runs is read as that dtype
    (:func:`read_dtype`); its computation follows the chunks' dtype.
    """
    signature = inspect.signature(function)
    parameters = list(signature.parameters.values())
    at = next((i for i, p in enumerate(parameters) if p.kind is inspect.Parameter.VAR_KEYWORD), len(parameters))
    parameters.insert(at, inspect.Parameter("dtype", inspect.Parameter.KEYWORD_ONLY, default=None))

    @functools.wraps(function)
    def wrapped(*args, dtype=None, **kwargs):
        token = _READ_AS.set(read_dtype(dtype))
        try:
            return function(*args, **kwargs)
        finally:
            _READ_AS.reset(token)

    wrapped.__signature__ = signature.replace(parameters=parameters)
    wrapped.__doc__ = _with_dtype_doc(function.__doc__ or "")
    return wrapped


def _with_dtype_doc(doc: str) -> str:
    """``doc`` with the ``dtype`` argument documented at the end of its ``Args:`` section."""
    start = doc.find("    Args:\n")
    if start < 0:
        return doc.rstrip() + "\n\n    Args:\n" + _DTYPE_DOC
    end = doc.find("\n\n", start)
    if end < 0:  # the Args section ends the docstring
        return doc.rstrip() + "\n" + _DTYPE_DOC + "    "
    return doc[: end + 1] + _DTYPE_DOC + doc[end + 1 :]


class Rows(NamedTuple):
    """One chunk of rows and which of them count.

    Attributes:
      parts: the rows: one ``(rows, neurons)`` array, or a tuple with one such array per model.
      valid: boolean ``(rows,)`` mask, ``True`` where a row counts; ``None``: every row counts.

    >>> import numpy as np
    >>> Rows(np.zeros((3, 2)), np.array([True, False, True])).valid.sum()
    np.int64(2)
    """

    parts: object
    valid: np.ndarray | None = None


@dataclass(frozen=True)
class ArraySource:
    """Models given as arrays (numpy, memory-mapped or JAX), all with the same number of tokens.

    ``valid`` (boolean, one entry per token, or ``None``) says which rows count.
    """

    arrays: tuple
    names: tuple[str, ...]
    valid: np.ndarray | None = field(default=None, compare=False)
    out_dtype: np.dtype | None = None

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(a.shape[1] for a in self.arrays)

    @property
    def tokens(self) -> int:
        return self.arrays[0].shape[0]

    @property
    def dtype(self) -> np.dtype:
        if self.out_dtype is not None:
            return self.out_dtype
        return float_dtype(np.result_type(*[np.dtype(a.dtype) for a in self.arrays]))

    reiterable = True

    def with_dtype(self, dtype) -> ArraySource:
        """The same arrays, read as ``dtype`` (``None``: follow the arrays; see :func:`read_dtype`)."""
        return replace(self, out_dtype=read_dtype(dtype))

    def with_valid(self, valid) -> ArraySource:
        """The same arrays with validity mask ``valid`` (boolean, one entry per token)."""
        return replace(self, valid=check_valid(valid, self.tokens))

    def chunks(self, chunk_tokens: int, start: int = 0) -> Iterator[np.ndarray]:
        """Chunks of ``chunk_tokens`` rows (the last may be shorter), from token ``start`` on."""
        for begin in range(start, self.tokens, chunk_tokens):
            stop = min(begin + chunk_tokens, self.tokens)
            parts = [np.asarray(a[begin:stop], dtype=self.dtype) for a in self.arrays]
            yield parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def rows(self, chunk_tokens: int, start: int = 0) -> Iterator[Rows]:
        """The chunks of :meth:`chunks` with their validity masks."""
        for begin, chunk in zip(range(start, self.tokens, chunk_tokens), self.chunks(chunk_tokens, start)):
            yield Rows(chunk, None if self.valid is None else self.valid[begin : begin + len(chunk)])

    def parts(self, chunk_tokens: int, start: int = 0) -> Iterator[list[np.ndarray]]:
        """The chunks of :meth:`chunks` as each model's rows, not joined (views where no conversion is due)."""
        for begin in range(start, self.tokens, chunk_tokens):
            yield [np.asarray(a[begin : begin + chunk_tokens], dtype=self.out_dtype) for a in self.arrays]


@dataclass(frozen=True)
class IteratorSource:
    """Models given chunk by chunk: each item is a tuple of per-model arrays (or one array), or a
    :class:`Rows` of them with its validity mask.

    ``make_iterator`` is called once per pass; a plain iterator can be consumed only once, so
    analyses that need several passes over it raise a clear error instead.
    """

    make_iterator: Callable[[], Iterator]
    names: tuple[str, ...]
    widths: tuple[int, ...]
    dtype: np.dtype
    reiterable: bool
    tokens: int | None = None
    first: object = field(default=None, compare=False, repr=False)  # the first item (a checkpoint's binding)
    out_dtype: np.dtype | None = None

    def with_dtype(self, dtype) -> IteratorSource:
        """The same chunks, read as ``dtype`` (``None``: follow each chunk; see :func:`read_dtype`)."""
        chosen = read_dtype(dtype)
        return replace(self, out_dtype=chosen, dtype=self.dtype if chosen is None else chosen)

    def chunks(self, chunk_tokens: int) -> Iterator[np.ndarray]:
        """Every row, in chunks of at most ``chunk_tokens`` rows."""
        for rows in self.rows(chunk_tokens):
            yield rows.parts

    def rows(self, chunk_tokens: int) -> Iterator[Rows]:
        """Chunks of at most ``chunk_tokens`` rows (each item cut to size), with their validity masks."""
        for index, item in enumerate(self.make_iterator()):
            valid = item.valid if isinstance(item, Rows) else None
            parts = _chunk_parts(item, index, self.names, self.widths, self.out_dtype)
            joined = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            if valid is not None:
                valid = check_valid(valid, joined.shape[0], f"chunk {index}: valid")
            for start in range(0, joined.shape[0], chunk_tokens):
                yield Rows(joined[start : start + chunk_tokens],
                           None if valid is None else valid[start : start + chunk_tokens])


def source_rows(source, chunk_tokens: int, start: int = 0) -> Iterator[Rows]:
    """``source.rows(chunk_tokens[, start])``, for any source (one with only ``chunks`` has every row valid)."""
    method = getattr(source, "rows", None)
    if method is None:
        chunks = source.chunks(chunk_tokens, start=start) if start else source.chunks(chunk_tokens)
        return (Rows(chunk) for chunk in chunks)
    return method(chunk_tokens, start=start) if start else method(chunk_tokens)


def item_parts(item) -> list:
    """The per-model arrays of one iterator item (a :class:`Rows`, a tuple of arrays, or one array)."""
    if isinstance(item, Rows):
        item = item.parts
    return list(item) if isinstance(item, (tuple, list)) else [item]


def _chunk_parts(item, index: int, names, widths, dtype=None) -> list[np.ndarray]:
    parts = item_parts(item)
    if len(parts) != len(names):
        raise JNeuronError(f"chunk {index}: expected {len(names)} model arrays, got {len(parts)}")
    arrays = [np.asarray(as_2d(p, f"chunk {index}, model '{n}'")) for p, n in zip(parts, names)]
    lengths = {a.shape[0] for a in arrays}
    if len(lengths) != 1:
        counts = ", ".join(f"'{n}': {a.shape[0]}" for n, a in zip(names, arrays))
        raise JNeuronError(f"chunk {index}: models have different token counts ({counts})")
    for array, name, width in zip(arrays, names, widths):
        if array.shape[1] != width:
            raise JNeuronError(f"chunk {index}, model '{name}': expected {width} neurons, got {array.shape[1]}")
    if dtype is None:
        dtype = float_dtype(np.result_type(*[a.dtype for a in arrays]))
    return [a.astype(dtype, copy=False) for a in arrays]


Source = ArraySource | IteratorSource


def name_models(models, given: Sequence[str] | None, count: int) -> tuple[str, ...]:
    """The names of ``count`` models: ``given``, else a mapping's keys, else ``model0, model1, ...``; unique.

    >>> name_models({"a": 1, "b": 2}, None, 2), name_models([1, 2], None, 2)
    (('a', 'b'), ('model0', 'model1'))
    """
    if given is not None:
        names = tuple(str(n) for n in given)
    elif isinstance(models, Mapping):
        names = tuple(str(k) for k in models)
    else:
        names = tuple(f"model{i}" for i in range(count))
    if len(names) != count:
        raise JNeuronError(f"got {len(names)} names for {count} models")
    if len(set(names)) != len(names):
        raise JNeuronError(f"model names must be unique, got {names}")
    return names


def as_source(models, *, names: Sequence[str] | None = None, valid=None, dtype=None) -> Source:
    """Turn arrays, a mapping of name to array, an iterator of chunks, or a source into a source.

    Args:
      models: a source; a sequence or mapping of ``(tokens, neurons)`` arrays (one per model); an
        iterator of chunks, each a tuple of per-model arrays (or a :class:`Rows` of them with its own
        validity mask); or a callable returning such an iterator (re-iterable, so multi-pass analyses
        can use it).
      names: model names (defaults to the mapping's keys or ``model0, model1, ...``).
      valid: boolean ``(tokens,)`` mask of the rows that count (arrays and file sources only; chunks
        carry their own masks as :class:`Rows`). ``None``: every row counts.
      dtype: read the chunks as this dtype (:func:`read_dtype`); ``None``: the dtype of the entry point
        being run (its ``dtype=``), else follow the input.
    """
    chosen = read_dtype(dtype) if dtype is not None else _READ_AS.get()
    source = _as_source(models, names, valid)
    return source if chosen is None or not hasattr(source, "with_dtype") else source.with_dtype(chosen)


def _as_source(models, names, valid) -> Source:
    if isinstance(models, (ArraySource, IteratorSource)) or is_source(models):
        if valid is None:
            return models
        if not hasattr(models, "with_valid"):
            raise JNeuronError("valid=: give a chunk iterator's masks with its chunks, as Rows(parts, valid)")
        return models.with_valid(valid)
    if isinstance(models, Mapping) or (isinstance(models, Sequence) and not isinstance(models, str)):
        values = list(models.values()) if isinstance(models, Mapping) else list(models)
        model_names = name_models(models, names, len(values))
        arrays = tuple(as_2d(a, f"model '{n}'") for a, n in zip(values, model_names))
        if arrays:
            tokens = {a.shape[0] for a in arrays}
            if len(tokens) != 1:
                counts = ", ".join(f"'{n}': {a.shape[0]}" for n, a in zip(model_names, arrays))
                raise JNeuronError(f"models must cover the same tokens; token counts differ ({counts})")
        tokens = arrays[0].shape[0] if arrays else 0
        return ArraySource(arrays, model_names, None if valid is None else check_valid(valid, tokens))
    if valid is not None:
        raise JNeuronError("valid=: give a chunk iterator's masks with its chunks, as Rows(parts, valid)")
    if callable(models):
        return _iterator_source(models, names, reiterable=True)
    if isinstance(models, (Iterator, Iterable)):
        iterator = iter(models)
        return _iterator_source(lambda: iterator, names, reiterable=False)
    raise JNeuronError(f"cannot read activations from {type(models).__name__}")


def is_source(value) -> bool:
    """Any object with the source interface (e.g. a file source from ``jn.open_activations``) is a source."""
    return all(hasattr(value, a) for a in ("names", "widths", "dtype", "reiterable", "chunks"))


def _iterator_source(make_iterator, names, reiterable: bool) -> IteratorSource:
    iterator = make_iterator()
    try:
        first = next(iterator)
    except StopIteration:
        raise JNeuronError("the chunk iterator is empty: no tokens to analyse") from None
    parts = item_parts(first)
    model_names = name_models(None, names, len(parts))
    widths = tuple(as_2d(p, f"chunk 0, model '{n}'").shape[1] for p, n in zip(parts, model_names))
    dtype = float_dtype(np.result_type(*[np.dtype(getattr(p, "dtype", np.float32)) for p in parts]))
    first_pass = [itertools.chain([first], iterator)]

    def iterate() -> Iterator:
        return first_pass.pop() if first_pass else make_iterator()

    return IteratorSource(iterate, model_names, widths, dtype, reiterable, first=first)
