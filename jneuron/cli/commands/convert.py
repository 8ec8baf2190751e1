"""Convert activation files to a zarr v3 store (or ``.npz``): ``jneuron convert acts.hdf5 --tokens t.txt --out acts.zarr``.

Inputs are any formats :func:`jneuron.open_activations` reads (NeuroX HDF5/JSON with ``--tokens`` and
``--labels``, ``.npy``, ``.npz``, stores), optionally with ``#selector``; several inputs are stored side by
side. The tokens and labels are stored with the activations, so later commands need no text files. The
output appears only when complete (written aside, then renamed).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from jneuron.cli.options import (
    add_input_arguments,
    add_streaming_arguments,
    load_source,
    progress_for,
)
from jneuron.errors import JNeuronError

NAME = "convert"
HELP = "convert activation files (NeuroX HDF5/JSON, .npy, .npz, stores) into a zarr v3 store or .npz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, metavar="PATH",
                        help="the store to write (a .zarr folder) or a .npz file (required)")
    parser.add_argument("--tokenization", default=None,
                        help="how rows map to inputs, kept as a store attribute (default: none)")
    parser.add_argument("--uncompressed", action="store_true",
                        help="store raw chunks: fastest to read, larger (off: compressed)")
    add_streaming_arguments(parser, refused={
        "devices": "convert copies activations and computes nothing on a device",
        "checkpoint": "convert writes its output aside and renames it when complete; an interrupted run starts again"})
    parser.set_defaults(uses_labels=False)


def run(args: argparse.Namespace) -> int:
    from jneuron.data.atomic import atomic_write_bytes
    from jneuron.data.store import write_store

    out: Path = args.out
    if out.suffix.lower() not in (".npz", ".zarr") and not out.is_dir():
        raise JNeuronError(f"--out {out}: give a .zarr store folder or a .npz file")
    source = load_source(args.inputs, args)
    progress = progress_for(args, source.tokens)
    if out.suffix.lower() == ".npz":
        arrays = {c.label: c.read(0, source.tokens) if args.dtype is None else
                  np.asarray(c.read(0, source.tokens), dtype=args.dtype) for c in source.columns}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(out, buffer.getvalue())
        progress(source.tokens)
    else:
        write_store(source, out, chunk_tokens=args.chunk_tokens,
                    tokenization=args.tokenization, compressors=None if args.uncompressed else "auto",
                    on_chunk=progress)
    progress.close()
    layers = ", ".join(c.label for c in source.columns)
    print(f"wrote {out}: {source.tokens} tokens of {layers}")
    return 0
