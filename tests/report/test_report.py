"""Reports: every result shape renders into one self-contained page, every data string is escaped, and the
page works in headless Chromium (no console errors, every image decoded, search, no injected script runs;
every linked neuron has a view that its link opens and the search finds).

Two Chromium runs serve the whole file (the ``browsed`` and ``probed`` fixtures); the demo report's browser
test is in tests/cli/test_cli.py, beside the demo run it needs."""

import base64
import hashlib
import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

import jneuron as jn
from jneuron.cli.main import main
from jneuron.data.store import StoreWriter
from jneuron.errors import JNeuronError, QuantizationWarning
from jneuron.report import Report, neuron_view_html, register
from jneuron.report.plots import text_colour

HOSTILE = "<script>document.body.dataset.pwned='1'</script>\"'</table>&amp;"


def _ranking_dict(method, labels, scores, **extra):
    return {"method": method, "descending": True, "models": sorted({l.split("/")[0] for l in labels}),
            "neurons": [{"rank": i, "label": l, "model": l.split("/")[0], "layer": "", "unit": i, "index": i,
                         "score": s, **extra} for i, (l, s) in enumerate(zip(labels, scores))]}


def every_result(folder, rng):
    """One file of every shape a jneuron command writes, some carrying hostile strings, and the activation
    store they came from (token k is "wk", in sentence k // 10)."""
    models = {f"m{i}": rng.normal(size=(200, 4)) for i in range(3)}
    with StoreWriter(folder / "store.zarr") as store:
        for name, values in models.items():
            store.append(name, "", values.astype(np.float32))
        store.append_text([f"w{k}" for k in range(200)], np.arange(200) // 10)
    with pytest.warns(QuantizationWarning):  # signed activations, the 1-bit cut at 0.5: both cautions
        information = jn.neuron_information(models, rng.integers(0, 3, 200), threshold=0.5)
    ranking = jn.maxcorr(models)
    files = {
        "maxcorr.json": ranking.to_dict(),
        "mincorr.json": ranking.rescore("mincorr").to_dict(),
        "linreg_min.json": jn.linreg_ranking(models).to_dict(),
        "similarity_cka.json": jn.similarity_matrix(models, metric="cka").to_dict(),
        "match_bipartite.json": jn.match_neurons(models["m0"], models["m1"], names=("m0", HOSTILE)).to_dict(),
        "probeless.json": jn.probeless(models["m0"], rng.integers(0, 3, 200)).overall.to_dict(),
        "information.json": {**information.to_dict(), "classes": [0, 1, 2]},
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
        "conductance.json": _ranking_dict("conductance", [f"{HOSTILE}/0", "m0/10", "m0/2", "m0/1"],
                                          [0.5, 0.4, 0.3, 0.2]),
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


def browse(page, profile, *, screenshot=None, fragment="", height=3000):
    """Load ``page`` in headless Chromium: ``(DOM after load, console lines)``; optionally a screenshot."""
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
               f"--window-size=1200,{height}", "--dump-dom", page.as_uri() + fragment]
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
    report.add_store_views(folder / "store.zarr")
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
    assert [row for row, _ in contexts] == ["2", "3"]  # largest first; rows counted from 1
    first_tokens = re.findall(r'class="tok[^"]*"[^>]*>([^<]*)</span>', contexts[0][1])
    assert first_tokens == ["a", "b"]  # context stays within sentence 1
    assert "#1, row 2, sentence 1, word 2" in contexts[0][1] and "#2, row 3, sentence 2, word 1" in contexts[1][1]
    assert 'class="tok peak" title="row 2: +3.0000"' in html and "rgba(220,50,32,1.000)" in html
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


# Run in the page after load (a test copy of the page allows it by its hash): what a user does, recorded in
# <body data-probe>: search every linked neuron, search for nothing, sort a neuron column, click a link.
PROBE = """
window.addEventListener("load", function () {
  var box = document.getElementById("neuron-search"), out = {};
  var list = function (items) { return Array.prototype.slice.call(items); };
  function find(text) {
    box.value = text;
    box.dispatchEvent(new Event("input"));
    return document.getElementById("search-count").textContent;
  }
  var links = list(document.querySelectorAll("section table a.neuron-link"));
  out.links = links.map(function (a) {
    var view = document.getElementById(decodeURIComponent(a.hash.slice(1)));
    var said = find(a.textContent);
    return {label: a.textContent, neuron: view && view.matches("details.neuron") ? view.dataset.neuron : null,
            found: !!view && !view.classList.contains("hidden"), said: said};
  });
  out.nothing = find("no such neuron");
  out.tables = list(document.querySelectorAll("table.sortable")).map(function (t) {
    return [getComputedStyle(t).display, t.nextSibling.hidden ? "" : t.nextSibling.textContent];
  });
  find("");
  var conductance = list(document.querySelectorAll("h2")).filter(function (h) {
    return h.textContent.indexOf("Conductance") === 0; })[0].parentNode.querySelector("table");
  var th = conductance.tHead.rows[0].cells[1];
  th.click();
  th.click();
  out.sorted = [th.getAttribute("aria-sort")].concat(list(conductance.tBodies[0].rows).map(function (r) {
    return r.cells[1].textContent; }));
  var link = document.querySelector("section.ranking table a.neuron-link");
  var view = document.getElementById(link.hash.slice(1));
  window.scrollTo(0, 0);
  link.click();
  out.click = {label: link.textContent, open: view.open, top: view.getBoundingClientRect().top,
               bar: document.getElementById("search").getBoundingClientRect().bottom, height: window.innerHeight,
               scrolled: window.pageYOffset, hash: location.hash, id: view.id};
  document.body.dataset.probe = JSON.stringify(out);
});
"""


@pytest.fixture(scope="module")
def probed(built, tmp_path_factory):
    """The page with :data:`PROBE` added, loaded in Chromium 900 pixels high: ``(probe results, console)``."""
    _, page, _ = built
    digest = "sha256-" + base64.b64encode(hashlib.sha256(PROBE.encode()).digest()).decode()
    text = page.read_text()
    text = re.sub(r"script-src '([^']+)'", rf"script-src '\1' '{digest}'", text, count=1)
    copy = tmp_path_factory.mktemp("probed") / "report.html"
    copy.write_text(text.replace("</body>", f"<script>{PROBE}</script></body>"))
    dom, console = browse(copy, tmp_path_factory.mktemp("profile"), height=900)
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, (console, dom[-2000:])
    return json.loads(html.unescape(found.group(1))), console


def _views(page_text):
    """``{label: view HTML}`` of the page's neuron views."""
    views = re.findall(r'<details class="neuron" id="[^"]+" data-neuron="([^"]+)">(.*?)</details>', page_text,
                       re.DOTALL)
    return {html.unescape(label): body for label, body in views}


def test_every_linked_neuron_has_a_view_with_its_top_tokens(built):
    report, page, _ = built
    text = page.read_text()
    views = _views(text)
    linked = {html.unescape(label) for label in re.findall(r'<a class="neuron-link[^"]*" href="#[^"]+">([^<]+)</a>',
                                                          text)}
    assert linked and linked <= set(views) and set(views) == set(report.shown)
    in_store = {label for label in linked if re.fullmatch(r"m[0-2]/[0-3]", label)}
    assert len(in_store) == 12  # every neuron of the store is in some table here (maxcorr's top 12)
    assert all('class="neuron-view"' in views[label] for label in in_store)  # top tokens, from the store
    assert "Mutual information: rank" in views["m1/2"] and "MaxCorr: rank" in views["m1/2"]
    placeholder = html.unescape(re.search(r'placeholder="e\.g\. ([^"]+)"', text).group(1))
    assert placeholder in views


def test_rows_sentences_and_words_count_from_1(built):
    views = _views(built[1].read_text())
    from_store = "".join(body for label, body in views.items() if label != "m0/3")  # m0/3: neuron_view.json's
    contexts = re.findall(r'<li class="context" data-row="(\d+)"><span class="value">[^<]+</span> '
                          r'<span class="where">#\d+, row (\d+), sentence (\d+), word (\d+)</span>(.*?)</li>',
                          from_store)
    assert len(contexts) == 11 * 8
    for data_row, row, sentence, word, line in contexts:
        row = int(row)  # token k (from 0) is "wk", in sentence k // 10
        peak = re.search(r'class="tok peak" title="row (\d+):[^"]*"[^>]*>([^<]+)<', line).groups()
        assert int(data_row) == row and peak == (str(row), f"w{row - 1}")
        assert (int(sentence), int(word)) == ((row - 1) // 10 + 1, (row - 1) % 10 + 1)


def test_information_cautions_sit_under_the_measures_they_concern(built):
    text = built[1].read_text()
    sections = {html.unescape(title).split(":")[0]: body for title, body in
                re.findall(r'<section id="s\d+" class="ranking"><h2>([^<]+)</h2>(.*?)</section>', text, re.DOTALL)}
    for measure in ("Mutual information", "KL selectivity", "Entropy"):
        caption = re.search(r'<p class="caption">([^<]+)</p>', sections[measure]).group(1)
        assert "1-bit cut" in caption and "Unit: bits" in caption and "divides by the sum" not in caption
        assert '<img class="plot"' in sections[measure]
    caption = re.search(r'<p class="caption">([^<]+)</p>', sections["Class selectivity"]).group(1)
    assert "divides by the sum of class means" in caption and "1-bit cut" not in caption and "Unit" not in caption
    assert '<img class="plot"' not in sections["Class selectivity"]  # no chart of an unbounded index
    assert sections["Class selectivity"].count("<tr>") == 1 + 12  # the table, every neuron


def test_search_finds_every_linked_neuron_and_says_how_many(probed, built):
    results, console = probed
    assert console == [], console
    shown = list(built[0].shown)
    assert len(results["links"]) >= 12 * 4
    for link in results["links"]:
        assert link["neuron"] == link["label"] and link["found"], link
        matches = sum(link["label"].lower() in label.lower() for label in shown)
        assert link["said"] == ("1 neuron matches" if matches == 1 else f"{matches} neurons match"), link
    assert any(link["said"] == "1 neuron matches" for link in results["links"])
    assert results["nothing"].startswith("no neuron on this page matches")
    assert all(display == "none" and said.startswith("No row") for display, said in results["tables"])


def test_neuron_columns_sort_naturally(probed):
    order, *labels = probed[0]["sorted"]
    ordered = [label for label in labels if label.startswith("m0/")]
    assert order == "ascending" and ordered == ["m0/1", "m0/2", "m0/10"]


def test_a_neuron_link_opens_its_view_below_the_search_bar(probed):
    click = probed[0]["click"]
    assert click["open"] and click["hash"] == "#" + click["id"] and click["scrolled"] > 0, click
    assert click["bar"] <= click["top"] <= click["bar"] + 16, click  # right below the sticky bar, not under it
