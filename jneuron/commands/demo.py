"""The demo: train three small MLPs on the bundled digits, then rank their neurons across models."""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from jneuron.crossmodel import maxcorr
from jneuron.datasets import load_digits
from jneuron.errors import DeadNeuronWarning
from jneuron.models import MLP, accuracy, train_classifier

NAME = "demo"
HELP = "train small models on the bundled digits data and run the analyses end to end"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for the results")
    parser.add_argument("--models", type=int, default=3, help="models to train, with seeds 0, 1, ... (default 3)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs per model (default 30)")
    parser.add_argument("--top", type=int, default=10, help="neurons to print per ranking (default 10)")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    digits = load_digits()
    train, test = digits.split(seed=0)
    activations = {}
    for seed in range(args.models):
        model = MLP(64, (64, 32), 10, rngs=nnx.Rngs(seed))
        model = train_classifier(model, train.images, train.labels, epochs=args.epochs, seed=seed)
        hidden = model.hidden(jnp.asarray(digits.images))
        activations[f"mlp{seed}"] = {f"layers/{i}": h for i, h in enumerate(hidden)}
        print(f"trained mlp{seed}: test accuracy {accuracy(model, test.images, test.labels):.3f}")
    tokens = len(digits.labels)
    print(f"captured hidden activations of {args.models} models on {tokens} images")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeadNeuronWarning)
        ranking = maxcorr(activations)
    rankings = {"maxcorr": ranking, "mincorr": ranking.rescore("mincorr")}
    for warning in caught:
        print(f"note: {warning.message}")
    for name, ranking in rankings.items():
        print(f"\n{name}: top {args.top} of {len(ranking.scores)} neurons")
        for record in ranking.top(args.top):
            partners = ", ".join(f"{p['label']} ({p['rho']:+.2f})" for p in record["partners"])
            print(f"  {record['label']:<20} {record['score']:.3f}  {partners}")
        path = ranking.to_json(args.out / f"{name}.json")
        print(f"  wrote {path}")
    print(f"\ndemo finished in {time.perf_counter() - start:.1f} s; results in {args.out}/")
    return 0
