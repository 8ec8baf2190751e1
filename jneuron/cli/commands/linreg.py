"""Rank neurons by LinReg across models: ``jneuron linreg a.npy b.npy c.npy --out results/``.

Writes ``linreg_min`` (or ``linreg_max``) ``.json``, ``.csv`` and ``.png`` to ``--out``.
"""

from __future__ import annotations

import argparse

from jneuron.cli.options import (
    add_input_arguments,
    add_out_argument,
    add_streaming_arguments,
    device_scope,
    load_source,
    need_models,
    progress_for,
    source_models,
    streaming_options,
    write_ranking,
)

NAME = "linreg"
HELP = "rank neurons by how well each other model predicts them linearly (R^2, min or max over models)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("--max", action="store_true", help="score by the best model instead of the worst (off)")
    parser.add_argument("--top", type=int, default=10, help="neurons to print")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG bar chart (drawn by default)")
    add_streaming_arguments(parser)
    add_out_argument(parser)


def run(args: argparse.Namespace) -> int:
    from jneuron.crossmodel.linreg import linreg_ranking

    source = load_source(args.inputs, args)
    need_models(source, "linreg")
    progress = progress_for(args, source.tokens)
    with device_scope(args):
        options = streaming_options(linreg_ranking, args, progress)
        ranking = linreg_ranking(source_models(source), reduce="max" if args.max else "min", **options)
    progress.close()
    written = write_ranking(ranking, args.out, ranking.method, top=args.top, plot=not args.no_plot, score="R^2")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
