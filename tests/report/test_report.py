"""Reports: every section kind renders, the page is self-contained, and it loads in headless Chromium."""

import re
import shutil
import subprocess

import numpy as np
import pytest

import jneuron as jn
from jneuron.errors import JNeuronError
from jneuron.report import Report, neuron_view_html, register


@pytest.fixture(scope="module")
def report():
    rng = np.random.default_rng(8)
    models = {f"m{i}": rng.normal(size=(200, 4)) for i in range(3)}
    report = Report("test report", "synthetic results")
    report.add_ranking(jn.maxcorr(models), top=8)
    report.add_result({"matrix": [[1.0, 0.3], [0.3, 1.0]], "rows": ["l0", "l1"], "columns": ["l0", "l1"],
                       "title": "layer similarity"})
    report.add_result({"curves": {"zero": {"x": [0, 0.5, 1], "y": [0.9, 0.6, 0.1]},
                                  "mean": {"x": [0, 0.5, 1], "y": [0.9, 0.8, 0.5]}},
                       "title": "ablation curves", "xlabel": "fraction ablated", "ylabel": "accuracy"})
    report.add_result({"class_counts": {"NN": {"m0": 5, "m1": 3}, "VB": {"m0": 2, "m1": 4}},
                       "title": "neurons per class"})
    sentences = [["the", "cat", "sat", "on", "the", "mat"], ["a", "dog", "barked", "loudly"]]
    tokens = [w for s in sentences for w in s]
    values = np.array([0.1, 2.5, 0.3, -0.2, 0.1, 1.9, 0.0, 2.2, 0.4, -1.0])
    report.add_result({"neuron_view": {"neuron": "m0/3", "tokens": tokens, "values": values.tolist(),
                                       "sentence": [0] * 6 + [1] * 4, "top": 3, "window": 2}})
    return report


def test_neuron_view_shows_top_tokens_in_their_sentence():
    html = neuron_view_html("n", ["a", "b", "c", "d"], [0.0, 3.0, 1.0, -2.0], sentence=[0, 0, 1, 1], top=2, window=3)
    contexts = re.findall(r'<li class="context" data-row="(\d+)">(.*?)</li>', html)
    assert [row for row, _ in contexts] == ["1", "2"]  # largest first
    first_tokens = re.findall(r'class="tok[^"]*"[^>]*>([^<]*)</span>', contexts[0][1])
    assert first_tokens == ["a", "b"]  # context stays within sentence 0
    assert 'class="tok peak" title="row 1: +3.0000"' in html and "rgba(220,50,32,1.000)" in html
    assert "rgba(30,90,200,0.667)" in html  # the negative neighbour -2.0, at 2/3 of the largest |value|


def test_report_writes_page_and_plots(tmp_path, report):
    page = report.write(tmp_path / "report")
    html = page.read_text()
    images = re.findall(r'<img class="plot" src="([^"]+)"', html)
    assert len(images) == 4 and all(not src.startswith(("/", "http")) for src in images)
    for src in images:
        assert (tmp_path / "report" / src).read_bytes()[:4] == b"\x89PNG"
    assert "http" not in html  # nothing fetched from the network
    report.write(tmp_path / "report")  # rewriting replaces the folder atomically
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_unknown_result_shape_is_an_error_and_new_shapes_plug_in(tmp_path):
    report = Report()
    with pytest.raises(JNeuronError, match="no report section knows this shape"):
        report.add_result({"weird": 1}, "x")
    register(lambda d: "weird" in d, lambda r, d, n: r.add_html(n, f"<p class='weird'>{d['weird']}</p>"))
    report.add_result({"weird": 7}, "custom")
    assert "<p class='weird'>7</p>" in report.write(tmp_path / "r").read_text()


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("headless Chromium is needed for the report test: apt-get install -y chromium (.ci/run does this)")


def test_report_renders_in_headless_chromium(tmp_path, report):
    page = report.write(tmp_path / "report")
    profile = tmp_path / "profile"
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    status = re.search(r'id="status" data-images-total="(\d+)" data-images-loaded="(\d+)"', dom)
    assert status, "the page's load script did not run"
    assert status.group(1) == status.group(2) == "4"  # every plot decoded
    peaks = re.findall(r'class="tok peak"[^>]*>([^<]+)</span>', dom)
    assert peaks == ["cat", "dog", "mat"]
    assert "the cat sat on" in " ".join(re.findall(r'class="tok[^"]*"[^>]*>([^<]+)</span>', dom))
