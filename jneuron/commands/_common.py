"""Argument and input helpers shared by the subcommands, so every command reads inputs the same way."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from jneuron.errors import JNeuronError


def add_out_argument(parser: argparse.ArgumentParser, default: str = "jneuron-output") -> None:
    """The ``--out`` folder every command writes its results to."""
    parser.add_argument("--out", type=Path, default=Path(default), help=f"folder for the results (default {default})")


def load_activations(path: Path) -> np.ndarray:
    """A ``(tokens, neurons)`` activation array from a ``.npy`` file (memory-mapped, not read into memory)."""
    if not path.is_file():
        raise JNeuronError(f"no such file: {path}")
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as error:
        raise JNeuronError(f"{path}: not a readable .npy file ({error})") from None
    if array.ndim != 2:
        raise JNeuronError(f"{path}: expected a 2-D (tokens, neurons) array, got shape {array.shape}")
    return array


def load_models(paths: list[Path]) -> dict[str, np.ndarray]:
    """One activation array per file, named by the file's stem."""
    models = {path.stem: load_activations(path) for path in paths}
    if len(models) != len(paths):
        raise JNeuronError("two input files have the same name; rename one so results can tell them apart")
    return models
