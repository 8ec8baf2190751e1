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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jneuron.cli.progress import Progress
from jneuron.data.atomic import atomic_write_json, atomic_write_text
from jneuron.data.checks import non_finite
from jneuron.errors import JNeuronError

if TYPE_CHECKING:
    from jneuron.data.files import FileSource

DTYPES = ("float32", "float64")
NEUROX_SUFFIXES = (".hdf5", ".h5", ".json", ".jsonl")
INPUTS_HELP = ("activation files or stores: a .zarr store folder, .npy, .npz, or NeuroX .hdf5/.json (with "
               "--tokens); each may end in #model[/layer][,...] to keep some models or layers")


def add_out_argument(parser: argparse.ArgumentParser, default: str = "jneuron-output") -> None:
    """The ``--out`` folder every command writes its results to; the command line stages it (``out_set``),
    so the run's results appear there together or not at all, and an unwritable one fails before any work."""
    parser.add_argument("--out", type=Path, default=Path(default), metavar="DIR",
                        help="folder for the results; created if missing, checked writable before any work")
    parser.set_defaults(out_set=True)


def add_input_arguments(parser: argparse.ArgumentParser, *, nargs: str | int = "+", labels: str = "") -> None:
    """The activation inputs, ``--tokens``, ``--labels`` and ``--layers-as-models``, the same on every command.

    ``labels``: what ``--labels`` is used for by this command (added to its help).
    """
    parser.add_argument("inputs", nargs=nargs, metavar="INPUT", help=INPUTS_HELP)
    parser.add_argument("--tokens", type=Path, metavar="FILE",
                        help="NeuroX token file (one sentence per line, tokens separated by spaces), aligned with "
                             "the activation rows")
    parser.add_argument("--labels", type=Path, metavar="FILE",
                        help="labels, one per activation row: a NeuroX label file (one sentence per line, aligned "
                             "with --tokens), a .npy array of integers or strings, or a text file with one label per "
                             "line" + (f"; {labels}" if labels else ""))
    parser.add_argument("--layers-as-models", action="store_true",
                        help="treat every layer as its own model (model/layer), e.g. to compare the layers of one "
                             "network; off by default")
    parser.set_defaults(uses_labels=bool(labels))


def add_streaming_arguments(parser: argparse.ArgumentParser, *, refused: Mapping[str, str] | None = None) -> None:
    """``--dtype``, ``--chunk-tokens``, ``--devices``, ``--progress`` and ``--checkpoint``: every command that reads
    or writes activations takes all five, with one meaning.

    ``refused``: the options this command cannot honour (``"checkpoint"``, ``"chunk_tokens"``, ...), each with
    why; giving one is a one-line error before any work (:func:`check_refused`), never ignored.
    """
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="compute dtype (default: float32, or float64 when every input is float64)")
    add_chunk_argument(parser)
    add_devices_argument(parser)
    parser.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                        help="progress line on stderr; 'auto' shows it when stderr is a terminal")
    parser.add_argument("--checkpoint", type=Path, default=None, metavar="DIR",
                        help="save the running statistics here every few chunks; rerun the same command to "
                             "resume after an interruption (default: none)")
    parser.set_defaults(refused_options=dict(refused or {}))


def check_refused(args: argparse.Namespace) -> None:
    """A one-line error for a shared option the command was given but cannot honour (see
    :func:`add_streaming_arguments`); ``--progress never`` and ``auto`` ask for nothing.

    >>> args = argparse.Namespace(checkpoint="ck", progress="auto", refused_options={"checkpoint": "no state"})
    >>> check_refused(args)
    Traceback (most recent call last):
    jneuron.errors.JNeuronError: --checkpoint is not supported: no state
    """
    for name, why in getattr(args, "refused_options", {}).items():
        value = getattr(args, name, None)
        if name == "progress" and value == "always":
            raise JNeuronError(f"--progress always is not supported: {why}")
        if name != "progress" and value is not None:
            raise JNeuronError(f"--{name.replace('_', '-')} is not supported: {why}")


def add_chunk_argument(parser: argparse.ArgumentParser) -> None:
    """``--chunk-tokens``."""
    parser.add_argument("--chunk-tokens", type=_positive_int, default=None, metavar="N",
                        help="tokens per streamed chunk (default: about 64 MiB of activations)")


def add_devices_argument(parser: argparse.ArgumentParser) -> None:
    """``--devices`` (use with :func:`device_scope` and :func:`shard_count`)."""
    parser.add_argument("--devices", default=None, metavar="SPEC",
                        help="a number N shards the tokens over N devices; or one device to run on: 'cpu', "
                             "'gpu', 'tpu', optionally with an index ('gpu:1') (default: JAX's first device)")


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


def progress_for(args: argparse.Namespace, total: int | None, *, unit: str = "tokens", passes: int = 1) -> Progress:
    """A progress line as ``--progress`` asks (``auto``: only when stderr is a terminal), counting ``total``
    ``unit`` per pass over the data, ``passes`` times."""
    choice = getattr(args, "progress", "auto")
    return Progress(total, enabled={"auto": None, "always": True, "never": False}[choice], unit=unit, passes=passes)


def open_inputs(paths: Sequence[Path | str], *, dtype=None, tokens=None, labels=None,
                layers_as_models: bool = False, uses_labels: bool = True) -> FileSource:
    """All inputs side by side as one streaming source (their models in order).

    ``tokens`` and ``labels`` go to the NeuroX inputs (the other formats carry their own text). When the
    same model appears in several inputs (``acts.zarr#m/0 acts.zarr#m/1``), its selected layers become
    models of their own, as ``layers_as_models`` makes every layer one.
    """
    from jneuron.data.files import (
        as_layer_models,
        combine,
        open_activations,
        split_selector,
    )

    sources = []
    for path in paths:
        base, _ = split_selector(path)
        neurox = base.suffix.lower() in NEUROX_SUFFIXES
        sources.append(open_activations(path, tokens=tokens if neurox else None, labels=labels if neurox else None,
                                        layers_as_models=layers_as_models))
    if not any(split_selector(p)[0].suffix.lower() in NEUROX_SUFFIXES for p in paths):
        if tokens is not None and not uses_labels:
            raise JNeuronError(f"--tokens {tokens}: this command uses a token file only to read NeuroX .hdf5/.json "
                               "inputs, and none is given")
        if tokens is not None and labels is None:
            raise JNeuronError(f"--tokens {tokens}: a token file goes with NeuroX .hdf5/.json inputs or a NeuroX "
                               "label file (--labels), and neither is given")
        if labels is not None and not uses_labels:
            raise JNeuronError(f"--labels {labels}: this command uses labels only to read NeuroX .hdf5/.json "
                               "inputs, and none is given")
    names = [name for s in sources for name in s.names]
    repeated = {n for n in names if names.count(n) > 1}
    if repeated:
        sources = [as_layer_models(s) if repeated & set(s.names) else s for s in sources]
    return combine(sources, dtype=dtype)


def load_source(paths: Sequence[Path | str], args: argparse.Namespace | None = None, *,
                layers_as_models: bool | None = None) -> FileSource:
    """:func:`open_inputs` with ``--dtype``, ``--tokens``, ``--labels`` and ``--layers-as-models`` from ``args``."""
    if layers_as_models is None:
        layers_as_models = bool(getattr(args, "layers_as_models", False))
    source = open_inputs(paths, dtype=compute_dtype(args) if args is not None else None,
                       tokens=getattr(args, "tokens", None), labels=getattr(args, "labels", None),
                       layers_as_models=layers_as_models, uses_labels=bool(getattr(args, "uses_labels", True)))
    if args is not None and getattr(args, "data_shape", None) is None:
        args.data_shape = {"tokens": source.tokens, "neurons": sum(source.widths),
                           "models": {name: width for name, width in zip(source.names, source.widths)}}
    return source


def load_activations(path: Path | str, *, dtype=None) -> np.ndarray:
    """One ``(tokens, neurons)`` array: a ``.npy`` stays memory-mapped; other formats are read into memory.

    The path (or its ``#selector``) must pick exactly one model; its layers come side by side.
    """
    from jneuron.data.files import open_activations

    source = open_activations(path)
    if len(source.names) != 1:
        raise JNeuronError(f"{path}: holds models {list(source.names)}; pick one with '{path}#<model>'")
    if str(path).endswith(".npy") and dtype is None:
        return source.columns[0].read(0, source.tokens)
    return source.with_dtype(dtype).read(0, source.tokens) if dtype is not None else source.read(0, source.tokens)


def source_models(source: FileSource, *, dtype=None) -> dict[str, np.ndarray]:
    """One ``(tokens, neurons)`` array per model of ``source`` (a lone ``.npy`` column stays memory-mapped)."""
    models: dict[str, np.ndarray] = {}
    edges = np.cumsum((0,) + source.widths)
    whole = None
    for name, lo, hi in zip(source.names, edges[:-1], edges[1:]):
        columns = [c for c in source.columns if c.model == name]
        if len(columns) == 1 and dtype is None and source.out_dtype is None and \
                isinstance(columns[0].read(0, min(1, source.tokens)), np.memmap):
            models[name] = columns[0].read(0, source.tokens)  # keep .npy memory-mapped
            continue
        whole = source.read(0, source.tokens) if whole is None else whole
        models[name] = whole[:, lo:hi]
    return models


def load_models(paths: Sequence[Path | str], *, dtype=None, layers_as_models: bool = False) -> dict[str, np.ndarray]:
    """One ``(tokens, neurons)`` array per model in the inputs (``.npy``: named by the file's stem)."""
    return source_models(open_inputs(paths, dtype=dtype, layers_as_models=layers_as_models), dtype=dtype)


def check_finite(x: np.ndarray, source: FileSource, start: int = 0) -> None:
    """A one-line error naming the first non-finite activation (row counted from 1, neuron by label)."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return
    row, column = (int(v[0]) for v in np.nonzero(bad))
    labels = [f"{c.label}/{u}" for c in source.columns for u in range(c.width)]
    raise non_finite(str(source.path), start + row, labels[column])


def streaming_options(analysis, args: argparse.Namespace, progress=None) -> dict:
    """The keywords of ``--chunk-tokens``, ``--devices``, ``--checkpoint`` and ``--progress`` that ``analysis``
    takes. An option the analysis cannot honour is an error, never ignored."""
    import inspect

    takes = inspect.signature(analysis).parameters
    wanted = {"chunk_tokens": getattr(args, "chunk_tokens", None), "devices": shard_count(getattr(args, "devices", None)),
              "checkpoint": getattr(args, "checkpoint", None), "on_chunk": progress}
    options = {}
    for name, value in wanted.items():
        if value is None:
            continue
        for keyword in (name, "progress") if name == "on_chunk" else (name,):
            if keyword in takes:
                options[keyword] = value
                break
        else:
            if name == "checkpoint":
                raise JNeuronError(f"--checkpoint: {analysis.__name__} cannot save or resume from a checkpoint "
                                   "in this version; leave --checkpoint out")
            if name in ("chunk_tokens", "devices"):
                flag = "--" + name.replace("_", "-")
                raise JNeuronError(f"{flag}: {analysis.__name__} does not take it in this version")
    return options


def read_labels(args: argparse.Namespace, source: FileSource) -> tuple[np.ndarray, list]:
    """The class label of every activation row, as integer classes and the class names they stand for.

    From ``--labels`` (a NeuroX label file, with ``--tokens`` checked against it; a ``.npy`` array of
    integers or strings; a text file of one label per line), or else the labels stored with the inputs
    (a store converted with ``--labels``, a NeuroX input given ``--labels``). Every mismatch is one line
    naming the row or line (counted from 1).
    """
    path = getattr(args, "labels", None)
    if path is None:
        text = source.text() if source.text is not None else None
        if text is None or text.labels is None:
            raise JNeuronError("--labels is required: the inputs hold no labels (give a NeuroX label file, "
                               "a .npy array or one label per line)")
        values = np.asarray(text.labels, dtype=str)
    else:
        path = Path(path)
        if path.is_dir():
            raise JNeuronError(f"--labels {path}: is a folder, not a label file")
        if not path.exists():
            raise JNeuronError(f"--labels {path}: no such file")
        values = _npy_labels(path) if path.suffix.lower() == ".npy" else _text_labels(path, args, source)
    if len(values) != source.tokens:
        short = len(values) < source.tokens
        raise JNeuronError(f"--labels {path or 'stored with the inputs'}: {len(values)} labels for {source.tokens} "
                           f"activation rows; " + (f"row {len(values) + 1} (counted from 1) has no label" if short
                                                   else f"label {source.tokens + 1} has no activation row"))
    classes, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int32), [_plain_label(c) for c in classes]


def _text_labels(path: Path, args: argparse.Namespace, source: FileSource) -> np.ndarray:
    """The labels of a text file: a NeuroX label file (one sentence per line; with ``--tokens``, checked against
    it line by line) or one label per line. When the inputs know each row's sentence (a store from ``extract``
    or ``convert``), every line of a NeuroX label file must hold as many labels as its sentence has rows."""
    from jneuron.data.labels import LabelledTokens, check_lines, load_labels, read_sentences, sentence_rows

    tokens = getattr(args, "tokens", None)
    if tokens is not None and path.suffix.lower() not in NEUROX_SUFFIXES:
        lines = load_labels(tokens, path)
    else:
        sentences = read_sentences(path)
        lines = LabelledTokens(sentences, sentences, str(path))
    one_per_line = tokens is None and all(len(line) <= 1 for line in lines.labels)
    rows = None if one_per_line or source.text is None else sentence_rows(source.text().sentence)
    if rows is not None:
        check_lines(lines.labels, rows, f"--labels {path}", "label")
    lines.check(np.empty((source.tokens, 0)))
    return lines.flat()


def _npy_labels(path: Path) -> np.ndarray:
    try:
        values = np.load(path, allow_pickle=False)
    except EOFError:
        raise JNeuronError(f"--labels {path}: the file is empty") from None
    except (ValueError, OSError) as error:
        text = " ".join(str(error).split())
        if "allow_pickle" in text or "Object arrays" in text:
            text = "it holds Python objects; save the labels as integers or strings (np.array(labels, dtype=str))"
        raise JNeuronError(f"--labels {path}: not a readable .npy label array: {text}") from None
    if values.ndim != 1:
        raise JNeuronError(f"--labels {path}: expected one label per row (a 1-D array), got shape {values.shape}")
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise JNeuronError(f"--labels {path}: row {row + 1} (counted from 1) is {values[row]}, not a class "
                               "(labels are integers or strings)")
        values = values.astype(np.int64)
    elif values.dtype.kind not in "biuUS":
        raise JNeuronError(f"--labels {path}: labels must be integers or strings, got dtype {values.dtype}")
    return values


def _plain_label(value):
    return value.item() if hasattr(value, "item") else value


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


def need_models(source: FileSource, command: str, at_least: int = 2) -> None:
    """A one-line error when the inputs hold fewer models than ``command`` compares, naming the fix."""
    if len(source.names) >= at_least:
        return
    layers = [c.label for c in source.columns]
    hint = (f"; add --layers-as-models to compare its {len(layers)} layers ({', '.join(layers[:4])}"
            f"{', ...' if len(layers) > 4 else ''})" if len(layers) >= at_least else "")
    raise JNeuronError(f"{command} compares at least {at_least} models, but the inputs hold "
                       f"{len(source.names)} ({', '.join(source.names)}){hint}")


def ranking_rows(records) -> list[list]:
    """CSV rows of ranking records: rank (from 1), neuron, model, layer, unit, score and every partner."""
    return [[r["rank"] + 1, r["label"], r["model"], r["layer"], r["unit"], r["score"],
             "; ".join(f"{p['label']}={p['rho']:+.6f}" for p in r.get("partners") or [])] for r in records]


def write_ranking(ranking, out: Path, name: str, *, top: int, plot: bool = True, score: str = "score") -> list[Path]:
    """``name.json``, ``name.csv`` (every neuron) and ``name.png`` (the top neurons) of a ranking; prints
    the top ``top`` neurons. Returns the files written."""
    from jneuron.data.atomic import atomic_write_bytes

    for record in ranking.top(top):
        partners = ", ".join(f"{p['label']} ({p['rho']:+.3f})" for p in record.get("partners") or [])
        tail = f"  partners: {partners}" if partners else ""
        print(f"{record['rank'] + 1:>4}  {record['label']:<24} {score} {record['score']:.4f}{tail}")
    written = [ranking.to_json(out / f"{name}.json")]
    written.append(write_csv(out / f"{name}.csv", ["rank", "neuron", "model", "layer", "unit", "score", "partners"],
                             ranking_rows(ranking.top(len(ranking.scores)))))
    if plot:
        from jneuron.report import plots

        records = ranking.top(min(20, len(ranking.scores)))
        png = plots.bars([r["label"] for r in records], [r["score"] for r in records],
                         title=f"{name}: top {len(records)} neurons", xlabel=f"{name} {score}",
                         groups=[r["model"] for r in records])
        written.append(atomic_write_bytes(out / f"{name}.png", png))
    return written
