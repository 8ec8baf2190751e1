"""Rank neurons by MaxCorr across models: `jneuron maxcorr a.npy b.npy c.npy --out results/`."""

from __future__ import annotations

import argparse
from pathlib import Path

from jneuron.commands._common import add_out_argument, load_models
from jneuron.crossmodel import maxcorr, mincorr

NAME = "maxcorr"
HELP = "rank neurons by cross-model correlation (MaxCorr or MinCorr) from .npy activation files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, help="one (tokens, neurons) .npy file per model")
    parser.add_argument("--min", action="store_true", help="rank by MinCorr instead of MaxCorr")
    parser.add_argument("--top", type=int, default=10, help="neurons to print (default 10)")
    parser.add_argument("--devices", type=int, default=None,
                        help="shard the tokens over this many devices (default: one device, unsharded)")
    add_out_argument(parser)


def run(args: argparse.Namespace) -> int:
    models = load_models(args.files)
    ranking = (mincorr if args.min else maxcorr)(models, devices=args.devices)
    for record in ranking.top(args.top):
        partners = ", ".join(f"{p['label']} ({p['rho']:+.3f})" for p in record["partners"])
        print(f"{record['rank'] + 1:>4}  {record['label']:<24} {record['score']:.4f}  partners: {partners}")
    print(f"wrote {ranking.to_json(args.out / 'ranking.json')}")
    return 0
