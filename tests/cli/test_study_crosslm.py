"""study-crosslm end to end at a small size: Bau et al.'s erasure claim, control, ON-LSTM trees, determinism.

The claim tests reuse one run (a module fixture) at a test size smaller than the default (32 units, 2
epochs); the default size satisfies the same claim (see the issue-19 closing note for its numbers).
"""

import json

import jax
import numpy as np
import pytest

from jneuron.cli.main import main

pytestmark = pytest.mark.slow

SMALL = ["--hidden", "32", "--epochs", "2"]
TINY = ["--onlstm", "--hidden", "16", "--embed", "16", "--chunk-size", "4", "--epochs", "1", "--vocab", "500",
        "--window", "20"]


def _run(out, flags) -> dict:
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes float and int32
        assert main(["study-crosslm", "--out", str(out), *flags]) == 0
    return json.loads((out / "crosslm.json").read_text())


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("crosslm")
    return out, _run(out, SMALL)


def test_erasing_top_maxcorr_neurons_hurts_most(small):
    _, data = small
    at = data["fractions"].index(0.2)
    curves = data["erasure"]["maxcorr"]
    top = np.mean([model[at] for model in curves["top"]])
    bottom = np.mean([model[at] for model in curves["bottom"]])
    random = np.mean([[run[at] for run in model] for model in curves["random_runs"]])
    assert len(curves["random_runs"][0]) == 3
    assert top > bottom and top > random, (top, bottom, random)
    assert data["at_20"]["maxcorr"]["top"] == pytest.approx(top)
    assert min(top, bottom, random) > data["intact_mean"]  # erasing 20% of the units always costs something


def test_curves_start_at_the_intact_models(small):
    _, data = small
    intact = [m["heldout_perplexity"] for m in data["models"]]
    assert len(intact) == 3 and all(1 < p < data["corpus"]["vocab"] for p in intact)
    for ranking in ("maxcorr", "mincorr", "linreg", "svcca"):
        for kind in ("top", "bottom", "random"):
            start = [model[0] for model in data["erasure"][ranking][kind]]
            np.testing.assert_allclose(start, intact, rtol=1e-5, err_msg=f"{ranking} {kind} at k=0")
    assert all(1 >= r >= 0 for rho in data["svcca_rho"] for r in rho)


def test_control_reports_prediction_shifts(small):
    _, data = small
    control = data["control"]
    assert [c["group"] for c in control] == ["top"] * 6 + ["bottom"] * 6
    top_units = [r["unit"] for r in data["rankings"]["maxcorr"] if r["model"] == "lm0"][:3]
    assert [c["unit"] for c in control[:6:2]] == top_units
    for c in control:
        assert c["kl"] > 0
        assert all(p["shift"] > 0 for p in c["promoted"]) and all(p["shift"] < 0 for p in c["demoted"])
        assert len(c["highest_after"]) == 5


def test_report_shows_the_section(small, tmp_path):
    out, _ = small
    assert (out / "crosslm.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["report", str(out), "--out", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "Cross-LM erasure: maxcorr" in page and "Controlling single neurons" in page


def test_onlstm_trees_and_determinism(tmp_path):
    first = _run(tmp_path / "a", TINY)
    _run(tmp_path / "b", TINY)
    assert (tmp_path / "a" / "crosslm.json").read_bytes() == (tmp_path / "b" / "crosslm.json").read_bytes()
    syntax = first["syntax"]
    assert syntax["sentences"] > 100 and len(syntax["per_model"]) == 3
    for key, value in syntax["mean"].items():
        assert np.isfinite(value) and (key.startswith("distance") or 0 <= value <= 1), key
    assert syntax["mean"]["right_branching_segment_recall"] < 1
    assert (tmp_path / "a" / "crosslm-trees.png").is_file() and syntax["example"]["tree"].startswith("(")


@pytest.mark.parametrize("flags, message", [(["--models", "2"], "--models must be at least 3"),
                                            (["--onlstm", "--hidden", "10"], "multiple of --chunk-size")])
def test_bad_sizes(tmp_path, capsys, flags, message):
    assert main(["study-crosslm", "--out", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err
