"""Entropy, mutual information, KL selectivity and class selectivity of every neuron, from .npy files.

`jneuron information layer0.npy layer1.npy --labels labels.npy --out results/`
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from jneuron.cli.options import add_out_argument, load_models
from jneuron.errors import JNeuronError
from jneuron.information import MEASURES, QUANTIZERS, neuron_information

NAME = "information"
HELP = "rank neurons by entropy, mutual information with labels, KL and class selectivity (.npy activations)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, help="(tokens, neurons) .npy activations, side by side")
    parser.add_argument("--labels", type=Path, required=True, help="(tokens,) .npy integer class labels")
    parser.add_argument("--quantize", choices=QUANTIZERS, default="threshold", help="how outputs are binned")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="1-bit cut, x > threshold (0.5 for sigmoid units, 0 for ReLU; default 0.5)")
    parser.add_argument("--bins", type=int, default=2, help="bins for --quantize uniform or quantile")
    parser.add_argument("--classes", type=int, default=None, help="number of classes (default max label + 1)")
    parser.add_argument("--nats", action="store_true", help="natural logarithms instead of bits")
    parser.add_argument("--top", type=int, default=10, help="neurons to print per measure (default 10)")
    add_out_argument(parser)


def run(args: argparse.Namespace) -> int:
    models = load_models(args.files)
    if not args.labels.is_file():
        raise JNeuronError(f"no such file: {args.labels}")
    try:
        labels = np.load(args.labels)
    except (ValueError, OSError) as error:
        raise JNeuronError(f"{args.labels}: not a readable .npy file ({error})") from None
    info = neuron_information(models, labels, quantize=args.quantize, threshold=args.threshold, bins=args.bins,
                              classes=args.classes, unit="nats" if args.nats else "bits")
    print(f"{len(info.neurons)} neurons, H(Y) = {info.label_entropy:.4f} {info.unit}, {len(info.dead)} in one bin")
    for measure in MEASURES:
        ranking = info.ranking(measure)
        print(f"\n{measure}: top {args.top}")
        for record in ranking.top(args.top):
            print(f"{record['rank'] + 1:>4}  {record['label']:<24} {record['score']:.4f}")
        ranking.to_json(args.out / f"ranking_{measure}.json")
    print(f"\nwrote {info.to_json(args.out / 'information.json')} and ranking_<measure>.json")
    return 0
