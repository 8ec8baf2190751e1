"""Argument, input and output helpers shared by the subcommands, so every command behaves the same way.

Inputs are paths to activation files or stores of any format :func:`jneuron.open_activations` reads (zarr store
folder, ``.npy``, ``.npz``, NeuroX ``.hdf5``/``.json``), each optionally ending in ``#selector`` to keep
some models or layers (``acts.zarr#mlp0/layers/0,mlp1``). Outputs go to ``--out``, each file written
atomically and the run's files together (:mod:`jneuron.cli.outputs`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from jneuron.cli.progress import Progress
from jneuron.data.atomic import atomic_write_json, atomic_write_text
from jneuron.data.files import FileSource, combine, open_activations
from jneuron.errors import JNeuronError

DTYPES = ("float32", "float64")


def add_out_argument(parser: argparse.ArgumentParser, default: str = "jneuron-output") -> None:
    """The ``--out`` folder every command writes its results to; the command line stages it (``out_set``),
    so the run's results appear there together or not at all."""
    parser.add_argument("--out", type=Path, default=Path(default), help=f"folder for the results (default {default})")
    parser.set_defaults(out_set=True)


def add_text_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tokens`` and ``--labels``: NeuroX-style text files (one sentence per line) for NeuroX inputs."""
    parser.add_argument("--tokens", type=Path, help="token file for NeuroX .hdf5/.json inputs (one sentence per line)")
    parser.add_argument("--labels", type=Path, help="label file for NeuroX .hdf5/.json inputs (one sentence per line)")


def add_streaming_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dtype``, ``--chunk-tokens``, ``--devices`` and ``--progress``, for commands that stream inputs."""
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="compute dtype (default float32, or float64 for float64 inputs)")
    add_chunk_argument(parser)
    add_devices_argument(parser)
    parser.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                        help="progress line on stderr: 'auto' shows it when stderr is a terminal")


def add_chunk_argument(parser: argparse.ArgumentParser) -> None:
    """``--chunk-tokens``."""
    parser.add_argument("--chunk-tokens", type=_positive_int, default=None, metavar="N",
                        help="tokens per streamed chunk (default: about 64 MiB of activations)")


def add_devices_argument(parser: argparse.ArgumentParser) -> None:
    """``--devices`` (use with :func:`device_scope` and :func:`shard_count`)."""
    parser.add_argument("--devices", default=None, metavar="SPEC",
                        help="a number N shards the tokens over N devices; or one device to run on: 'cpu', "
                             "'gpu', 'tpu', optionally with an index ('gpu:1')")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def compute_dtype(args: argparse.Namespace) -> np.dtype | None:
    """The ``--dtype`` asked for: the inputs are read as it, and the analyses compute in it (float64 in a
    local 64-bit mode, see :mod:`jneuron.precision`; JAX's global flag is never changed)."""
    name = getattr(args, "dtype", None)
    return None if name is None else np.dtype(name)


def select_device(spec: str | None):
    """The JAX device named by ``--devices`` (``cpu``, ``gpu``, ``tpu``, ``gpu:1``; default: JAX's first)."""
    import jax

    if spec is None or shard_count(spec) is not None:
        return jax.devices()[0]
    platform, _, index = spec.partition(":")
    if "," in spec:
        raise JNeuronError(f"--devices {spec}: give a device count (e.g. 8) or one device such as 'gpu' or 'gpu:1'")
    try:
        devices = jax.devices(platform)
    except RuntimeError:
        raise JNeuronError(f"--devices {spec}: no '{platform}' devices available here") from None
    position = int(index) if index.isdigit() else 0 if not index else -1
    if not 0 <= position < len(devices):
        raise JNeuronError(f"--devices {spec}: there are {len(devices)} '{platform}' device(s) (indices from 0)")
    return devices[position]


def shard_count(spec: str | None) -> int | None:
    """``--devices N`` (a number): shard the tokens over N devices; None for a single named device."""
    return int(spec) if spec is not None and spec.isdigit() else None


@contextlib.contextmanager
def device_scope(args: argparse.Namespace) -> Iterator[None]:
    """Run the enclosed computation on the ``--devices`` device."""
    import jax

    with jax.default_device(select_device(getattr(args, "devices", None))):
        yield


def progress_for(args: argparse.Namespace, total: int | None) -> Progress:
    """A progress line as ``--progress`` asks (``auto``: only when stderr is a terminal)."""
    choice = getattr(args, "progress", "auto")
    return Progress(total, enabled={"auto": None, "always": True, "never": False}[choice])


def open_inputs(paths: Sequence[Path | str], *, dtype=None, tokens=None, labels=None) -> FileSource:
    """All input files side by side as one streaming source (their models in order)."""
    sources = [open_activations(p, tokens=tokens, labels=labels) for p in paths]
    return combine(sources, dtype=dtype)


def load_source(paths: Sequence[Path | str], args: argparse.Namespace | None = None) -> FileSource:
    """:func:`open_inputs` with ``--dtype``, ``--tokens`` and ``--labels`` taken from ``args`` when present."""
    return open_inputs(paths, dtype=compute_dtype(args) if args is not None else None,
                       tokens=getattr(args, "tokens", None), labels=getattr(args, "labels", None))


def load_activations(path: Path | str, *, dtype=None) -> np.ndarray:
    """One ``(tokens, neurons)`` array: a ``.npy`` stays memory-mapped; other formats are read into memory.

    The path (or its ``#selector``) must pick exactly one model; its layers come side by side.
    """
    source = open_activations(path)
    if len(source.names) != 1:
        raise JNeuronError(f"{path}: holds models {list(source.names)}; pick one with '{path}#<model>'")
    if str(path).endswith(".npy") and dtype is None:
        return source.columns[0].read(0, source.tokens)
    return source.with_dtype(dtype).read(0, source.tokens) if dtype is not None else source.read(0, source.tokens)


def load_models(paths: Sequence[Path | str], *, dtype=None) -> dict[str, np.ndarray]:
    """One ``(tokens, neurons)`` array per model in the inputs (``.npy``: named by the file's stem)."""
    source = open_inputs(paths, dtype=dtype)
    models: dict[str, np.ndarray] = {}
    edges = np.cumsum((0,) + source.widths)
    whole = None
    for name, lo, hi in zip(source.names, edges[:-1], edges[1:]):
        columns = [c for c in source.columns if c.model == name]
        if len(columns) == 1 and dtype is None and isinstance(columns[0].read(0, min(1, source.tokens)), np.memmap):
            models[name] = columns[0].read(0, source.tokens)  # keep .npy memory-mapped
            continue
        whole = source.read(0, source.tokens) if whole is None else whole
        models[name] = whole[:, lo:hi]
    return models


def layer_spec(source: FileSource) -> list[tuple[str, list[tuple[str, int]]]]:
    """``[(model, [(layer, width), ...]), ...]`` for :meth:`jneuron.NeuronIndex.from_layers`."""
    return [(m, list(layers)) for m, layers in source.layers.items()]


def write_json(path: Path, data) -> Path:
    """JSON, atomically."""
    return atomic_write_json(path, data)


def write_csv(path: Path, header: Sequence[str], rows) -> Path:
    """CSV with a header row, atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())
