"""The result contract (jneuron.results): every public result type is a frozen dataclass with ``to_dict()``
(plain JSON types) and ``to_json(path)``, names its neurons when it holds per-neuron values, and does not
draw itself (figures live in jneuron.report.figures)."""

import dataclasses
import json
import math

import numpy as np
import pytest
from flax import nnx

import jneuron as jn
from jneuron import flax as jnf
from jneuron.models import MLP
from jneuron.report import figures
from jneuron.results import NeuronIndex, Result, to_plain

NOT_RESULTS = {"NeuronIndex", "LabelledTokens", "Linen"}  # identities, data and adapters, not results
TOKENS, WIDTH, CLASSES = 120, 6, 3


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = np.arange(TOKENS) % CLASSES
    x = rng.normal(size=(TOKENS, WIDTH)).astype(np.float32)
    x[:, 0] += 2.0 * y
    z = np.hstack([x[:, :2] @ rng.normal(size=(2, 2)), rng.normal(size=(TOKENS, 2))]).astype(np.float32)
    return x, z, y


@pytest.fixture(scope="module")
def model():
    return MLP(WIDTH, (4, 3), CLASSES, rngs=nnx.Rngs(0))


LAYERS = ["layers/0", "layers/1"]


def _hidden(model, x):
    return {layer: np.asarray(h) for layer, h in zip(LAYERS, model.hidden(x))}


# name -> (build(x, z, y, model), {neuron attribute: expected number of neurons(result, x, z)})
CASES = {
    "Ranking": (lambda x, z, y, m: jn.neuron_information({"m": {"l": x}}, y, threshold=0.0).ranking(),
                {"neurons": lambda r, x, z: x.shape[1]}),
    "CrossModelRanking": (lambda x, z, y, m: jn.maxcorr([x, z]), {"neurons": lambda r, x, z: x.shape[1] + z.shape[1]}),
    "CCAResult": (lambda x, z, y, m: jn.cca(x, z),
                  {"neurons_x": lambda r, x, z: x.shape[1], "neurons_y": lambda r, x, z: z.shape[1]}),
    "PWCCAResult": (lambda x, z, y, m: jn.pwcca(x, z), {}),
    "CKAResult": (lambda x, z, y, m: jn.cka(x, z), {}),
    "SimilarityMatrix": (lambda x, z, y, m: jn.similarity_matrix({"x": x, "z": z}, {"z": z}, metric="cka"),
                         {"neurons_a": lambda r, x, z: x.shape[1] + z.shape[1],
                          "neurons_b": lambda r, x, z: z.shape[1]}),
    "DirectionRanking": (lambda x, z, y, m: jn.direction_ranking(x, z, method="cca"),
                         {"neurons": lambda r, x, z: x.shape[1]}),
    "Matching": (lambda x, z, y, m: jn.match_neurons(x, z),
                 {"neurons_x": lambda r, x, z: x.shape[1], "neurons_y": lambda r, x, z: z.shape[1]}),
    "SparsePrediction": (lambda x, z, y, m: jn.sparse_prediction(x, z, penalties=[0.1]),
                         {"neurons_x": lambda r, x, z: x.shape[1], "neurons_y": lambda r, x, z: z.shape[1]}),
    "CoMoments": (lambda x, z, y, m: jn.comoments(x), {"neurons": lambda r, x, z: x.shape[1]}),
    "Probe": (lambda x, z, y, m: jn.train_probe(x, y, epochs=1), {"neurons": lambda r, x, z: x.shape[1]}),
    "ProbeGrid": (lambda x, z, y, m: jn.train_probes(x, y, l1=(0.0,), l2=(0.0, 1e-3), epochs=1), {}),
    "Selection": (lambda x, z, y, m: jn.top_neurons(jn.train_probe(x, y, epochs=1), 0.5),
                  {"neurons": lambda r, x, z: x.shape[1]}),
    "AblationTable": (lambda x, z, y, m: jn.zero_out_ablation(jn.train_probe(x, y, epochs=1), x, y, [0.5]), {}),
    "Probeless": (lambda x, z, y, m: jn.probeless(x, y), {"neurons": lambda r, x, z: x.shape[1]}),
    "NeuronInformation": (lambda x, z, y, m: jn.neuron_information({"m": {"a": x, "b": z}}, y, threshold=0.0),
                          {"neurons": lambda r, x, z: x.shape[1] + z.shape[1]}),
    "CumulativeAblation": (lambda x, z, y, m: jn.cumulative_ablation(
        m, x, y, jn.neuron_information({"mlp": _hidden(m, x)}, y), LAYERS, random=1, steps=2),
        {"neurons": lambda r, x, z: 7}),
    "AblationCurve": (lambda x, z, y, m: jnf.ablation_curve(m, x, y, np.arange(7), LAYERS, [0, 3]),
                      {"neurons": lambda r, x, z: 7}),
    "Conductance": (lambda x, z, y, m: jnf.conductance(m, x[:4], "layers/0", target=1, steps=4),
                    {"neurons": lambda r, x, z: 4}),
    "NeuronStats": (lambda x, z, y, m: jnf.neuron_stats(m, x, LAYERS, labels=y), {"neurons": lambda r, x, z: 7}),
    "ControlSweep": (lambda x, z, y, m: jnf.control_sweep(m, x, "layers/1", [0], jnf.neuron_stats(m, x, LAYERS),
                                                          [0.0, 1.0]), {}),
    "Capture": (lambda x, z, y, m: jnf.capture(m, x[:5], LAYERS), {"neurons": lambda r, x, z: 7}),
}


def _public_result_types() -> dict[str, type]:
    found = {}
    for module in (jn, jnf):
        for name in dir(module):
            value = getattr(module, name)
            if isinstance(value, type) and dataclasses.is_dataclass(value) and name not in NOT_RESULTS:
                found[name] = value
    return found


@pytest.fixture(scope="module")
def results(data, model):
    x, z, y = data
    return {name: build(x, z, y, model) for name, (build, _) in CASES.items()}


def test_every_public_result_type_is_covered():
    assert set(_public_result_types()) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_type_follows_the_contract(name):
    kind = _public_result_types()[name]
    assert issubclass(kind, Result)
    assert kind.__dataclass_params__.frozen
    assert not hasattr(kind, "plot"), f"{name} draws itself; figures belong in jneuron.report.figures"
    assert callable(kind.to_dict) and callable(kind.to_json)


def _assert_plain(value, where="to_dict()"):
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str, f"{where}: key {key!r} is not a str"
            _assert_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _assert_plain(item, f"{where}[{i}]")
    else:
        assert value is None or type(value) in (str, int, float, bool), f"{where}: {type(value).__name__}"
        assert not (type(value) is float and not math.isfinite(value)), f"{where}: {value} is not JSON"


@pytest.mark.parametrize("name", sorted(CASES))
def test_instance_round_trips_through_json(name, results, tmp_path):
    result = results[name]
    assert type(result).__name__ == name
    plain = result.to_dict()
    _assert_plain(plain)
    assert json.loads(json.dumps(plain, allow_nan=False)) == plain
    path = result.to_json(tmp_path / f"{name}.json")
    assert path == tmp_path / f"{name}.json"
    assert json.loads(path.read_text()) == plain
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.json"]  # written atomically: no leftovers


@pytest.mark.parametrize("name", sorted(CASES))
def test_instance_is_frozen(name, results):
    result = results[name]
    field = dataclasses.fields(result)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(result, field, None)


@pytest.mark.parametrize("name", sorted(n for n, (_, named) in CASES.items() if named))
def test_per_neuron_results_name_their_neurons(name, results, data):
    x, z, _ = data
    result = results[name]
    for attribute, expected in CASES[name][1].items():
        neurons = getattr(result, attribute)
        assert isinstance(neurons, NeuronIndex), f"{name}.{attribute} is {type(neurons).__name__}"
        assert len(neurons) == expected(result, x, z), f"{name}.{attribute}"
        assert all(isinstance(neurons.label(i), str) for i in range(len(neurons)))


def test_names_match_the_values(results):
    cca, matrix = results["CCAResult"], results["SimilarityMatrix"]
    assert cca.directions_x.shape[0] == len(cca.neurons_x) and cca.directions_y.shape[0] == len(cca.neurons_y)
    assert cca.to_dict(directions=True)["neurons_y"][0]["model"] == "y"
    assert matrix.neurons_a.layers == matrix.names_a and matrix.neurons_b.layers == matrix.names_b
    assert matrix.to_dict()["widths_a"] == [WIDTH, 4] and matrix.to_dict()["widths_b"] == [4]
    selection = results["Selection"]
    assert [r["index"] for r in selection.to_dict()["union"]] == selection.union.tolist()
    stats = results["NeuronStats"]
    assert [stats.neurons.label(i) for i in (0, 4)] == ["model/layers/0/0", "model/layers/1/0"]


def test_figures_draw_what_the_results_no_longer_draw(results, tmp_path):
    matrix, curve, cumulative = results["SimilarityMatrix"], results["AblationCurve"], results["CumulativeAblation"]
    assert figures.similarity_figure(matrix).axes[0].get_title() == f"cka, {TOKENS} tokens"
    assert [line.get_label() for line in figures.ablation_curve_figure(curve).axes[0].lines] == ["whole network",
                                                                                                  "intact"]
    figure = figures.cumulative_ablation_figure(cumulative, "layer", "zero", tmp_path / "c.svg")
    assert len(figure.axes) == len(LAYERS) and (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")
    assert figures.png(figures.ablation_curve_figure(curve))[:4] == b"\x89PNG"


def test_to_plain_makes_json_types():
    value = {1: np.array([np.float32(0.5), np.nan]), "b": (np.int64(2), np.bool_(True), np.str_("s"))}
    plain = to_plain(value)
    assert plain == {"1": [0.5, None], "b": [2, True, "s"]}
    _assert_plain(plain)
