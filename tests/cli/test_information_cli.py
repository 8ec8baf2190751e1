"""The information and study-information subcommands, end to end on small inputs."""

import json

import jax
import numpy as np
import pytest

from jneuron.cli.main import main


def test_information_command(tmp_path, rng, capsys):
    labels = rng.integers(0, 3, 300)
    np.save(tmp_path / "layer0.npy", np.stack([labels == 1, rng.random(300) > 0.5], axis=1).astype(np.float32))
    np.save(tmp_path / "layer1.npy", rng.random((300, 2)).astype(np.float32))
    np.save(tmp_path / "labels.npy", labels)
    out = tmp_path / "out"
    code = main(["information", str(tmp_path / "layer0.npy"), str(tmp_path / "layer1.npy"),
                 "--labels", str(tmp_path / "labels.npy"), "--top", "2", "--out", str(out)])
    assert code == 0
    data = json.loads((out / "information.json").read_text())
    assert [n["label"] for n in data["neurons"]] == ["layer0/0", "layer0/1", "layer1/0", "layer1/1"]
    ranking = json.loads((out / "ranking_mutual_information.json").read_text())
    assert ranking["neurons"][0]["label"] == "layer0/0"
    assert "mutual_information: top 2" in capsys.readouterr().out
    assert main(["information", str(tmp_path / "layer0.npy"), "--labels", str(tmp_path / "missing.npy")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_study_information_command(tmp_path, capsys):
    out = tmp_path / "study"
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes float and int32
        code = main(["study-information", "--hidden", "8", "6", "--epochs", "2", "--random", "2", "--steps", "4",
                     "--out", str(out)])
    assert code == 0
    for name in ("information.json", "curves.json", "summary.json", "summary.md", "network_zero.png",
                 "layer_mean.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["summary"]["zero"]
    assert {r["scope"] for r in rows} == {"network", "layers/0", "layers/1"}
    network = [r for r in rows if r["scope"] == "network"]
    assert [r["gap"] for r in network] == sorted((r["gap"] for r in network), reverse=True)
    text = (out / "summary.md").read_text()
    best = network[0]
    assert f"**{best['measure']}** predicts best (gap {best['gap']:.3f})" in text
    assert "bias balancing" in text and "| network |" in text
    assert main(["report", str(out), "--out", str(tmp_path / "r")]) == 0  # the report reads the study's files
    page = (tmp_path / "r" / "report.html").read_text()
    for title in ("Mutual information: top 14 of 14", "Cumulative ablation over the whole network",
                  "Information study: which measure predicts the accuracy drop"):
        assert title in page
