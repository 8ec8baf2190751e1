"""The real-data workflow of issue 18 with the command line alone, on a NeuroX HDF5 of 7 "layers" over real
English text (Python's own documentation topics): convert, MaxCorr/MinCorr across layers, similarity (all
four metrics) across layers, a probe and the information measures with NeuroX label files, and a report
with a section for each; and the same folder read back by `jneuron report`."""

import json
import re

import numpy as np
import pytest

from jneuron.cli.main import main
from tests.data.test_formats import write_neurox_hdf5

LAYERS, WIDTH = 7, 12


def _tag(word: str) -> str:
    if word.isdigit():
        return "NUM"
    if not word.isalnum():
        return "PUNCT"
    if word[0].isupper():
        return "CAP"
    return "SHORT" if len(word) <= 3 else "LONG"


def english_sentences(count: int = 160) -> list[list[str]]:
    """Sentences of real English from pydoc's topics, words and punctuation as tokens."""
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics))
    sentences = []
    for raw in re.split(r"(?<=[.!?])\s+", text):
        words = re.findall(r"[A-Za-z]+|\d+|[^\sA-Za-z\d]", raw)
        if 4 <= len(words) <= 30:
            sentences.append(words)
        if len(sentences) == count:
            break
    return sentences


@pytest.fixture(scope="module")
def neurox(tmp_path_factory):
    """``minilm.hdf5`` (7 layers x 12 neurons, signed), ``tokens.txt`` and ``labels.txt`` (NeuroX text)."""
    folder = tmp_path_factory.mktemp("workflow")
    rng = np.random.default_rng(18)
    sentences = english_sentences()
    tags = [[_tag(w) for w in s] for s in sentences]
    names = sorted({t for s in tags for t in s})
    acts = []
    for words, labels in zip(sentences, tags):
        signal = np.array([names.index(t) for t in labels], float)
        shared = rng.normal(size=(len(words), 1))
        layers = []
        for layer in range(LAYERS):  # each layer mixes a shared direction, the tag and its own noise
            x = rng.normal(size=(len(words), WIDTH)) + (1 + layer / 3) * shared
            x[:, 0] += 1.5 * signal
            layers.append(x)
        acts.append(np.stack(layers).astype(np.float32))
    write_neurox_hdf5(folder / "minilm.hdf5", sentences, acts)
    (folder / "tokens.txt").write_text("".join(" ".join(s) + "\n" for s in sentences))
    (folder / "labels.txt").write_text("".join(" ".join(t) + "\n" for t in tags))
    return folder


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, f"{argv[0]} exited {code}: {err}"
    return out, err


def test_the_whole_workflow_with_the_command_line(neurox, capsys):
    d, out = neurox, neurox / "results"
    run(capsys, "convert", d / "minilm.hdf5", "--tokens", d / "tokens.txt", "--labels", d / "labels.txt",
        "--out", d / "minilm.zarr")
    store = d / "minilm.zarr"
    text, _ = run(capsys, "maxcorr", store, "--layers-as-models", "--out", out)
    assert "minilm/" in text
    run(capsys, "mincorr", store, "--layers-as-models", "--out", out)
    run(capsys, "similarity", store, "--metric", "svcca", "cca", "pwcca", "cka", "--out", out)
    run(capsys, "probe", store, "--labels", d / "labels.txt", "--tokens", d / "tokens.txt", "--epochs", "3",
        "--out", out)
    _, err = run(capsys, "information", store, "--labels", d / "labels.txt", "--out", out)
    assert "warning:" in err and "--threshold 0" in err  # a 0.5 cut on signed activations
    run(capsys, "report", out, "--activations", store, "--out", out)

    maxcorr = json.loads((out / "maxcorr.json").read_text())
    assert maxcorr["models"] == [f"minilm/{i}" for i in range(LAYERS)]
    assert all(len(n["partners"]) == LAYERS - 1 for n in maxcorr["neurons"])
    for metric in ("svcca", "cca", "pwcca", "cka"):
        matrix = json.loads((out / f"similarity_{metric}.json").read_text())
        assert matrix["names_a"] == [f"minilm/{i}" for i in range(LAYERS)]  # the store expanded into its layers
        assert len(matrix["values"]) == LAYERS
    probe = json.loads((out / "probe.json").read_text())
    assert probe["classes"] == ["CAP", "LONG", "NUM", "PUNCT", "SHORT"]
    assert probe["ordering"]["neurons"][0]["unit"] == 0  # the planted tag neuron of some layer comes first
    information = json.loads((out / "information.json").read_text())
    assert information["classes"] == probe["classes"] and information["warnings"]

    page = (out / "report.html").read_text()
    titles = re.findall(r'<section id="s\d+" class="[^"]+"><h2>([^<]+)</h2>', page)
    for expected in ("MaxCorr: top 20 of 84", "MinCorr: top 20 of 84", "SVCCA between layers", "CCA between layers",
                     "PWCCA between layers", "Linear CKA between layers", "Probe neuron ordering",
                     "Mutual information: top 20", "Class selectivity: top 20"):
        assert any(t.startswith(expected) for t in titles), (expected, titles)
    assert "Caution:" in page and "unbounded" in page  # selectivity on signed activations is flagged
    assert "jneuron maxcorr" in page and "tokens" in page  # the run records: command and data shape
    assert page.count('class="caption"') >= len(titles)
    views = re.findall(r'<div class="neuron-view" data-neuron="([^"]+)"', page)
    assert "minilm/0/0" in views  # the planted neuron's top tokens, in their English sentences
    assert re.search(r'<span class="tok peak"[^>]*>[^<]+</span>', page)


def test_the_store_keeps_its_labels_for_later_commands(neurox, capsys):
    store = neurox / "stored.zarr"
    run(capsys, "convert", neurox / "minilm.hdf5", "--tokens", neurox / "tokens.txt", "--labels",
        neurox / "labels.txt", "--out", store)
    run(capsys, "information", f"{store}#minilm/0,minilm/6", "--threshold", "0", "--out", neurox / "info")
    data = json.loads((neurox / "info" / "information.json").read_text())
    assert data["classes"] == ["CAP", "LONG", "NUM", "PUNCT", "SHORT"] and len(data["neurons"]) == 2 * WIDTH
    assert data["warnings"] == [d for d in data["warnings"] if "threshold" not in d]  # a 0 cut: no cut warning


def test_selected_layers_of_one_store_compare_as_models(neurox, capsys):
    store = neurox / "minilm.zarr"
    if not store.exists():
        run(capsys, "convert", neurox / "minilm.hdf5", "--out", store)
    run(capsys, "maxcorr", f"{store}#minilm/0", f"{store}#minilm/1", "--no-plot", "--out", neurox / "two")
    assert json.loads((neurox / "two" / "maxcorr.json").read_text())["models"] == ["minilm/0", "minilm/1"]
    run(capsys, "linreg", store, "--layers-as-models", "--no-plot", "--out", neurox / "two")
    assert json.loads((neurox / "two" / "linreg_min.json").read_text())["models"][0] == "minilm/0"
