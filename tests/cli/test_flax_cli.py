"""The ``jneuron ablate`` subcommand on the demo models."""

import json

import jax

from jneuron.cli.main import main


def test_ablate_command_writes_curves(tmp_path, capsys):
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes float and int32 in its bias correction
        code = main(["ablate", "--out", str(tmp_path), "--models", "2", "--epochs", "2", "--step", "32",
                     "--mode", "mean"])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["top_first"]["ks"] == [0, 32, 64, 96] and summary["top_first"]["mode"] == "mean"
    assert summary["top_first"]["values"][0] == summary["bottom_first"]["values"][0] == summary["top_first"]["baseline"]
    assert (tmp_path / "top_first.png").read_bytes()[:4] == b"\x89PNG"
    assert "intact test accuracy" in capsys.readouterr().out
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 0  # the report reads what ablate wrote
    page = (tmp_path / "r" / "report.html").read_text()
    assert "<h2>Ablation curves</h2>" in page and page.count('src="data:image/png') == 1  # curves drawn once


def test_ablate_command_rejects_one_model(tmp_path, capsys):
    assert main(["ablate", "--out", str(tmp_path), "--models", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err
