"""The demo: train small MLPs on the bundled digits, store their activations, run the analyses, write a report.

Steps: train ``--models`` MLPs; write every hidden layer to a zarr v3 activation store
(``OUT/activations.zarr``, the digit label of each image as its "token"); stream MaxCorr/MinCorr from the
store; layer-by-layer SVCCA and CKA; probe, information measures, cumulative and MaxCorr-guided ablation, and conductance on the first
model. Every analysis writes its result file to ``OUT`` (``maxcorr.json``, ``similarity_svcca.json``, ...),
and the report, ``OUT/report.html``, is built from those files, exactly as ``jneuron report OUT`` builds it.
Each analysis is one ``_section_*`` function called from :func:`run` with the shared :class:`DemoContext`.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jneuron.cli.options import add_out_argument, write_json

if TYPE_CHECKING:
    from jneuron.crossmodel.maxcorr import CrossModelRanking
    from jneuron.data.bundled import Dataset

NAME = "demo"
HELP = "train small models on the bundled digits data, run the analyses end to end and write a report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_out_argument(parser, "demo-output")
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
    models: dict[str, Any]  # trained MLPs, by name
    activations: dict[str, dict[str, np.ndarray]]  # model -> layer -> (images, neurons)
    store: Path  # the zarr store holding ``activations``

    @property
    def out(self) -> Path:
        return self.args.out


def run(args: argparse.Namespace) -> int:
    from jneuron.report import Report

    start = time.perf_counter()
    if args.models < 2:
        from jneuron.errors import JNeuronError

        raise JNeuronError(f"--models: the cross-model analyses need at least 2 models, got {args.models}")
    context = _train(args)
    ranking = _section_crossmodel(context)
    _section_similarity(context)
    _section_probes(context)
    _section_information(context)
    _section_ablation(context, ranking)
    _section_conductance(context)
    report = Report("jneuron demo: digits MLPs",
                    f"{args.models} MLPs (64-64-32-10) trained on the UCI 8x8 digits; activations on all "
                    f"{len(context.digits.labels)} images.",
                    metadata={"command": getattr(args, "command_line", None),
                              "settings": {"models": args.models, "epochs": args.epochs},
                              "data": f"{len(context.digits.labels)} images x {args.models} models x (64 + 32) "
                                      "hidden neurons"})
    report.add_results([args.out])
    report.add_store_views(context.store)
    path = report.write(args.out / "report.html")
    print(f"\ndemo finished in {time.perf_counter() - start:.1f} s; results in {args.out}/")
    print(f"report: {path.resolve()}")
    return 0


def _train(args: argparse.Namespace) -> DemoContext:
    import jax.numpy as jnp
    from flax import nnx

    from jneuron.data.bundled import load_digits
    from jneuron.data.store import StoreWriter
    from jneuron.models import MLP, accuracy, train_classifier

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


def _section_crossmodel(context: DemoContext) -> CrossModelRanking:
    """MaxCorr and MinCorr streamed from the store, a model-by-model heatmap, the top neuron's top images."""
    from jneuron.crossmodel.maxcorr import maxcorr
    from jneuron.data.files import open_activations
    from jneuron.errors import DeadNeuronWarning

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
    names = list(ranking.neurons.models)
    write_json(context.out / "model_similarity.json",
               {"title": "Mean best |correlation| between models", "matrix": [[None if np.isnan(v) else float(v) for v in row] for row in _model_similarity(ranking)],
                "rows": names, "columns": names, "vmin": 0.0, "vmax": 1.0,
                "caption": "Row model's neurons, averaged: each neuron's best |rho| with a neuron of the column model "
                           "(MaxCorr's partners, Bau et al., 2019)."})
    best = int(ranking.order[0])
    model, layer, unit = (ranking.neurons.models[ranking.neurons.model[best]],
                          ranking.neurons.layers[ranking.neurons.layer[best]], int(ranking.neurons.unit[best]))
    values = context.activations[model][layer][:, unit]
    rows = np.lexsort((np.arange(len(values)), -values))[:12]
    labels = [str(int(v)) for v in context.digits.labels[rows]]
    write_json(context.out / "neuron_view.json", {
        "title": f"Top inputs of {ranking.neurons.label(best)}",
        "caption": "The 12 images (digit label as the token) that excite the top MaxCorr neuron most.",
        "neuron_view": {"neuron": ranking.neurons.label(best), "tokens": labels, "labels": labels,
                        "values": values[rows].tolist(), "sentence": list(range(len(rows))), "top": 12, "window": 0,
                        "images": context.digits.images[rows].reshape(-1, 8, 8).tolist()}})
    return ranking


def _first_model(context: DemoContext) -> tuple[str, Any, np.ndarray, list[str]]:
    """The first model, its hidden layers side by side ``(images, neurons)``, and their paths."""
    name = next(iter(context.models))
    layers = list(context.activations[name])
    return name, context.models[name], np.concatenate([context.activations[name][l] for l in layers], 1), layers


def _section_similarity(context: DemoContext) -> None:
    """Layer-by-layer SVCCA and linear CKA between all models' hidden layers (one streamed pass each)."""
    from jneuron.errors import DeadNeuronWarning
    from jneuron.similarity.matrix import similarity_matrix

    layers = {f"{model}/{layer}": values for model, by_layer in context.activations.items()
              for layer, values in by_layer.items()}
    names = list(layers)
    for metric in ("svcca", "cka"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeadNeuronWarning)
            result = similarity_matrix(layers, metric=metric)
        write_json(context.out / f"similarity_{metric}.json", result.to_dict())
    print(f"similarity matrices (SVCCA, CKA) over {len(names)} layers written")


def _section_probes(context: DemoContext) -> None:
    """Linguistic-correlation-style probe on one model's neurons: ordering, per-class counts, ablation table."""
    from jneuron.probing.ablation import retrain_ablation, zero_out_ablation
    from jneuron.probing.probe import train_probe
    from jneuron.probing.selection import neuron_ordering, top_neurons
    from jneuron.results import NeuronIndex

    name, _, x, layers = _first_model(context)
    labels = context.digits.labels
    order = np.random.default_rng(0).permutation(len(labels))
    train, test = order[: len(order) * 3 // 4], order[len(order) * 3 // 4 :]
    neurons = NeuronIndex.from_layers([(name, [(l, context.activations[name][l].shape[1]) for l in layers])])
    probe = train_probe(x[train], labels[train], l1=1e-3, l2=1e-3, epochs=10, names=neurons)
    ordering = neuron_ordering(probe)
    accuracy_all = probe.evaluate(x[test], labels[test])["accuracy"]
    print(f"\nprobe on {name}'s {x.shape[1]} neurons: test accuracy {accuracy_all:.3f}")
    ordering.to_json(context.out / "probe_ordering.json")
    write_json(context.out / "probe_class_counts.json",
               {"title": f"Neurons per digit ({name}, 20% of each class's weight mass)",
                "class_counts": {str(k): v for k, v in top_neurons(probe, 0.2).counts.items()}, "xlabel": "digit",
                "caption": "How many of the probe's neurons hold each digit's weight mass: few for a focused "
                           "class, many for a distributed one (Dalvi et al., 2019)."})
    shares = (0.1, 0.2, 0.5)
    zeroed = zero_out_ablation(probe, x[test], labels[test], shares, ordering=ordering)
    retrained = retrain_ablation(x[train], labels[train], x[test], labels[test], ordering, shares,
                                 l1=1e-3, l2=1e-3, epochs=10)
    write_json(context.out / "probe.json", {"accuracy": accuracy_all, "keep": zeroed.to_dict(),
                                            "retrain": retrained.to_dict()})


def _section_information(context: DemoContext) -> None:
    """Information measures of one model's ReLU neurons (1 bit: active or not) and cumulative ablation."""
    from jneuron.flax.cumulative_ablation import cumulative_ablation
    from jneuron.information import neuron_information

    name, model, x, layers = _first_model(context)
    info = neuron_information({name: context.activations[name]}, context.digits.labels, threshold=0.0)
    info.to_json(context.out / "information.json")
    ablation = cumulative_ablation(model, context.test.images, context.test.labels, info, layers,
                                   random=2, scopes=("network",), steps=12, reference=context.train.images)
    ablation.to_json(context.out / "cumulative_ablation.json")
    print(f"information measures of {len(info.neurons)} neurons; cumulative ablation curves written")


def _section_ablation(context: DemoContext, ranking: CrossModelRanking) -> None:
    """Bau et al.'s experiment: remove the top or the bottom MaxCorr neurons of one model."""
    from jneuron.flax import ablation_curve

    name, model, _, layers = _first_model(context)
    own = np.flatnonzero(ranking.neurons.model == ranking.neurons.models.index(name))
    top_first = own[np.argsort(-ranking.scores[own], kind="stable")] - own[0]
    ks = np.linspace(0, len(own), 9).astype(int)
    curves = {}
    for label, order in (("top MaxCorr first", top_first), ("bottom MaxCorr first", top_first[::-1])):
        curves[label] = ablation_curve(model, context.test.images, context.test.labels, order, layers, ks).to_dict()
    write_json(context.out / "ablation_maxcorr.json",
               {**curves, "title": f"Ablating {name}'s neurons by MaxCorr",
                "caption": "Bau et al., 2019: removing (zeroing) the most shared neurons first hurts accuracy "
                           "faster than removing the least shared first."})


def _section_conductance(context: DemoContext, digit: int = 3) -> None:
    """Conductance of one model's first hidden layer for one digit's logit, on test images of that digit."""
    from jneuron.flax import conductance

    name, model, _, _ = _first_model(context)
    images = context.test.images[context.test.labels == digit]
    result = conductance(model, images, "layers/0", target=digit, steps=32)
    gap = float(np.abs(result.gap).max() / max(np.abs(result.delta).max(), 1e-12))
    write_json(context.out / "conductance.json", {
        **result.ranking(name).to_dict(), "title": f"Conductance of {name}/layers/0 for the digit-{digit} logit",
        "caption": f"Conductance (Dhamdhere et al., 2019): each neuron's share of the integrated-gradients "
                   f"attribution of the digit-{digit} logit, on the {len(images)} test images of a {digit}; "
                   f"largest completeness gap {gap:.1e} of the largest output change."})
    print(f"conductance of {name}/layers/0 on {len(images)} test images: relative completeness gap {gap:.1e}")


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
