"""Rank neurons by MaxCorr across models: `jneuron maxcorr a.npy b.npy c.npy --out results/`."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from jneuron.crossmodel import maxcorr, mincorr
from jneuron.errors import JNeuronError

NAME = "maxcorr"
HELP = "rank neurons by cross-model correlation (MaxCorr or MinCorr) from .npy activation files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, help="one (tokens, neurons) .npy file per model")
    parser.add_argument("--min", action="store_true", help="rank by MinCorr instead of MaxCorr")
    parser.add_argument("--top", type=int, default=10, help="neurons to print (default 10)")
    parser.add_argument("--out", type=Path, default=Path("jneuron-output"), help="folder for ranking.json")


def _load(path: Path) -> np.ndarray:
    if not path.is_file():
        raise JNeuronError(f"no such file: {path}")
    try:
        return np.load(path, mmap_mode="r")
    except ValueError as error:
        raise JNeuronError(f"{path}: not a readable .npy file ({error})") from None


def run(args: argparse.Namespace) -> int:
    models = {path.stem: _load(path) for path in args.files}
    ranking = (mincorr if args.min else maxcorr)(models)
    for record in ranking.top(args.top):
        partners = ", ".join(f"{p['label']} ({p['rho']:+.3f})" for p in record["partners"])
        print(f"{record['rank'] + 1:>4}  {record['label']:<24} {record['score']:.4f}  partners: {partners}")
    print(f"wrote {ranking.to_json(args.out / 'ranking.json')}")
    return 0
