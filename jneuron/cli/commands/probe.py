"""Train an elastic-net probe and rank neurons: ``jneuron probe acts.zarr --labels labels.txt --out results/``.

Activations: any inputs (their models' layers side by side). Labels: ``--labels`` as a NeuroX label file
(with ``--tokens``, checked against it line by line), a ``.npy`` array of integers or strings, or one label
per line; or the labels stored with the inputs. The older form ``jneuron probe acts.npy labels.txt`` (labels
as the last input) still works. Several ``--l1``/``--l2`` values train the whole grid at once and keep the
sparsest setting within ``--tolerance`` of the best held-out accuracy. Writes ``probe.json``, and
``probeless.json``: the same neurons ranked without a probe (Antverg & Belinkov, 2022), for comparison.

One probe is trained over all the inputs' neurons; with ``--layers-as-models``, one probe per layer, each
written to ``probe_<model>_<layer>.json`` and ``probeless_<model>_<layer>.json``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from jneuron.cli.options import (
    add_input_arguments,
    add_out_argument,
    add_streaming_arguments,
    check_finite,
    device_scope,
    layer_spec,
    load_source,
    read_labels,
    streaming_options,
)
from jneuron.errors import JNeuronError

NAME = "probe"
HELP = "train a linear probe (elastic net, penalty grid) on activations and rank neurons by its weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser, labels="required unless the inputs hold labels")
    parser.add_argument("--l1", type=float, nargs="+", default=[1e-5], help="L1 penalties (several: a grid)")
    parser.add_argument("--l2", type=float, nargs="+", default=[1e-5], help="L2 penalties (several: a grid)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs over the training tokens")
    parser.add_argument("--batch-size", type=int, default=32, help="tokens per minibatch")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split, the shuffling and the "
                                                            "initial weights")
    parser.add_argument("--validation", type=float, default=0.1, help="held-out share of tokens")
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="the sparsest setting within this accuracy of the best is chosen")
    parser.add_argument("--percentage", type=float, default=0.05, help="weight mass that the top neurons hold")
    parser.add_argument("--top", type=int, default=10, help="neurons to print")
    in_memory = "probe training holds the activations in memory (select fewer layers with INPUT#model/layer)"
    add_streaming_arguments(parser, refused={
        "checkpoint": "probe training holds its data in memory and saves no running statistics",
        "chunk_tokens": in_memory, "progress": "probe training reports no progress in this version"})
    add_out_argument(parser)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    if args.labels is None and len(args.inputs) > 1 and Path(args.inputs[-1]).suffix.lower() in (".txt", ".npy") \
            and Path(args.inputs[-1]).is_file() and _looks_like_labels(Path(args.inputs[-1])):
        args.labels, args.inputs = Path(args.inputs[-1]), args.inputs[:-1]
    source = load_source(args.inputs, args)
    labels, classes = read_labels(args, source)
    activations = source.read(0, source.tokens)
    check_finite(activations, source)
    spec = layer_spec(source)
    if not args.layers_as_models:
        _probe(activations, labels, classes, spec, args, "")
        return 0
    edges = np.cumsum([0] + [sum(w for _, w in layers) for _, layers in spec])
    for (model, layers), lo, hi in zip(spec, edges[:-1], edges[1:]):  # one model per layer
        print(f"{model}:")
        _probe(activations[:, lo:hi], labels, classes, [(model, layers)], args, "_" + re.sub(r"[^\w.-]", "_", model))
    return 0


def _probe(activations, labels, classes: list, spec, args: argparse.Namespace, suffix: str) -> None:
    """Train the probe grid on ``activations`` (the neurons of ``spec``), print its choice and top neurons, and
    write ``probe<suffix>.json`` and ``probeless<suffix>.json``."""
    from jneuron.data.atomic import atomic_write_json
    from jneuron.probing.probe import train_probes
    from jneuron.probing.probeless import probeless
    from jneuron.probing.selection import neuron_ordering, top_neurons
    from jneuron.results import NeuronIndex, to_plain

    neurons = NeuronIndex.from_layers(spec)
    with device_scope(args):
        grid = train_probes(activations, labels, l1=args.l1, l2=args.l2, validation=args.validation,
                            tolerance=args.tolerance, epochs=args.epochs, batch_size=args.batch_size,
                            learning_rate=args.lr, seed=args.seed, names=neurons,
                            **streaming_options(train_probes, args))
    probe = grid.probe
    ordering = neuron_ordering(probe)
    selection = top_neurons(probe, args.percentage)
    chosen = grid.to_dict()["best"]
    print(f"chosen l1={chosen['l1']:g} l2={chosen['l2']:g}: held-out accuracy {chosen['accuracy']:.4f}, "
          f"{len(selection.union)} top neurons at {args.percentage:g} of the weight mass")
    for record in ordering.top(args.top):
        print(f"{record['rank'] + 1:>4}  {record['label']:<16} step {record['step']}")
    name = lambda c: classes[int(c)] if 0 <= int(c) < len(classes) else to_plain(c)
    result = {
        "grid": grid.to_dict(),
        "classes": classes,
        "top_neurons": {"percentage": args.percentage, "union": to_plain(selection.union),
                        "per_class": {str(name(c)): to_plain(v) for c, v in selection.per_class.items()},
                        "counts": {str(name(c)): n for c, n in selection.counts.items()}},
        "ordering": ordering.to_dict(),
    }
    path = atomic_write_json(args.out / f"probe{suffix}.json", result)
    without = probeless(activations, labels, names=neurons).overall.to_json(args.out / f"probeless{suffix}.json")
    print(f"wrote {path} and {without}")


def _looks_like_labels(path: Path) -> bool:
    """A ``.txt`` file, or a 1-D ``.npy`` array: labels given as the last input (the older form)."""
    if path.suffix.lower() == ".txt":
        return True
    import numpy as np

    try:
        return np.load(path, mmap_mode="r", allow_pickle=False).ndim == 1
    except (ValueError, OSError, EOFError):
        raise JNeuronError(f"{path}: not a readable .npy file (labels or activations?)") from None
