import json
import re
import subprocess
import sys

import numpy as np
import pytest

import jneuron as jn
from jneuron.cli.main import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "maxcorr" in out


def test_console_script_runs():
    for module in ("jneuron", "jneuron.cli.main"):  # python -m jneuron, as the jneuron script
        result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: jneuron" in result.stdout, module


def test_maxcorr_command_writes_ranking(tmp_path, rng, capsys):
    shared = rng.normal(size=(200, 1))
    np.save(tmp_path / "a.npy", np.hstack([shared, rng.normal(size=(200, 2))]).astype(np.float32))
    np.save(tmp_path / "b.npy", np.hstack([rng.normal(size=(200, 1)), 3 * shared]).astype(np.float32))
    code = main(["maxcorr", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--out", str(tmp_path / "out")])
    assert code == 0
    data = json.loads((tmp_path / "out" / "maxcorr.json").read_text())
    assert {data["neurons"][0]["label"], data["neurons"][1]["label"]} == {"a/0", "b/1"}
    assert "a/0" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [(None, "no such file"), (b"not numpy", "not a readable .npy")])
def test_maxcorr_command_bad_file_is_one_line_and_exit_2(tmp_path, rng, capsys, content, message):
    good = tmp_path / "good.npy"
    np.save(good, rng.normal(size=(10, 2)))
    bad = tmp_path / "bad.npy"
    if content is not None:
        bad.write_bytes(content)
    assert main(["maxcorr", str(good), str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_demo_runs_end_to_end(demo_run):
    code, out, folder = demo_run  # the demo's default 3 models, one epoch each
    assert code == 0
    assert "maxcorr: top 3" in out and "mincorr: top 3" in out
    maxcorr = json.loads((folder / "maxcorr.json").read_text())
    assert maxcorr["models"] == ["mlp0", "mlp1", "mlp2"] and len(maxcorr["neurons"]) == 3 * (64 + 32)
    assert all(len(n["partners"]) == 2 for n in maxcorr["neurons"])



def test_demo_report_in_chromium_and_jneuron_report_on_its_folder(demo_run, tmp_path, capsys):
    """The demo's page loads without console errors, every image decodes, every section is there and the
    screenshot is a drawn page; `jneuron report` on the demo's folder gives the same sections."""
    from tests.report.test_report import browse, titles

    code, _, folder = demo_run
    assert code == 0
    demo_titles = titles((folder / "report.html").read_text())
    for expected in ("MaxCorr: top 20 of 288", "MinCorr: top 20 of 288", "Mean best |correlation| between models",
                     "Top inputs of mlp", "SVCCA between layers", "Linear CKA between layers",
                     "Probe ordering: top 20 of 96", "Neurons per digit", "Probe accuracy keeping",
                     "Mutual information: top 20 of 96", "Class selectivity", "Cumulative ablation",
                     "Ablating mlp0's neurons by MaxCorr", "Conductance of mlp0/layers/0"):
        assert any(t.startswith(expected) for t in demo_titles), (expected, demo_titles)
    assert main(["report", str(folder), "--out", str(tmp_path / "again")]) == 0
    assert titles((tmp_path / "again" / "report.html").read_text()) == demo_titles
    capsys.readouterr()

    screenshot = tmp_path / "demo.png"
    dom, console = browse(folder / "report.html", tmp_path / "profile", screenshot=screenshot)
    assert console == [], console
    status = re.search(r'id="status"[^>]*', dom).group(0)
    total = int(re.search(r'data-images-total="(\d+)"', status).group(1))
    assert total >= len(demo_titles) and f'data-images-loaded="{total}"' in status and 'data-errors="0"' in status
    assert re.search(r'data-sections="(\d+)"', status).group(1) == str(len(demo_titles) + 1)  # + Neurons
    from matplotlib.image import imread

    pixels = imread(screenshot)
    assert pixels.shape[:2] == (3000, 1200) and pixels[..., :3].std() > 0.05  # a drawn page, not a blank one


def test_demo_writes_store_results_and_report(demo_run):
    # run under the suite's strict dtype promotion (tests/conftest.py): what passes there runs as well
    # under the standard promotion users have
    code, out, folder = demo_run
    assert code == 0 and f"report: {(folder / 'report.html').resolve()}" in out
    store = jn.open_activations(folder / "activations.zarr")
    assert store.layers == {f"mlp{i}": (("layers/0", 64), ("layers/1", 32)) for i in range(3)}
    assert store.tokens == 1797 and store.text().labels[:3] == ("0", "1", "2")
    page = (folder / "report.html").read_text()
    for title in ("MaxCorr: top 20 of 288 neurons", "MinCorr: top 20 of 288 neurons",
                  "Mean best |correlation| between models", "Top inputs of mlp"):
        assert title in page
    assert page.count('class="tokimg"') >= 12
    assert json.loads((folder / "maxcorr.json").read_text())["method"] == "maxcorr"
