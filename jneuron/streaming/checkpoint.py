"""The checkpoint format of the streaming pass: what a checkpoint is bound to, and how it is saved and read.

A pass with ``checkpoint=folder`` saves its running statistics there every few chunks and at the end,
one ``stats-<digest>.npz`` file per pass configuration and data (:func:`checkpoint_file`). The file
holds the statistics' leaves, the chunks done, whether the pass finished, the binding (which data and
configuration it belongs to, :func:`checkpoint_binding`) and a blake2b digest over all of it, so an
edited or damaged file is an error and another data set's file is never used (it starts over with a
:class:`~jneuron.errors.StaleCheckpointWarning`). Files are written atomically.

>>> import numpy as np, jneuron as jn
>>> identity, state = checkpoint_binding(jn.as_source([np.ones((4, 2))]), 2)
>>> identity["widths"], identity["tokens"], sorted(state)
([2], 4, ['checksums', 'content', 'files'])
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh

from jneuron.data.atomic import atomic_write_bytes
from jneuron.data.labelled import LabelledSource
from jneuron.data.source import ArraySource, IteratorSource, Rows, Source, item_parts
from jneuron.errors import JNeuronError, StaleCheckpointWarning
from jneuron.kernels import moments as kmoments
from jneuron.kernels.moments import Stats

FORMAT = 2  # of the saved statistics: raised whenever their leaves change (2: every pass keeps the neurons' range),
# so a file of an older jneuron is never read as this one's (it is not found, and the pass starts over)
CONTENT_ROWS = 1024  # rows at each end of the data whose bytes a checkpoint is bound to (with files' sizes and times)


def checkpoint_binding(source: Source, chunk_tokens: int) -> tuple[dict, dict]:
    """What a checkpoint of a pass over ``source`` is bound to: ``(identity, state)``, both JSON-ready.

    ``identity`` names the data: the source's kind, model names, widths, token count and dtype; for
    files (:func:`jneuron.open_activations`), the files' resolved paths and the selected (model, layer) columns; for
    memory-mapped arrays, their files. It picks the checkpoint file, so each data set (a loop over
    layers, say) keeps its own. ``state`` says whether the data are still the same: every file's size
    and modification time (every file in a store's folder), and a blake2b hash of the first and last
    ``CONTENT_ROWS`` rows; for numpy arrays in memory also a checksum over all their bytes (about
    0.15 s per GiB), so a value changed anywhere counts. An iterator that can be read only once is
    bound to its first chunk only (the one it has already given), a re-iterable callable or other
    source to its first ``chunk_tokens`` rows, read once more. A :class:`~jneuron.data.labelled.LabelledSource`
    is bound to its source's binding and a checksum of every label.
    """
    if isinstance(source, LabelledSource):
        identity, state = checkpoint_binding(source.source, chunk_tokens)
        identity.update(kind=f"LabelledSource/{identity['kind']}", names=list(source.names),
                        widths=[int(w) for w in source.widths])
        return identity, {**state, "labels": _checksum(np.ascontiguousarray(source.ids))}
    identity = {"kind": type(source).__name__, "names": list(source.names),
                "widths": [int(w) for w in source.widths], "tokens": getattr(source, "tokens", None),
                "source_dtype": str(np.dtype(source.dtype))}
    state: dict = {}
    columns = getattr(source, "columns", None)
    if columns is not None and hasattr(source, "path"):  # a FileSource: files by path (" + " joins several)
        identity["columns"] = [[c.model, c.layer, int(c.width), str(np.dtype(c.dtype))] for c in columns]
        paths = [Path(p) for p in str(source.path).split(" + ")]
        identity["files"] = [str(p.resolve()) for p in paths]
        state["files"] = [_file_state(p) for p in paths]
    if isinstance(source, ArraySource):
        arrays = []
        for a in source.arrays:
            entry = {"shape": list(a.shape), "dtype": str(np.dtype(a.dtype))}
            if isinstance(a, np.memmap) and getattr(a, "filename", None):
                entry["file"] = str(Path(a.filename).resolve())
            arrays.append(entry)
        identity["arrays"] = arrays
        state["files"] = [_file_state(Path(e["file"])) for e in arrays if "file" in e]
        state["checksums"] = [_checksum(a) for a in source.arrays]
    valid = getattr(source, "valid", None)
    if valid is not None:
        state["valid"] = hashlib.blake2b(np.packbits(valid).tobytes(), digest_size=16).hexdigest()
    state["content"] = _content_hash(source, chunk_tokens)
    return identity, state


def _file_state(path: Path) -> list:
    """``[relative path, size, mtime_ns]`` of a file, or of every file under a folder; ``[]`` if missing."""
    try:
        if not path.is_dir():
            info = path.stat()
            return [[path.name, info.st_size, info.st_mtime_ns]]
        entries = []
        for folder, _, names in sorted(os.walk(path)):
            for name in sorted(names):
                full = Path(folder) / name
                info = full.stat()
                entries.append([str(full.relative_to(path)), info.st_size, info.st_mtime_ns])
        return entries
    except OSError:
        return []


def _checksum(array) -> str | None:
    """A checksum over every byte of a numpy array held in memory (None for others: files have their
    sizes and times, device arrays are not copied to the host for it)."""
    if not isinstance(array, np.ndarray) or isinstance(array, np.memmap):
        return None
    if array.flags.c_contiguous and array.nbytes % 8 == 0:
        return str(int(np.add.reduce(array.reshape(-1).view(np.uint64), dtype=np.uint64)))
    return repr(float(np.sum(array, dtype=np.float64)))  # a strided view: its float64 sum


def _content_hash(source: Source, chunk_tokens: int) -> str:
    """blake2b of the first and last ``CONTENT_ROWS`` rows (see :func:`checkpoint_binding`)."""
    digest = hashlib.blake2b(digest_size=16)

    def add(block) -> None:
        block = np.ascontiguousarray(np.asarray(block))
        digest.update(str((block.shape, block.dtype.str)).encode())
        digest.update(block.tobytes())

    tokens = getattr(source, "tokens", None)
    rows = min(CONTENT_ROWS, chunk_tokens)
    if isinstance(source, ArraySource):
        for a in source.arrays:
            add(a[:rows])
            add(a[max(0, tokens - rows):])
    elif hasattr(source, "read") and tokens:  # a FileSource reads any token range
        add(source.read(0, min(rows, tokens)))
        add(source.read(max(0, tokens - rows), tokens))
    elif isinstance(source, IteratorSource):
        if source.first is not None:
            for part in item_parts(source.first):
                add(part)
            if isinstance(source.first, Rows) and source.first.valid is not None:
                add(source.first.valid)
    elif source.reiterable:
        add(next(iter(source.chunks(chunk_tokens)), np.zeros((0, 0))))
    return digest.hexdigest()


def checkpoint_file(folder, source: Source, tiles, chunk_tokens: int, dtype,
                    mesh: Mesh | None = None, key: dict | None = None) -> tuple[Path, str]:
    """The checkpoint file of this pass configuration and data, and the binding it must carry.

    ``tiles`` name the co-moments' blocks (empty for another statistic); ``key`` (JSON-ready) is what
    else the statistic depends on (an analysis's name and parameters)."""
    identity, state = checkpoint_binding(source, chunk_tokens)
    layout = {**identity, "tiles": [list(t) for t in tiles], "chunk_tokens": int(chunk_tokens),
              "dtype": str(np.dtype(dtype)), "format": FORMAT}
    if key is not None:
        layout["statistic"] = key
    if mesh is not None:  # the running state has one statistic per device
        layout["mesh"] = {str(name): int(size) for name, size in mesh.shape.items()}
    key = json.dumps(layout, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(folder) / f"stats-{digest}.npz", json.dumps({"layout": layout, "data": state}, sort_keys=True)


def expected_rows(source: Source) -> int | None:
    """Tokens of a source read in regular chunks (then ``count == min(chunks done * rows, tokens)``); None
    where the count is not known from the chunks done (an iterator, or a validity mask)."""
    if getattr(source, "valid", None) is not None:
        return None
    return None if isinstance(source, IteratorSource) else getattr(source, "tokens", None)


def _digest(binding: str, done: int, finished: bool, scale, leaves) -> str:
    """blake2b over everything a checkpoint holds: a changed counter or statistic does not match it."""
    digest = hashlib.blake2b(digest_size=32)
    digest.update(json.dumps([binding, int(done), bool(finished)]).encode())
    for array in ([] if scale is None else [np.asarray(scale)]) + [np.asarray(x) for x in leaves]:
        array = np.ascontiguousarray(array)
        digest.update(str((array.shape, array.dtype.str)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def load_checkpoint(file: Path, empty, binding: str, rows_per_chunk: int, tokens: int | None,
                    count_of: Callable | None = None, position: bool = False):
    """``(state, chunks done, finished, scale exponents or None)`` from ``file``; an empty start when there
    is none or it belongs to other data (with a :class:`StaleCheckpointWarning`). With ``position``, a fifth
    item: the saved ``(rows counted, caller rows read)`` (``(0, 0)`` for an empty start; where the file has
    none, both are the chunks done times ``rows_per_chunk``)."""
    start = (empty, 0, False, None) + (((0, 0),) if position else ())
    if not file.is_file():
        return start
    leaves, treedef = jax.tree.flatten(empty)
    try:
        with np.load(file) as saved:
            stored = str(saved["binding"]) if "binding" in saved else None
            if stored != binding:
                _warn_stale(file, stored, binding)
                return start
            loaded = [saved[f"leaf{i}"] for i in range(len(leaves))]
            done, finished = int(saved["chunks_done"]), bool(saved["finished"])
            scale = saved["scale"] if "scale" in saved else None
            where = saved["position"] if "position" in saved else None
            digest = str(saved["digest"])
    except Exception as error:
        raise JNeuronError(f"{file}: unreadable checkpoint (delete it to start over): {error}") from None
    if _digest(binding, done, finished, scale, loaded + ([] if where is None else [where])) != digest:
        raise JNeuronError(f"{file}: checkpoint does not match its digest (edited or damaged); delete it to "
                           "start over")
    for i, (old, new) in enumerate(zip(leaves, loaded)):
        if old.shape != new.shape or old.dtype != new.dtype:
            raise JNeuronError(f"{file}: checkpoint leaf {i} does not match this run (delete it to start over)")
    rows = done * rows_per_chunk if tokens is None else min(done * rows_per_chunk, tokens)
    saved_position = (rows, rows) if where is None else tuple(int(v) for v in where)
    placed = [x if isinstance(old, np.ndarray) else jax.device_put(x, old.sharding)  # sharded state stays sharded
              for old, x in zip(leaves, loaded)]  # (a host state stays numpy)
    state = jax.tree.unflatten(treedef, placed)
    if count_of is not None:
        count = count_of(state)
        expected = done * rows_per_chunk if tokens is None else min(done * rows_per_chunk, tokens)
        wrong = count > expected if tokens is None else (count != expected or (finished and count != tokens))
        if done < 0 or wrong:
            raise JNeuronError(f"{file}: checkpoint counts {count} tokens after {done} chunks of {rows_per_chunk} "
                               f"rows (of {tokens if tokens is not None else 'unknown'}); delete it to start over")
    scale = None if scale is None else np.asarray(scale, np.int32)
    return (state, done, finished, scale) + ((saved_position,) if position else ())


def _warn_stale(file: Path, stored: str | None, binding: str) -> None:
    """One line: the checkpoint is someone else's, and what differs."""
    if stored is None:
        why = "it predates data binding"
    else:
        try:
            old, new = json.loads(stored), json.loads(binding)
            changed = [k for k in new["layout"] if old["layout"].get(k) != new["layout"][k]]
            changed += [k for k in new["data"] if old["data"].get(k) != new["data"][k]]
        except (ValueError, KeyError, TypeError, AttributeError):  # another version's binding
            changed = []
        names = {"files": "the files changed since", "content": "the data differ", "checksums": "the data differ"}
        why = ", ".join(dict.fromkeys(names.get(k, k) for k in changed)) or "its binding differs"
    warnings.warn(f"{file}: checkpoint written for other data ({why}); starting over", StaleCheckpointWarning,
                  stacklevel=4)


def save_checkpoint(file: Path, state, done: int, finished: bool, binding: str, scale=None, position=None) -> None:
    """Write the running ``state`` after ``done`` chunks (atomically), with its digest.

    ``scale``: the co-moments' power-of-two exponents; ``position``: ``(rows counted, caller rows read)``
    of a pass with invalid rows, so a resumed pass names the caller's rows."""
    buffer = io.BytesIO()
    leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
    extra = {} if scale is None else {"scale": np.asarray(scale, np.int32)}
    where = [] if position is None else [np.asarray(position, np.int64)]
    if where:
        extra["position"] = where[0]
    np.savez(buffer, chunks_done=done, finished=finished, binding=np.asarray(binding),
             digest=np.asarray(_digest(binding, done, finished, extra.get("scale"), leaves + where)), **extra,
             **{f"leaf{i}": x for i, x in enumerate(leaves)})
    atomic_write_bytes(file, buffer.getvalue())


def save_stats(file: Path, stats: Stats, done: int, finished: bool, binding: str, position=None) -> None:
    """:func:`save_checkpoint` for co-moments (their power-of-two scale saved as exponents)."""
    scale = None if stats.scale is None else kmoments.exponents(stats)
    save_checkpoint(file, stats._replace(scale=None), done, finished, binding, scale, position)
