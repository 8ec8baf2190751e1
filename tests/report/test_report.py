"""Reports: every result shape renders into one self-contained page, every data string is escaped, and the
page works in headless Chromium (no console errors, every image decoded, search, no injected script runs).

One Chromium run serves the whole file (the ``browsed`` fixture); the demo report's browser test is in
tests/cli/test_cli.py, beside the demo run it needs."""

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

import jneuron as jn
from jneuron.cli.main import main
from jneuron.errors import JNeuronError
from jneuron.report import Report, neuron_view_html, register
from jneuron.report.plots import text_colour

HOSTILE = "<script>document.body.dataset.pwned='1'</script>\"'</table>&amp;"


def _ranking_dict(method, labels, scores, **extra):
    return {"method": method, "descending": True, "models": sorted({l.split("/")[0] for l in labels}),
            "neurons": [{"rank": i, "label": l, "model": l.split("/")[0], "layer": "", "unit": i, "index": i,
                         "score": s, **extra} for i, (l, s) in enumerate(zip(labels, scores))]}


def every_result(folder, rng):
    """One file of every shape a jneuron command writes, some carrying hostile strings."""
    models = {f"m{i}": rng.normal(size=(200, 4)) for i in range(3)}
    ranking = jn.maxcorr(models)
    files = {
        "maxcorr.json": ranking.to_dict(),
        "mincorr.json": ranking.rescore("mincorr").to_dict(),
        "linreg_min.json": jn.linreg_ranking(models).to_dict(),
        "similarity_cka.json": jn.similarity_matrix(models, metric="cka").to_dict(),
        "match_bipartite.json": jn.match_neurons(models["m0"], models["m1"], names=("m0", HOSTILE)).to_dict(),
        "probeless.json": jn.probeless(models["m0"], rng.integers(0, 3, 200)).overall.to_dict(),
        "information.json": {**jn.neuron_information(models, rng.integers(0, 3, 200), threshold=0.0).to_dict(),
                             "classes": [0, 1, 2], "warnings": []},
        "probe.json": {"grid": {"l1": [0.0], "l2": [1e-3], "accuracy": [[0.8]], "neurons_needed": [[3]],
                                "tolerance": 0.01, "mass": 0.9,
                                "best": {"l1": 0.0, "l2": 1e-3, "accuracy": 0.8, "neurons_needed": 3}},
                       "classes": ["NN", HOSTILE],
                       "top_neurons": {"percentage": 0.05, "union": [0], "per_class": {"NN": [0], HOSTILE: [1]},
                                       "counts": {"NN": 1, HOSTILE: 1}},
                       "ordering": {**_ranking_dict("probe_ordering", ["m0/0", "m0/1", "m0/2"], [0.0, 0.4, 0.9],
                                                    step=1), "descending": False}},
        "probe_tables.json": {"accuracy": 0.9, "keep": {"mode": "keep", "all": 0.9, "percentages": [0.1, 0.5],
                                                         "counts": [1, 6], "top": [0.5, 0.8], "bottom": [0.2, 0.4],
                                                         "random": [0.3, 0.6]}},
        "cumulative_ablation.json": {"metric": "accuracy", "baseline": 0.9, "layers": ["l0"], "widths": [4],
                                     "ks": {"network": [0, 2, 4]},
                                     "curves": [{"measure": "mutual_information", "direction": "descending",
                                                 "scope": "network", "mode": "zero", "values": [0.9, 0.5, 0.1]},
                                                {"measure": "random", "direction": "random", "scope": "network",
                                                 "mode": "zero", "values": [0.9, 0.7, 0.1]}],
                                     "random_runs": [], "orders": []},
        "top_first.json": {"ks": [0, 2, 4], "values": [0.9, 0.4, 0.1], "baseline": 0.9, "metric": "accuracy",
                           "mode": "zero", "scope": "network", "layers": ["l0"], "widths": [4], "order": [0, 1, 2, 3]},
        "summary.json": {"top_first": None, "bottom_first": None},  # filled below: ablate's summary
        "study_summary.json": {"test_accuracy": 0.9, "summary": {"zero": [
            {"scope": "network", "measure": "entropy", "descending": 0.5, "ascending": 0.8, "gap": 0.3,
             "random": 0.6, "balancing_gain": None}], "mean": []}},
        "rejuvenation.json": {"study": "neural-rejuvenation", "config": {"l1": 0.03}, "rejuvenated_at": 1,
                              "history": [{"epoch": 1, "accuracy": 0.5, "utilization": 0.9},
                                          {"epoch": 2, "accuracy": 0.7, "utilization": 0.6}]},
        "conductance.json": _ranking_dict("conductance", [f"{HOSTILE}/0", "m0/1"], [0.5, 0.2]),
        "neuron_view.json": {"neuron_view": {"neuron": "m0/3", "tokens": ["the", HOSTILE, "sat", "a", "dog"],
                                             "values": [0.1, 2.5, 0.3, 2.2, -1.0], "sentence": [0, 0, 0, 1, 1],
                                             "labels": ["DT", "NN", "VB", "DT", HOSTILE], "top": 2, "window": 1}},
        "run_maxcorr.json": {"jneuron_run": {"command": f"jneuron maxcorr {HOSTILE}", "data": {"tokens": 200}}},
    }
    curve = files["top_first.json"]
    files["summary.json"] = {"top_first": curve, "bottom_first": {**curve, "values": [0.9, 0.8, 0.1]}}
    for name, data in files.items():
        (folder / name).write_text(json.dumps(data))
    return files


# Every section the folder above gives, by title (prefix).
SECTIONS = ["Ablation curves", "Conductance", "Cumulative ablation", "Mutual information", "KL selectivity",
            "Entropy", "Class selectivity", "LinReg (min)", "Neuron matching", "MaxCorr", "MinCorr",
            "Top inputs of m0/3", "Probe neuron ordering", "Neurons per class", "Probe penalty grid",
            "Probe accuracy keeping", "Probeless", "Neural Rejuvenation", "Linear CKA between layers",
            "Information study"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("headless Chromium is needed for the report tests: apt-get install -y chromium (make chromium)")


def browse(page, profile, *, screenshot=None, fragment=""):
    """Load ``page`` in headless Chromium: ``(DOM after load, console lines)``; optionally a screenshot."""
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
               "--window-size=1200,3000", "--dump-dom", page.as_uri() + fragment]
    if screenshot is not None:
        command.insert(-2, f"--screenshot={screenshot}")
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result.stdout, console


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results")
    every_result(folder, np.random.default_rng(8))
    return folder


@pytest.fixture(scope="module")
def built(folder):
    report = Report(f"report {HOSTILE}", f"intro {HOSTILE}", metadata={"command": f"jneuron report {HOSTILE}"})
    skipped = report.add_results([folder])
    return report, report.write(folder / "out" / "report.html"), skipped


@pytest.fixture(scope="module")
def browsed(built, tmp_path_factory):
    _, page, _ = built
    return browse(page, tmp_path_factory.mktemp("profile"), fragment="#find=m1/")


def titles(page_text):
    """The section titles of a page, as text."""
    return [html.unescape(t) for t in re.findall(r'<section id="s\d+" class="[^"]+"><h2>([^<]+)</h2>', page_text)]


def test_every_result_shape_has_a_section(built):
    _, page, skipped = built
    shown = titles(page.read_text())
    assert skipped == []
    for expected in SECTIONS:
        assert sum(t.startswith(expected) for t in shown) >= 1, (expected, shown)
    # ablate's top_first.json is drawn inside summary.json's section, not twice
    assert sum(t.startswith("Ablation") and "top first" in t for t in shown) == 0
    assert not any("random random" in t for t in shown)


def test_page_is_one_self_contained_file(built):
    _, page, _ = built
    text = page.read_text()
    assert sorted(p.name for p in page.parent.iterdir()) == ["report.html"]  # no img/ folder
    images = re.findall(r'<img class="plot" src="([^"]+)"', text)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing fetched from a network
    assert "images loaded" not in text  # no debug line on the page


def test_every_data_string_is_escaped(built):
    _, page, _ = built
    text = page.read_text()
    assert "<script>document.body" not in text and "&lt;script&gt;document.body" in text
    assert text.count("<script>") == 1  # the page's own script only
    assert text.count("<table") == text.count("</table>")


def test_rankings_show_as_many_rows_as_the_title_says_and_every_partner(built):
    _, page, _ = built
    text = page.read_text()
    section = re.search(r"<h2>MaxCorr: top 12 of 12 neurons</h2>(.*?)</section>", text, re.DOTALL).group(1)
    assert section.count("<tr>") == 1 + 12
    first = re.search(r"<tbody><tr>(.*?)</tr>", section).group(1)
    assert first.count("(") >= 2  # both other models' partners, nothing cut
    probe = re.search(r"<h2>Probe neuron ordering.*?</section>", text, re.DOTALL).group(0)
    assert "partners" not in probe and "weight-mass share at entry" in probe


def test_captions_are_distinct_per_method(built):
    _, page, _ = built
    captions = re.findall(r'<p class="caption">([^<]+)</p>', page.read_text())
    maxcorr = next(c for c in captions if c.startswith("MaxCorr"))
    mincorr = next(c for c in captions if c.startswith("MinCorr"))
    assert maxcorr != mincorr and any(c.startswith("Linear CKA") for c in captions)


def test_report_command_renders_a_folder_and_refuses_one_with_nothing_it_knows(folder, tmp_path, capsys):
    assert main(["report", str(folder), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.html").stat().st_size > 10_000
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.json").write_text('{"hello": 1}')
    capsys.readouterr()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "holds no jneuron result files" in err and err.count("\n") == 1
    assert not (tmp_path / "r2").exists()


def test_unknown_result_shape_is_an_error_and_new_shapes_plug_in(tmp_path):
    report = Report()
    with pytest.raises(JNeuronError, match="no report section knows this shape"):
        report.add_result({"weird": 1}, "x")
    register(lambda d: "weird" in d, lambda r, d, n: r.add_html(n, f"<p class='weird'>{d['weird']}</p>"))
    report.add_result({"weird": 7}, "custom")
    assert "<p class='weird'>7</p>" in report.write(tmp_path / "r.html").read_text()


def test_neuron_view_shows_top_tokens_in_their_sentence():
    html = neuron_view_html("n", ["a", "b", "c", "d"], [0.0, 3.0, 1.0, -2.0], sentence=[0, 0, 1, 1], top=2, window=3)
    contexts = re.findall(r'<li class="context" data-row="(\d+)">(.*?)</li>', html)
    assert [row for row, _ in contexts] == ["1", "2"]  # largest first
    first_tokens = re.findall(r'class="tok[^"]*"[^>]*>([^<]*)</span>', contexts[0][1])
    assert first_tokens == ["a", "b"]  # context stays within sentence 0
    assert 'class="tok peak" title="row 1: +3.0000"' in html and "rgba(220,50,32,1.000)" in html
    assert "rgba(30,90,200,0.667)" in html  # the negative neighbour -2.0, at 2/3 of the largest |value|


def test_heatmap_numbers_are_dark_on_light_cells():
    from matplotlib import colormaps

    viridis = colormaps["viridis"]
    assert text_colour(viridis(1.0)) == "black" and text_colour(viridis(0.0)) == "white"


def test_page_loads_in_chromium_without_errors(browsed, built):
    dom, console = browsed
    assert console == [], console  # no script error, no refused resource, no console output at all
    status = re.search(r'id="status"[^>]*', dom).group(0)
    total = re.search(r'data-images-total="(\d+)"', status).group(1)
    assert int(total) > 15 and f'data-images-loaded="{total}"' in status  # every image decoded
    assert 'data-errors="0"' in status
    assert re.search(r'data-sections="(\d+)"', status).group(1) == str(len(built[0].sections) + 1)  # + Neurons


def test_no_injected_script_runs_and_the_page_stays_intact(browsed):
    dom, _ = browsed
    assert "data-pwned" not in dom
    assert "&lt;script&gt;document.body.dataset.pwned" in dom  # shown as text
    assert dom.count("<table") == dom.count("</table>") and dom.rstrip().endswith("</html>")


def test_search_box_filters_tables_and_neurons(browsed):
    dom, _ = browsed  # loaded with #find=m1/
    assert 'id="neuron-search"' in dom and "neurons match" in dom
    rows = re.findall(r'<tr( class="hidden")?><td>\d+</td><td><a class="neuron-link" href="[^"]+">([^<]+)</a>', dom)
    assert rows and all(bool(hidden) != ("m1/" in label) for hidden, label in rows)
