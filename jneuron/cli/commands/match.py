"""Match two networks' units (convergent learning): `jneuron match a.npy b.npy --out results/`."""

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
from jneuron.data.atomic import atomic_write_json
from jneuron.errors import JNeuronError
from jneuron.similarity.matching import match_neurons, sparse_prediction

NAME = "match"
HELP = "match units of two networks by correlation (bipartite or semi), optionally with L1 sparse prediction"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs=2, type=Path, help="the two networks' (tokens, units) .npy files")
    parser.add_argument("--method", choices=("bipartite", "semi"), default="bipartite",
                        help="one-to-one (bipartite, default) or each unit to its best partner (semi)")
    parser.add_argument("--absolute", action="store_true", help="match by |rho| instead of rho")
    parser.add_argument("--lasso", action="store_true", help="also predict the second net's units sparsely (L1)")
    parser.add_argument("--top", type=int, default=10, help="pairs to print (default 10)")
    add_chunk_argument(parser)
    add_devices_argument(parser)
    add_out_argument(parser)


def run(args: argparse.Namespace) -> int:
    models = load_models(args.files)
    if len(models) != 2:
        raise JNeuronError("match needs two different files")
    (name_x, x), (name_y, y) = models.items()
    streaming = {"chunk_tokens": args.chunk_tokens, "devices": shard_count(args.devices)}
    with device_scope(args):
        result = match_neurons(x, y, args.method, absolute=args.absolute, names=(name_x, name_y), **streaming)
        sparse = sparse_prediction(x, y, **streaming) if args.lasso else None
    out = result.to_dict()
    for pair in sorted(out["pairs"], key=lambda p: -p["rho"])[: args.top]:
        print(f"{pair['x']['label']:<20} <-> {pair['y']['label']:<20} rho {pair['rho']:+.4f}")
    if sparse is not None:
        out["sparse_prediction"] = sparse.to_dict()
        print("units used per prediction, by penalty:")
        for penalty, used in zip(sparse.penalties, sparse.nonzero):
            print(f"  {penalty:.4g}: mean {used.mean():.1f} of {x.shape[1]}")
    path = atomic_write_json(args.out / "match.json", out)
    print(f"wrote {path}")
    return 0
