"""The shared body of the ``maxcorr`` and ``mincorr`` subcommands."""

from __future__ import annotations

import argparse
import shutil
import warnings

from jneuron.cli.options import (
    add_out_argument,
    add_streaming_arguments,
    add_text_arguments,
    device_scope,
    load_source,
    progress_for,
    shard_count,
    write_csv,
)
from jneuron.crossmodel.maxcorr import maxcorr, mincorr, passes_needed
from jneuron.data.atomic import atomic_write_bytes
from jneuron.errors import DeadNeuronWarning
from jneuron.streaming.passes import default_chunk_tokens


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+",
                        help="activation files or stores (.zarr folder, .npy, .npz, NeuroX .hdf5/.json), each "
                             "optionally PATH#model[/layer][,...]; together at least two models")
    parser.add_argument("--top", type=int, default=10, help="neurons to print (default 10)")
    parser.add_argument("--checkpoint", default=None, metavar="DIR",
                        help="save the running statistics here every few chunks; rerun to resume after an interruption")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG bar chart")
    add_text_arguments(parser)
    add_streaming_arguments(parser)
    add_out_argument(parser)


def run(args: argparse.Namespace, method: str) -> int:
    source = load_source(args.inputs, args)
    passes = passes_needed(source.widths)
    chunk_tokens = args.chunk_tokens or default_chunk_tokens(sum(source.widths), source.tokens)
    progress = progress_for(args, source.tokens * passes)
    rank = maxcorr if method == "maxcorr" else mincorr
    with device_scope(args), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeadNeuronWarning)
        ranking = rank(source, chunk_tokens=chunk_tokens, checkpoint=args.checkpoint, on_chunk=progress,
                       devices=shard_count(args.devices))
    progress.close()
    for warning in caught:
        print(f"note: {warning.message}")
    for record in ranking.top(args.top):
        partners = ", ".join(f"{p['label']} ({p['rho']:+.3f})" for p in record["partners"])
        print(f"{record['rank'] + 1:>4}  {record['label']:<24} {record['score']:.4f}  partners: {partners}")
    written = [ranking.to_json(args.out / f"{method}.json")]
    rows = [[r["rank"] + 1, r["label"], r["model"], r["layer"], r["unit"], r["score"],
             "; ".join(f"{p['label']}={p['rho']:+.6f}" for p in r["partners"])] for r in ranking.top(len(ranking.scores))]
    written.append(write_csv(args.out / f"{method}.csv",
                             ["rank", "neuron", "model", "layer", "unit", "score", "partners"], rows))
    if not args.no_plot:
        from jneuron.report import plots

        top = ranking.top(min(30, len(ranking.scores)))
        png = plots.bars([r["label"] for r in top], [r["score"] for r in top], title=f"{method}: top {len(top)}",
                         xlabel=f"{method} score", groups=[r["model"] for r in top])
        written.append(atomic_write_bytes(args.out / f"{method}.png", png))
    if args.checkpoint:
        shutil.rmtree(args.checkpoint, ignore_errors=True)  # the run finished: nothing left to resume
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
