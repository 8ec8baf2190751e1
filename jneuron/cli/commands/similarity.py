"""Layer-by-layer similarity: ``jneuron similarity acts.zarr --metric svcca cka --out results/``.

Every layer of every input is one row and column of the matrix (a store's layers are expanded), so one
store compares its layers with each other. All metrics come from one streamed pass over the data. Writes
``similarity_<metric>.json`` and ``.png`` per metric.
"""

from __future__ import annotations

import argparse

from jneuron.cli.options import (
    add_input_arguments,
    add_out_argument,
    add_streaming_arguments,
    device_scope,
    load_source,
    progress_for,
    source_models,
    streaming_options,
)

NAME = "similarity"
HELP = "similarity matrices (SVCCA, CCA, PWCCA, CKA) between layers or checkpoints, with heatmaps"
METRIC_CHOICES = ("svcca", "cca", "pwcca", "cka", "cka_debiased")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("--against", nargs="+", default=None, metavar="INPUT",
                        help="compare with the layers of these inputs instead, e.g. another checkpoint's "
                             "(default: the inputs with themselves)")
    parser.add_argument("--metric", nargs="+", choices=METRIC_CHOICES, default=["svcca"],
                        help="one or more similarity measures; each writes its own files")
    parser.add_argument("--keep", type=float, default=0.99, help="SVCCA: share of variance kept")
    add_streaming_arguments(parser)
    add_out_argument(parser)


def run(args: argparse.Namespace) -> int:
    from jneuron.similarity.matrix import similarity_matrices

    layers = source_models(load_source(args.inputs, args, layers_as_models=True))
    against = source_models(load_source(args.against, args, layers_as_models=True)) if args.against else None
    progress = progress_for(args, len(next(iter(layers.values()))))
    with device_scope(args):
        options = streaming_options(similarity_matrices, args, progress)
        matrices = similarity_matrices(layers, against, metrics=list(args.metric), keep=args.keep, **options)
    progress.close()
    written = []
    for metric, matrix in matrices.items():
        _print_matrix(matrix)
        written.append(matrix.to_json(args.out / f"similarity_{metric}.json"))
        png = args.out / f"similarity_{metric}.png"
        _heatmap(matrix, png)
        written.append(png)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _print_matrix(matrix) -> None:
    """The matrix as text: one row per layer, the columns numbered (their names listed above them)."""
    width = max(len(n) for n in matrix.names_a)
    print(f"\n{matrix.metric} over {matrix.tokens} tokens; columns:")
    for k, name in enumerate(matrix.names_b, start=1):
        print(f"  [{k}] {name}")
    print(" " * width + "".join(f" {f'[{k}]':>7}" for k in range(1, len(matrix.names_b) + 1)))
    for name, row in zip(matrix.names_a, matrix.values):
        print(f"{name:<{width}}" + "".join(f" {v:7.4f}" for v in row))


def _heatmap(matrix, path) -> None:
    from jneuron.data.atomic import atomic_write_bytes
    from jneuron.report import plots

    low = min(0.0, float(matrix.values.min())) if matrix.values.size else 0.0
    atomic_write_bytes(path, plots.heatmap(matrix.values, matrix.names_a, matrix.names_b,
                                           title=f"{matrix.metric}, {matrix.tokens} tokens", vmin=low, vmax=1.0))
