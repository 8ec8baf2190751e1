"""Train an elastic-net probe and rank neurons: `jneuron probe acts.npy labels.txt --out results/`.

Labels: a `.npy` array (one label per activation row) or a NeuroX-style label file (one sentence per line,
space-separated); with `--tokens`, the token file is checked against it and the activations line by line.
Several `--l1`/`--l2` values train the whole grid at once and keep the sparsest setting within
`--tolerance` of the best held-out accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from jneuron.cli.options import (
    add_devices_argument,
    add_out_argument,
    device_scope,
    load_activations,
    shard_count,
)
from jneuron.data.atomic import atomic_write_json
from jneuron.data.labels import LabelledTokens, load_labels, read_sentences
from jneuron.errors import JNeuronError
from jneuron.probing.probe import train_probes
from jneuron.probing.selection import neuron_ordering, top_neurons
from jneuron.results import _plain

NAME = "probe"
HELP = "train a linear probe (elastic net, penalty grid) on activations and rank neurons by its weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("activations", type=Path, help="(tokens, neurons) .npy file")
    parser.add_argument("labels", type=Path, help="labels: .npy (one per row) or a NeuroX-style label file")
    parser.add_argument("--tokens", type=Path, help="NeuroX-style token file aligned with the label file")
    parser.add_argument("--l1", type=float, nargs="+", default=[1e-5], help="L1 penalties (default 1e-5)")
    parser.add_argument("--l2", type=float, nargs="+", default=[1e-5], help="L2 penalties (default 1e-5)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation", type=float, default=0.1, help="held-out share of tokens (default 0.1)")
    parser.add_argument("--tolerance", type=float, default=0.01, help="accuracy tolerance of the choice")
    parser.add_argument("--percentage", type=float, default=0.05, help="weight mass for the top neurons")
    parser.add_argument("--top", type=int, default=10, help="neurons to print (default 10)")
    add_devices_argument(parser)
    add_out_argument(parser)


def _labels(args: argparse.Namespace, activations: np.ndarray) -> np.ndarray:
    if args.labels.suffix == ".npy":
        if args.tokens:
            raise JNeuronError("--tokens goes with a text label file, not a .npy array")
        try:
            return np.load(args.labels, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise JNeuronError(f"{args.labels}: not a readable .npy file ({error})") from None
    if args.tokens:
        data = load_labels(args.tokens, args.labels)
    else:
        sentences = read_sentences(args.labels)
        data = LabelledTokens(sentences, sentences, str(args.labels))
    data.check(activations)
    return data.flat()


def run(args: argparse.Namespace) -> int:
    activations = load_activations(args.activations)
    labels = _labels(args, activations)
    with device_scope(args):
        grid = train_probes(activations, labels, l1=args.l1, l2=args.l2, validation=args.validation,
                            tolerance=args.tolerance, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                            seed=args.seed, devices=shard_count(args.devices))
    probe = grid.probe
    ordering = neuron_ordering(probe)
    selection = top_neurons(probe, args.percentage)
    chosen = grid.to_dict()["best"]
    print(f"chosen l1={chosen['l1']:g} l2={chosen['l2']:g}: held-out accuracy {chosen['accuracy']:.4f}, "
          f"{len(selection.union)} top neurons at {args.percentage:g} of the weight mass")
    for record in ordering.top(args.top):
        print(f"{record['rank'] + 1:>4}  {record['label']:<16} step {record['step']}")
    result = {
        "grid": grid.to_dict(),
        "classes": _plain(probe.classes),
        "top_neurons": {"percentage": args.percentage, "union": _plain(selection.union),
                        "per_class": {str(c): _plain(v) for c, v in selection.per_class.items()},
                        "counts": {str(c): n for c, n in selection.counts.items()}},
        "ordering": ordering.to_dict(),
    }
    path = atomic_write_json(args.out / "probe.json", result)
    print(f"wrote {path}")
    return 0
