"""The `jneuron probe` subcommand: end to end on files, and bad input as one line with exit code 2."""

import json

import numpy as np

from jneuron.cli.main import main


def planted_files(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    x = rng.normal(size=(600, 12)).astype(np.float32)
    x[np.arange(600), np.array([2, 5, 9])[y]] += 2.5
    np.save(tmp_path / "acts.npy", x)
    tags = np.array(["DT", "NN", "VB"])[y]
    lines = [tags[i:i + 10] for i in range(0, 600, 10)]  # 60 sentences of 10 tokens
    (tmp_path / "labels.txt").write_text("".join(" ".join(line) + "\n" for line in lines))
    (tmp_path / "tokens.txt").write_text("".join(" ".join(f"w{j}" for j in range(10)) + "\n" for _ in lines))
    np.save(tmp_path / "labels.npy", y)
    return x, y


def test_probe_command_writes_json(tmp_path, capsys):
    planted_files(tmp_path)
    code = main(["probe", str(tmp_path / "acts.npy"), str(tmp_path / "labels.txt"), "--tokens",
                 str(tmp_path / "tokens.txt"), "--l1", "0", "1e-3", "--l2", "1e-3", "--epochs", "8", "--lr", "1e-2",
                 "--out", str(tmp_path / "out"), "--top", "3"])
    assert code == 0
    result = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert result["classes"] == ["DT", "NN", "VB"]
    # statistical: 2.5 sd planted shifts make a linear probe ~0.95 accurate on held-out rows
    assert result["grid"]["best"]["accuracy"] > 0.85 and len(result["grid"]["accuracy"]) == 2
    assert {n["index"] for n in result["ordering"]["neurons"][:3]} == {2, 5, 9}
    assert "held-out accuracy" in capsys.readouterr().out


def test_probe_command_npy_labels_and_errors(tmp_path, capsys):
    planted_files(tmp_path)
    out = str(tmp_path / "out2")
    assert main(["probe", str(tmp_path / "acts.npy"), str(tmp_path / "labels.npy"), "--epochs", "8", "--lr", "1e-2",
                 "--out", out]) == 0
    assert json.loads((tmp_path / "out2" / "probe.json").read_text())["classes"] == [0, 1, 2]
    np.save(tmp_path / "short.npy", np.zeros((599, 12), np.float32))
    code = main(["probe", str(tmp_path / "short.npy"), str(tmp_path / "labels.txt"), "--out", out])
    err = capsys.readouterr().err
    assert code == 2 and "line 60, token 10" in err and err.count("\n") == 1
    assert main(["probe", str(tmp_path / "missing.npy"), str(tmp_path / "labels.npy"), "--out", out]) == 2


def test_layers_as_models_trains_one_probe_per_layer(tmp_path, capsys):
    x, y = planted_files(tmp_path)
    np.savez(tmp_path / "m.npz", **{"m/l0": x[:, :6], "m/l1": x[:, 6:]})  # planted neurons 2, 5 | 9 (l1's 3)
    assert main(["probe", str(tmp_path / "m.npz"), "--labels", str(tmp_path / "labels.npy"), "--layers-as-models",
                 "--epochs", "8", "--lr", "1e-2", "--out", str(tmp_path / "out")]) == 0
    files = sorted(p.name for p in (tmp_path / "out").glob("prob*.json"))
    assert files == ["probe_m_l0.json", "probe_m_l1.json", "probeless_m_l0.json", "probeless_m_l1.json"]
    for layer, planted in (("l0", {"m/l0/2", "m/l0/5"}), ("l1", {"m/l1/3"})):
        result = json.loads((tmp_path / "out" / f"probe_m_{layer}.json").read_text())
        labels = [n["label"] for n in result["ordering"]["neurons"]]
        assert len(labels) == 6 and set(labels[:len(planted)]) == planted, labels
    assert main(["report", str(tmp_path / "out"), "--out", str(tmp_path / "page")]) == 0
    page = (tmp_path / "page" / "report.html").read_text()
    assert "Probe neuron ordering (probe_m_l0)" in page and "Probe neuron ordering (probe_m_l1)" in page
