"""NumPy files: ``.npy`` (memory-mapped, one model) and ``.npz`` (one model or layer per key).

An ``.npz`` key ``"model/layer"`` names a layer of a model; a key without ``/`` is a one-layer model.
Values are read as :func:`~jneuron.data.file_source.column_dtype` says (bfloat16 as float32; complex,
strings and other non-numbers refused). A ``.npy`` file cut short while it is mapped is an error at the
next read, not a crash (reading a mapped page past the end of a file kills the process with SIGBUS).

>>> import numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "a.npz")
>>> np.savez(path, **{"m/l0": np.ones((4, 2)), "m/l1": np.zeros((4, 3))})
>>> src = open_npz(path)
>>> src.names, src.layers["m"], src.read(0, 1).tolist()
(('m',), (('l0', 2), ('l1', 3)), [[1.0, 1.0, 0.0, 0.0, 0.0]])
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from jneuron.data.file_source import (
    Column,
    FileSource,
    column_dtype,
    group_by_model,
    to_column_dtype,
)
from jneuron.errors import JNeuronError


def open_npy(path: str | Path) -> FileSource:
    """A ``(tokens, neurons)`` ``.npy`` file as a one-model source named by the file's stem (memory-mapped)."""
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            shape, stored = _header(stream)
    except (ValueError, OSError, EOFError) as error:
        raise JNeuronError(f"{path}: not a readable .npy file (corrupt or truncated?): {error}") from None
    dtype = column_dtype(stored, str(path))  # before mapping: numpy cannot map objects
    if len(shape) != 2:
        raise JNeuronError(f"{path}: expected a 2-D (tokens, neurons) array, got shape {shape}")
    try:
        array = np.load(path, mmap_mode="r")  # refuses a file shorter than its header says
    except (ValueError, OSError, EOFError) as error:
        raise JNeuronError(f"{path}: not a readable .npy file (corrupt or truncated?): {error}") from None
    size = array.offset + array.nbytes

    def read(i: int, j: int) -> np.ndarray:
        _check_size(path, size)
        return to_column_dtype(array[i:j], dtype)

    return FileSource(str(path), (Column(path.stem, "", array.shape[1], dtype, read),), array.shape[0])


def _check_size(path: Path, size: int) -> None:
    """Refuse to touch a mapped ``.npy`` that no longer holds its ``size`` bytes."""
    now = path.stat().st_size
    if now < size:
        raise JNeuronError(f"{path}: the file was cut to {now} bytes while being read (its array needs {size})")


def open_npz(path: str | Path, keep: list[str] | None = None) -> FileSource:
    """An ``.npz`` archive: one column group per key (``model/layer`` or ``model``), read on first use.

    ``keep``: selector terms (``model``, ``model/layer`` or a layer name); other arrays are not checked.
    """
    path = Path(path)
    try:
        with open(path, "rb") as stream, np.load(stream) as archive:
            every = list(archive.files)
            keys = [k for k in every if keep is None or _kept(k, keep)]
            shapes = {k: _shape(archive, k) for k in keys}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise JNeuronError(f"{path}: not a readable .npz file (corrupt or truncated?): {error}") from None
    missing = [t for t in keep or () if not any(_kept(k, [t]) for k in every)]
    if missing:
        raise JNeuronError(f"{path}: no model or layer '{missing[0]}' (available: {', '.join(every)})")
    if not keys:
        raise JNeuronError(f"{path}: the archive holds no arrays")
    cache: dict[str, np.ndarray] = {}

    def reader(key: str, dtype: np.dtype):
        def read(i: int, j: int) -> np.ndarray:
            if key not in cache:
                with np.load(path) as archive:
                    cache[key] = to_column_dtype(archive[key], dtype)
            return cache[key][i:j]

        return read

    columns = []
    for key in keys:
        shape, stored = shapes[key]
        if len(shape) != 2:
            raise JNeuronError(f"{path}: array '{key}' has shape {shape}; expected 2-D (tokens, neurons)")
        model, _, layer = key.partition("/")
        dtype = column_dtype(stored, f"{path}: array '{key}'")
        columns.append(Column(model, layer, shape[1], dtype, reader(key, dtype)))
    tokens = {c.label: shapes[c.label if c.layer else c.model][0][0] for c in columns}
    if len(set(tokens.values())) != 1:
        raise JNeuronError(f"{path}: arrays have mismatched token counts: {tokens}")
    return FileSource(str(path), group_by_model(columns), next(iter(tokens.values())))


def _kept(key: str, terms: list[str]) -> bool:
    model, _, layer = key.partition("/")
    return any(term in (key, model, layer) for term in terms)


def _shape(archive, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one archive member from its header, without reading the data."""
    with archive.zip.open(f"{key}.npy") as member:
        return _header(member)


def _header(stream) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the header of a ``.npy`` stream."""
    version = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(stream)
    return shape, dtype
