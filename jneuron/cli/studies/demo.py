"""The demo: train small MLPs on the bundled digits, store their activations, run the analyses, write a report.

Steps: train ``--models`` MLPs; write every hidden layer to a zarr v3 activation store
(``OUT/activations.zarr``, the digit label of each image as its "token"); stream MaxCorr/MinCorr from the
store; layer-by-layer SVCCA and CKA; probe, information measures, cumulative and MaxCorr-guided ablation, and conductance on the first
model; gather the results in ``OUT/report/index.html``. Each analysis is one ``_section_*`` function
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

from jneuron.cli.options import add_out_argument, write_json
from jneuron.crossmodel.maxcorr import CrossModelRanking, maxcorr
from jneuron.data.bundled import Dataset, load_digits
from jneuron.data.files import open_activations
from jneuron.data.store import StoreWriter
from jneuron.errors import DeadNeuronWarning
from jneuron.flax import ablation_curve, conductance
from jneuron.flax.cumulative_ablation import cumulative_ablation
from jneuron.information import neuron_information
from jneuron.models import MLP, accuracy, train_classifier
from jneuron.probing.ablation import retrain_ablation, zero_out_ablation
from jneuron.probing.probe import train_probe
from jneuron.probing.selection import neuron_ordering, top_neurons
from jneuron.report import Report
from jneuron.results import NeuronIndex
from jneuron.similarity.matrix import similarity_matrix

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
    ranking = _section_crossmodel(context, report)
    _section_similarity(context, report)
    _section_probes(context, report)
    _section_information(context, report)
    _section_ablation(context, report, ranking)
    _section_conductance(context, report)
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


def _section_crossmodel(context: DemoContext, report: Report) -> CrossModelRanking:
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
    return ranking


def _first_model(context: DemoContext) -> tuple[str, MLP, np.ndarray, list[str]]:
    """The first model, its hidden layers side by side ``(images, neurons)``, and their paths."""
    name = next(iter(context.models))
    layers = list(context.activations[name])
    return name, context.models[name], np.concatenate([context.activations[name][l] for l in layers], 1), layers


def _section_similarity(context: DemoContext, report: Report) -> None:
    """Layer-by-layer SVCCA and linear CKA between all models' hidden layers (one streamed pass each)."""
    layers = {f"{model}/{layer}": values for model, by_layer in context.activations.items()
              for layer, values in by_layer.items()}
    names = list(layers)
    for metric, title in (("svcca", "SVCCA (mean rho, 99% variance kept)"), ("cka", "Linear CKA")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeadNeuronWarning)
            result = similarity_matrix(layers, metric=metric)
        report.add_heatmap(f"{title} between layers", result.values, names, names, vmin=0.0, vmax=1.0,
                           caption="Every pair of hidden layers of all models (Raghu et al., 2017; Kornblith "
                                   "et al., 2019).")
        write_json(context.out / f"similarity_{metric}.json", result.to_dict())
    print(f"similarity matrices (SVCCA, CKA) over {len(names)} layers written")


def _section_probes(context: DemoContext, report: Report) -> None:
    """Linguistic-correlation-style probe on one model's neurons: ordering, per-class counts, ablation table."""
    name, _, x, layers = _first_model(context)
    labels = context.digits.labels
    order = np.random.default_rng(0).permutation(len(labels))
    train, test = order[: len(order) * 3 // 4], order[len(order) * 3 // 4 :]
    neurons = NeuronIndex.from_layers([(name, [(l, context.activations[name][l].shape[1]) for l in layers])])
    probe = train_probe(x[train], labels[train], l1=1e-3, l2=1e-3, epochs=10, names=neurons)
    ordering = neuron_ordering(probe)
    accuracy_all = probe.evaluate(x[test], labels[test])["accuracy"]
    print(f"\nprobe on {name}'s {x.shape[1]} neurons: test accuracy {accuracy_all:.3f}")
    report.add_ranking(ordering, title=f"Probe neuron ordering ({name})",
                       caption="Elastic-net probe (Dalvi et al., 2019): neurons in the order they join the top sets.")
    report.add_class_counts("Neurons per digit (20% of each class's weight mass)",
                            top_neurons(probe, 0.2).counts, caption="How focused or distributed each class is.")
    shares = (0.1, 0.2, 0.5)
    zeroed = zero_out_ablation(probe, x[test], labels[test], shares, ordering=ordering)
    retrained = retrain_ablation(x[train], labels[train], x[test], labels[test], ordering, shares,
                                 l1=1e-3, l2=1e-3, epochs=10)
    series = {f"{table.mode}: {kind}": (100 * table.percentages, getattr(table, kind))
              for table in (zeroed, retrained) for kind in ("top", "bottom", "random")}
    report.add_curves("Probe accuracy keeping a share of neurons", series, xlabel="% of neurons kept",
                      ylabel="test accuracy", caption=f"All neurons: {accuracy_all:.3f}. Zeroed out in the trained "
                                                      "probe (keep) or a fresh probe on the selection (retrain).")
    write_json(context.out / "probe.json", {"accuracy": accuracy_all, "keep": zeroed.to_dict(),
                                            "retrain": retrained.to_dict()})


def _section_information(context: DemoContext, report: Report) -> None:
    """Information measures of one model's ReLU neurons (1 bit: active or not) and cumulative ablation."""
    name, model, x, layers = _first_model(context)
    info = neuron_information({name: context.activations[name]}, context.digits.labels, threshold=0.0)
    info.to_json(context.out / "information.json")
    report.add_ranking(info.ranking("mutual_information"), title=f"Mutual information with the digit ({name})",
                       caption="I(T; Y) of each neuron's 1-bit output (Amjad et al., 2018), in bits.")
    ablation = cumulative_ablation(model, context.test.images, context.test.labels, info, layers,
                                   random=2, scopes=("network",), steps=12, reference=context.train.images)
    fraction = ablation.ks["network"] / ablation.ks["network"][-1]
    series = {f"{measure} {direction} ({mode})": (fraction, ablation.curve(measure, direction, "network", mode))
              for measure, direction in (("mutual_information", "descending"), ("selectivity", "descending"),
                                         ("random", "random")) for mode in ("zero", "mean")}
    report.add_curves("Cumulative ablation over the whole network", series, xlabel="fraction of neurons removed",
                      ylabel="test accuracy", caption="Zero ablation vs bias balancing (mean).")
    ablation.to_json(context.out / "cumulative_ablation.json")
    print(f"information measures of {len(info.neurons)} neurons; cumulative ablation curves written")


def _section_ablation(context: DemoContext, report: Report, ranking: CrossModelRanking) -> None:
    """Bau et al.'s experiment: remove the top or the bottom MaxCorr neurons of one model."""
    name, model, _, layers = _first_model(context)
    own = np.flatnonzero(ranking.neurons.model == ranking.neurons.models.index(name))
    top_first = own[np.argsort(-ranking.scores[own], kind="stable")] - own[0]
    ks = np.linspace(0, len(own), 9).astype(int)
    series = {}
    for label, order in (("top MaxCorr first", top_first), ("bottom MaxCorr first", top_first[::-1])):
        curve = ablation_curve(model, context.test.images, context.test.labels, order, layers, ks)
        series[label] = (ks, curve.values)
    report.add_curves(f"Ablating {name}'s neurons by MaxCorr", series, xlabel="neurons removed (zeroed)",
                      ylabel="test accuracy", caption="Removing the most shared neurons first hurts faster.")


def _section_conductance(context: DemoContext, report: Report, digit: int = 3) -> None:
    """Conductance of one model's first hidden layer for one digit's logit, on test images of that digit."""
    name, model, _, _ = _first_model(context)
    images = context.test.images[context.test.labels == digit]
    result = conductance(model, images, "layers/0", target=digit, steps=32)
    gap = float(np.abs(result.gap).max() / max(np.abs(result.delta).max(), 1e-12))
    report.add_ranking(result.ranking(name), title=f"Conductance of {name}/layers/0 for the digit-{digit} logit",
                       caption=f"Dhamdhere et al., 2019, on the {len(images)} test images of a {digit}; largest "
                               f"completeness gap {gap:.1e} of the largest output change.")
    print(f"conductance of {name}/layers/0 on {len(images)} test images: relative completeness gap {gap:.1e}")


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
