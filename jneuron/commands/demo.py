"""The demo: train small MLPs on the bundled digits, store their activations, run the analyses, write a report.

Steps: train ``--models`` MLPs; write every hidden layer to a zarr v3 activation store
(``OUT/activations.zarr``, the digit label of each image as its "token"); stream MaxCorr/MinCorr from the
store; gather the results in ``OUT/report/index.html``. Each analysis is one ``_section_*`` function
called from :func:`run` with the shared :class:`DemoContext` and the :class:`~jneuron.report.Report`.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jneuron.crossmodel import CrossModelRanking, maxcorr
from jneuron.datasets import Dataset, load_digits
from jneuron.errors import DeadNeuronWarning
from jneuron.formats import open_activations
from jneuron.models import MLP, accuracy, train_classifier
from jneuron.report import Report
from jneuron.store import StoreWriter

NAME = "demo"
HELP = "train small models on the bundled digits data, run the analyses end to end and write a report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for the results")
    parser.add_argument("--models", type=int, default=3, help="models to train, with seeds 0, 1, ... (default 3)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs per model (default 30)")
    parser.add_argument("--top", type=int, default=10, help="neurons to print per ranking (default 10)")


@dataclass
class DemoContext:
    """What every analysis section of the demo can use."""

    args: argparse.Namespace
    digits: Dataset  # all 1,797 images (the "tokens" of the activations)
    train: Dataset
    test: Dataset
    models: dict[str, MLP]  # trained, by name
    activations: dict[str, dict[str, np.ndarray]]  # model -> layer -> (images, neurons)
    store: Path  # the zarr store holding ``activations``

    @property
    def out(self) -> Path:
        return self.args.out


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.models < 2:
        from jneuron.errors import JNeuronError

        raise JNeuronError(f"--models: the cross-model analyses need at least 2 models, got {args.models}")
    context = _train(args)
    report = Report("jneuron demo: digits MLPs",
                    f"{args.models} MLPs (64-64-32-10) trained on the UCI 8x8 digits; activations on all "
                    f"{len(context.digits.labels)} images.")
    _section_crossmodel(context, report)
    # Further analyses add their section here, one call each, e.g. _section_similarity(context, report),
    # _section_probes(context, report), _section_information(context, report), _section_ablation(context,
    # report), _section_conductance(context, report).
    path = report.write(args.out / "report")
    print(f"\ndemo finished in {time.perf_counter() - start:.1f} s; results in {args.out}/")
    print(f"report: {path.resolve()}")
    return 0


def _train(args: argparse.Namespace) -> DemoContext:
    digits = load_digits()
    train, test = digits.split(seed=0)
    models, activations = {}, {}
    for seed in range(args.models):
        model = MLP(64, (64, 32), 10, rngs=nnx.Rngs(seed))
        model = train_classifier(model, train.images, train.labels, epochs=args.epochs, seed=seed)
        name = f"mlp{seed}"
        models[name] = model
        hidden = model.hidden(jnp.asarray(digits.images))
        activations[name] = {f"layers/{i}": np.asarray(h) for i, h in enumerate(hidden)}
        print(f"trained {name}: test accuracy {accuracy(model, test.images, test.labels):.3f}")
    store = args.out / "activations.zarr"
    with StoreWriter(store, tokenization="one row per 8x8 digit image", chunk_tokens=512) as writer:
        for name, layers in activations.items():
            for layer, values in layers.items():
                writer.append(name, layer, values)
        labels = [str(int(label)) for label in digits.labels]
        writer.append_text(labels, np.arange(len(labels)), labels)
    print(f"stored hidden activations of {args.models} models on {len(digits.labels)} images in {store}")
    return DemoContext(args, digits, train, test, models, activations, store)


def _section_crossmodel(context: DemoContext, report: Report) -> None:
    """MaxCorr and MinCorr streamed from the store; bar charts, a model-by-model heatmap, a neuron view."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeadNeuronWarning)
        ranking = maxcorr(open_activations(context.store), chunk_tokens=512)
    for warning in caught:
        print(f"note: {warning.message}")
    rankings = {"maxcorr": ranking, "mincorr": ranking.rescore("mincorr")}
    for name, result in rankings.items():
        print(f"\n{name}: top {context.args.top} of {len(result.scores)} neurons")
        for record in result.top(context.args.top):
            partners = ", ".join(f"{p['label']} ({p['rho']:+.2f})" for p in record["partners"])
            print(f"  {record['label']:<20} {record['score']:.3f}  {partners}")
        print(f"  wrote {result.to_json(context.out / f'{name}.json')}")
        report.add_ranking(result, caption=f"{_DISPLAY[name]} (Bau et al., 2019): each neuron's best |correlation| "
                                           "with a neuron of another model, coloured by model.")
    names = list(ranking.neurons.models)
    report.add_heatmap("Mean best |correlation| between models", _model_similarity(ranking), names, names,
                       vmin=0.0, vmax=1.0, caption="Row model's neurons, averaged: best |rho| with the column model.")
    best = int(ranking.order[0])
    model, layer, unit = (ranking.neurons.models[ranking.neurons.model[best]],
                          ranking.neurons.layers[ranking.neurons.layer[best]], int(ranking.neurons.unit[best]))
    values = context.activations[model][layer][:, unit]
    text = open_activations(context.store).text()
    report.add_neuron_view(ranking.neurons.label(best), text.tokens, values, labels=text.labels,
                           images=context.digits.images.reshape(-1, 8, 8), sentence=text.sentence, top=12,
                           window=0, caption="The images (digit label as the token) that excite the top MaxCorr "
                                             "neuron most.")


_DISPLAY = {"maxcorr": "MaxCorr", "mincorr": "MinCorr"}


def _model_similarity(ranking: CrossModelRanking) -> np.ndarray:
    """Mean over a model's neurons of their best |rho| in each other model (NaN on the diagonal)."""
    models = len(ranking.neurons.models)
    matrix = np.full((models, models), np.nan)
    for a in range(models):
        rows = ranking.neurons.model == a
        for b in range(models):
            if a != b:
                matrix[a, b] = float(np.mean(ranking.score_matrix[rows, b]))
    return matrix
