"""Ablation curves on the demo models: train MLPs on the bundled digits, rank the first model's hidden neurons
by MaxCorr against the others (Bau et al., 2019), and remove them top-first and bottom-first."""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np

from jneuron.cli.options import add_out_argument
from jneuron.data.atomic import atomic_write_bytes, atomic_write_text
from jneuron.errors import JNeuronError

NAME = "ablate"
HELP = "ablation curves on the demo MLPs: remove MaxCorr-ranked hidden neurons top-first vs bottom-first"
LAYERS = ("layers/0", "layers/1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_out_argument(parser, "ablate-output")
    parser.add_argument("--models", type=int, default=3, help="models to train, with seeds 0, 1, ...")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs per model")
    parser.add_argument("--mode", choices=("zero", "mean"), default="zero", help="ablation mode")
    parser.add_argument("--scope", choices=("network", "layer"), default="network",
                        help="remove across the whole network or within one layer at a time")
    parser.add_argument("--step", type=int, default=4, help="neurons removed between curve points")


def run(args: argparse.Namespace) -> int:
    if args.models < 2:
        raise JNeuronError("--models must be at least 2: MaxCorr ranks a model's neurons against other models")
    if args.step < 1:
        raise JNeuronError("--step must be at least 1")
    import jax.numpy as jnp
    from flax import nnx

    from jneuron.crossmodel.maxcorr import maxcorr
    from jneuron.data.bundled import load_digits
    from jneuron.errors import DeadNeuronWarning
    from jneuron.flax.curves import ablation_curve
    from jneuron.models import MLP, train_classifier
    from jneuron.report import plots
    train, test = load_digits().split(seed=0)
    models, activations = [], {}
    for seed in range(args.models):
        model = train_classifier(MLP(64, (64, 32), 10, rngs=nnx.Rngs(seed)), train.images, train.labels,
                                 epochs=args.epochs, seed=seed)
        models.append(model)
        hidden = model.hidden(jnp.asarray(test.images))
        activations[f"mlp{seed}"] = {layer: h for layer, h in zip(LAYERS, hidden)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeadNeuronWarning)
        ranking = maxcorr(activations)
    own = ranking.neurons.model_slice(0)
    scores = ranking.scores[own]
    top_first = np.lexsort((np.arange(len(scores)), -scores))  # flat over mlp0's layers, layer-major
    width = len(scores)
    ks = np.unique(np.r_[np.arange(0, width + 1, args.step), width]) if args.scope == "network" else \
        np.arange(0, 65, args.step)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, order in (("top_first", top_first), ("bottom_first", top_first[::-1])):
        curve = ablation_curve(models[0], test.images, test.labels, order, LAYERS, ks, mode=args.mode,
                               scope=args.scope)
        curve.to_json(args.out / f"{name}.json")
        png = plots.curves({name.replace("_", " "): (curve.ks, curve.values)} if curve.values.ndim == 1 else
                           {f"{layer}": (curve.ks, row) for layer, row in zip(curve.layers, curve.values)},
                           title=f"mlp0, MaxCorr {name.replace('_', ' ')}, {args.mode} ablation",
                           xlabel=f"neurons removed ({args.scope})", ylabel="test accuracy", baseline=curve.baseline)
        atomic_write_bytes(args.out / f"{name}.png", png)
        summary[name] = curve.to_dict()
        values = curve.values if curve.values.ndim == 1 else curve.values.mean(axis=0)
        shown = ", ".join(f"{k}:{v:.3f}" for k, v in list(zip(curve.ks, values))[:: max(1, len(ks) // 8)])
        print(f"{name:>12}: accuracy by neurons removed ({args.scope}) {shown}")
    atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=1))
    print(f"intact test accuracy {summary['top_first']['baseline']:.3f}; curves and plots in {args.out}/")
    return 0
