"""Layer-by-layer similarity: `jneuron similarity l0.npy l1.npy l2.npy --metric svcca --out results/`."""

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
from jneuron.report.figures import similarity_figure
from jneuron.similarity.matrix import METRICS, similarity_matrix

NAME = "similarity"
HELP = "similarity matrix (SVCCA, CCA, PWCCA, CKA) between layers or checkpoints, with a heatmap"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, help="one (tokens, neurons) .npy file per layer")
    parser.add_argument("--against", nargs="+", type=Path, default=None,
                        help="compare with these layers instead (e.g. another checkpoint's)")
    parser.add_argument("--metric", choices=METRICS, default="svcca", help="similarity measure (default svcca)")
    parser.add_argument("--keep", type=float, default=0.99, help="SVCCA: share of variance kept (default 0.99)")
    add_chunk_argument(parser)
    add_devices_argument(parser)
    add_out_argument(parser)


def run(args: argparse.Namespace) -> int:
    layers = load_models(args.files)
    against = load_models(args.against) if args.against else None
    with device_scope(args):
        matrix = similarity_matrix(layers, against, metric=args.metric, keep=args.keep, chunk_tokens=args.chunk_tokens,
                                   devices=shard_count(args.devices))
    width = max(len(n) for n in matrix.names_a)
    print(f"{matrix.metric} over {matrix.tokens} tokens")
    print(" " * width + "".join(f" {n[:8]:>8}" for n in matrix.names_b))
    for name, row in zip(matrix.names_a, matrix.values):
        print(f"{name:<{width}}" + "".join(f" {v:8.4f}" for v in row))
    path = atomic_write_json(args.out / "similarity.json", matrix.to_dict())
    png = args.out / "similarity.png"
    similarity_figure(matrix, png)
    print(f"wrote {path} and {png}")
    return 0
