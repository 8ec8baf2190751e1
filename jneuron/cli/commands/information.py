"""Entropy, mutual information, KL selectivity and class selectivity of every neuron.

``jneuron information acts.zarr --labels labels.txt --out results/``: any activation inputs, and labels
as a NeuroX label file, a ``.npy`` array of integers or strings, or one label per line (or the labels
stored with the inputs). The activations are read chunk by chunk (a store larger than memory is fine).
Writes ``information.json`` and one ranking per measure: ``ranking_mutual_information``,
``ranking_kl_selectivity``, ``ranking_entropy`` and ``ranking_selectivity`` ``.json``.

The 1-bit quantization cuts at ``--threshold``: 0.5 suits sigmoid units and 0 ReLU units. On signed
activations (a transformer's hidden states) a cut at 0.5 puts nearly every value on one side, so a
warning is printed. Class selectivity, (max class mean - mean of the others) / (their sum), lies in
[0, 1] for non-negative outputs only: on signed values the denominator can be near 0 or negative and the
index unbounded (a value of 167 says nothing), which the warning also says.
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
    read_labels,
    streaming_options,
)

NAME = "information"
HELP = "rank neurons by entropy, mutual information with labels, KL and class selectivity"
QUANTIZERS = ("threshold", "uniform", "quantile")
# passes over the data of each quantizer (jneuron.information): uniform bins first find every neuron's range,
# quantile bins then also its fine histogram; the counting pass comes last
PASSES = {"threshold": 1, "uniform": 2, "quantile": 3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser, labels="required unless the inputs hold labels")
    parser.add_argument("--quantize", choices=QUANTIZERS, default="threshold", help="how outputs are binned")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="1-bit cut, x > threshold (0.5 for sigmoid units, 0 for ReLU or signed units)")
    parser.add_argument("--bins", type=int, default=2, help="bins for --quantize uniform or quantile")
    parser.add_argument("--classes", type=int, default=None, help="number of classes (default: the labels seen)")
    parser.add_argument("--nats", action="store_true", help="natural logarithms instead of bits (off: bits)")
    parser.add_argument("--top", type=int, default=10, help="neurons to print per measure")
    add_streaming_arguments(parser)
    add_out_argument(parser)


def run(args: argparse.Namespace) -> int:
    from jneuron.data.atomic import atomic_write_json
    from jneuron.information import MEASURES, neuron_information

    source = load_source(args.inputs, args)
    labels, classes = read_labels(args, source)
    progress = progress_for(args, source.tokens, passes=PASSES[args.quantize])
    with device_scope(args):
        options = streaming_options(neuron_information, args, progress)
        info = neuron_information(source, labels, quantize=args.quantize, threshold=args.threshold, bins=args.bins,
                                  classes=args.classes, unit="nats" if args.nats else "bits", **options)
    progress.close()
    print(f"{len(info.neurons)} neurons, H(Y) = {info.label_entropy:.4f} {info.unit}, {len(info.dead)} constant, "
          f"{len(info.one_bin)} with every token in one bin")
    written = []
    for measure in MEASURES:
        ranking = info.ranking(measure)
        print(f"\n{measure}: top {args.top}")
        for record in ranking.top(args.top):
            print(f"{record['rank'] + 1:>4}  {record['label']:<24} {record['score']:.4f}")
        written.append(ranking.to_json(args.out / f"ranking_{measure}.json"))
    data = {**info.to_dict(), "classes": classes}
    written.insert(0, atomic_write_json(args.out / "information.json", data))
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0

