"""The shared body of the ``maxcorr`` and ``mincorr`` subcommands."""

from __future__ import annotations

import argparse
import shutil

from jneuron.cli.options import (
    add_input_arguments,
    add_out_argument,
    add_streaming_arguments,
    device_scope,
    load_source,
    need_models,
    progress_for,
    streaming_options,
    write_ranking,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("--top", type=int, default=10, help="neurons to print")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG bar chart (drawn by default)")
    add_streaming_arguments(parser)
    add_out_argument(parser)


def run(args: argparse.Namespace, method: str) -> int:
    from jneuron.crossmodel.maxcorr import (
        maxcorr,
        mincorr,
        passes_needed,
    )
    from jneuron.streaming.passes import default_chunk_tokens

    source = load_source(args.inputs, args)
    need_models(source, method)
    passes = passes_needed(source.widths)
    args.chunk_tokens = args.chunk_tokens or default_chunk_tokens(sum(source.widths), source.tokens)
    progress = progress_for(args, source.tokens, passes=passes)
    rank = maxcorr if method == "maxcorr" else mincorr
    with device_scope(args):
        ranking = rank(source, **streaming_options(rank, args, progress))
    progress.close()
    written = write_ranking(ranking, args.out, method, top=args.top, plot=not args.no_plot)
    if args.checkpoint:
        shutil.rmtree(args.checkpoint, ignore_errors=True)  # the run finished: nothing left to resume
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
