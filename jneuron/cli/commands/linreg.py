"""Rank neurons by LinReg across models: `jneuron linreg a.npy b.npy c.npy --out results/`."""

from __future__ import annotations

import argparse
from pathlib import Path

from jneuron.cli.options import (
    add_chunk_argument,
    add_devices_argument,
    add_out_argument,
    device_scope,
    load_models,
    shard_count,
)
from jneuron.crossmodel.linreg import linreg_ranking

NAME = "linreg"
HELP = "rank neurons by how well each other model predicts them linearly (R^2, min or max over models)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, help="one (tokens, neurons) .npy file per model")
    parser.add_argument("--max", action="store_true", help="score by the best model instead of the worst")
    parser.add_argument("--top", type=int, default=10, help="neurons to print (default 10)")
    add_chunk_argument(parser)
    add_devices_argument(parser)
    add_out_argument(parser)


def run(args: argparse.Namespace) -> int:
    with device_scope(args):
        ranking = linreg_ranking(load_models(args.files), reduce="max" if args.max else "min",
                                 chunk_tokens=args.chunk_tokens, devices=shard_count(args.devices))
    for record in ranking.top(args.top):
        print(f"{record['rank'] + 1:>4}  {record['label']:<24} R^2 {record['score']:.4f}")
    print(f"wrote {ranking.to_json(args.out / 'linreg.json')}")
    return 0
