"""Open activation files of any supported format as one chunk source.

Formats, by path: a folder with ``zarr.json`` (jneuron zarr v3 store), ``.npy`` (memory-mapped),
``.npz``, ``.hdf5``/``.h5`` (NeuroX HDF5) and ``.json``/``.jsonl`` (NeuroX JSON-lines). A path may end
in ``#selector`` to keep some models or layers: ``acts.zarr#mlp0,mlp1/layers/0``. The selector applies
before the file is checked, so arrays it leaves out (an ``.npz``'s 1-D ``position``) are never read.

``layers_as_models=True`` makes every layer its own model, named ``model/layer``: the layers of one
network can then be compared with each other as MaxCorr, MinCorr, LinReg and the similarity matrices
compare models.

>>> import numpy as np, tempfile, os
>>> folder = tempfile.mkdtemp()
>>> np.save(os.path.join(folder, "a.npy"), np.ones((10, 3), np.float32))
>>> src = open_activations(os.path.join(folder, "a.npy"))
>>> src.names, src.widths, src.tokens
(('a',), (3,), 10)
>>> np.savez(os.path.join(folder, "m.npz"), **{"m/l0": np.ones((10, 2)), "m/l1": np.ones((10, 4))})
>>> open_activations(os.path.join(folder, "m.npz"), layers_as_models=True).names
('m/l0', 'm/l1')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from jneuron.data.atomic import clean_leftovers
from jneuron.data.file_source import Column as Column
from jneuron.data.file_source import FileSource as FileSource
from jneuron.data.file_source import Text as Text
from jneuron.data.file_source import combine as combine
from jneuron.errors import JNeuronError

SUFFIXES = (".npy", ".npz", ".hdf5", ".h5", ".json", ".jsonl", ".zarr")


def split_selector(path: str | Path) -> tuple[Path, str | None]:
    """``"acts.zarr#m/l"`` -> ``(Path("acts.zarr"), "m/l")``; a path that exists as given is never split."""
    text = str(path)
    if "#" in text and not Path(text).exists():
        base, _, selector = text.rpartition("#")
        return Path(base), selector or None
    return Path(text), None


def open_activations(path: str | Path, select: str | Sequence[str] | None = None, *, tokens=None,
                     labels=None, dtype=None, valid=None, layers_as_models: bool = False) -> FileSource:
    """Open one activation file or store (see the module docstring) as a streaming source.

    Args:
      path: the file or store folder, optionally with a ``#selector`` suffix.
      select: models or layers to keep (``"model"``, ``"model/layer"``, comma-separated), in that order.
      tokens, labels: NeuroX-style text files (one sentence per line) aligned with the rows.
      dtype: read chunks as this dtype (default float32, or float64 if the file is float64).
      layers_as_models: make every (selected) layer its own model, named ``model/layer``.
      valid: boolean ``(tokens,)`` mask of the rows that count (padding, special tokens and filtered
        rows are ``False``: no statistic sees them); default every row.
    """
    path, selector = split_selector(path)
    if not path.exists():
        clean_leftovers(path)  # a store whose replacement was cut short comes back (see jneuron.data.atomic)
    if not path.exists():
        raise JNeuronError(f"no such file or store: {path}")
    suffix = path.suffix.lower()
    if path.is_dir():
        from jneuron.data.store import open_store

        if not (path / "zarr.json").is_file():
            raise JNeuronError(f"{path}: a folder but not a zarr v3 activation store (no zarr.json)")
        source = open_store(path)
    elif suffix == ".npy":
        from jneuron.data.numpy_files import open_npy

        source = open_npy(path)
    elif suffix == ".npz":
        from jneuron.data.numpy_files import open_npz

        source = open_npz(path, keep=[t for terms in (selector, select) for t in _terms(terms)] or None)
    elif suffix in (".hdf5", ".h5"):
        from jneuron.data.neurox import open_neurox_hdf5

        source = open_neurox_hdf5(path, tokens, labels)
    elif suffix in (".json", ".jsonl"):
        from jneuron.data.neurox import open_neurox_json

        source = open_neurox_json(path, tokens, labels)
    else:
        raise JNeuronError(f"{path}: unknown activation format '{suffix}' (expected one of {', '.join(SUFFIXES)})")
    if (tokens is not None or labels is not None) and suffix not in (".hdf5", ".h5", ".json", ".jsonl"):
        raise JNeuronError(f"{path}: token and label files go with NeuroX .hdf5/.json activations only")
    for terms in (selector, select):
        source = source.select(terms)
    if layers_as_models:
        source = as_layer_models(source)
    source = source.with_dtype(dtype) if dtype is not None else source
    return source.with_valid(valid) if valid is not None else source


def as_layer_models(source: FileSource) -> FileSource:
    """The same columns with every layer its own model, named by its label (``model/layer``).

    >>> import numpy as np
    >>> a = np.zeros((4, 3))
    >>> src = FileSource("x", (Column("m", "0", 1, a.dtype, None), Column("m", "1", 2, a.dtype, None)), 4)
    >>> as_layer_models(src).layers
    {'m/0': (('', 1),), 'm/1': (('', 2),)}
    """
    return replace(source, columns=tuple(replace(c, model=c.label, layer="") for c in source.columns))


def _terms(terms: str | Sequence[str] | None) -> list[str]:
    if terms is None:
        return []
    return [t for t in terms.split(",") if t] if isinstance(terms, str) else list(terms)
