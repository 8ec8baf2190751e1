"""Match two networks' units (convergent learning): ``jneuron match a.npy b.npy --out results/``.

Writes ``match_<method>.json`` (the pairs, and with ``--lasso`` the sparse prediction summary).
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
)
from jneuron.errors import JNeuronError

NAME = "match"
HELP = "match units of two networks by correlation (bipartite or semi), optionally with L1 sparse prediction"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("--method", choices=("bipartite", "semi"), default="bipartite",
                        help="one-to-one (bipartite) or each unit to its best partner (semi)")
    parser.add_argument("--absolute", action="store_true", help="match by |rho| instead of rho (off)")
    parser.add_argument("--lasso", action="store_true", help="also predict the second net's units sparsely (off)")
    parser.add_argument("--top", type=int, default=10, help="pairs to print")
    add_streaming_arguments(parser)
    add_out_argument(parser)


def run(args: argparse.Namespace) -> int:
    from jneuron.data.atomic import atomic_write_json
    from jneuron.similarity.matching import match_neurons, sparse_prediction

    source = load_source(args.inputs, args)
    need_models(source, "match")
    models = source_models(source)
    if len(models) != 2:
        raise JNeuronError(f"match compares exactly 2 models, the inputs hold {len(models)} ({', '.join(models)}); "
                           "select two with PATH#model")
    (name_x, x), (name_y, y) = models.items()
    with device_scope(args):
        progress = progress_for(args, source.tokens)
        result = match_neurons(x, y, args.method, absolute=args.absolute, names=(name_x, name_y),
                               **streaming_options(match_neurons, args, progress))
        progress.close()
        sparse = None
        if args.lasso:
            progress = progress_for(args, source.tokens)
            sparse = sparse_prediction(x, y, **streaming_options(sparse_prediction, args, progress))
            progress.close()
    out = result.to_dict()
    for pair in sorted(out["pairs"], key=lambda p: -p["rho"])[: args.top]:
        print(f"{pair['x']['label']:<20} <-> {pair['y']['label']:<20} rho {pair['rho']:+.4f}")
    if sparse is not None:
        out["sparse_prediction"] = sparse.to_dict()
        print("units used per prediction, by penalty:")
        for penalty, used in zip(sparse.penalties, sparse.nonzero):
            print(f"  {penalty:.4g}: mean {used.mean():.1f} of {x.shape[1]}")
    path = atomic_write_json(args.out / f"match_{args.method}.json", out)
    print(f"wrote {path}")
    return 0
