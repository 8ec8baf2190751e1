"""The command line on small stores and files: outputs, progress, and one-line errors with exit codes."""

import argparse
import io
import json

import numpy as np
import pytest

import jneuron as jn
from jneuron.cli import options as _common
from jneuron.cli.main import main
from jneuron.cli.progress import Progress
from tests.tolerance import assert_close, tolerance


@pytest.fixture
def files(tmp_path, rng):
    shared = rng.normal(size=(600, 1))
    for i in range(3):
        x = np.hstack([rng.normal(size=(600, 5)), shared * (i + 1)]).astype(np.float32)
        np.save(tmp_path / f"m{i}.npy", x)
    return tmp_path


def run_cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_info:  # a usage mistake argparse finds
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def test_convert_then_maxcorr_and_mincorr(files, capsys):
    code, out, _ = run_cli(capsys, "convert", *(files / f"m{i}.npy" for i in range(3)), "--out", files / "s.zarr",
                           "--chunk-tokens", 128, "--tokenization", "rows")
    assert code == 0 and "600 tokens of m0, m1, m2" in out
    assert jn.open_activations(files / "s.zarr").names == ("m0", "m1", "m2")
    code, out, _ = run_cli(capsys, "maxcorr", files / "s.zarr", "--out", files / "res", "--top", 3,
                           "--chunk-tokens", 128)
    assert code == 0 and out.splitlines()[0].split()[1] in ("m0/5", "m1/5", "m2/5")
    data = json.loads((files / "res" / "maxcorr.json").read_text())
    assert data["method"] == "maxcorr"  # the top neuron's partner is an exact multiple of it: |rho| = 1
    assert_close(data["neurons"][0]["score"], 1.0, tolerance(600), what="top score")
    csv = (files / "res" / "maxcorr.csv").read_text().splitlines()
    assert csv[0] == "rank,neuron,model,layer,unit,score,partners" and len(csv) == 1 + 18
    assert (files / "res" / "maxcorr.png").read_bytes()[:4] == b"\x89PNG"
    code, out, _ = run_cli(capsys, "mincorr", f"{files}/s.zarr#m0,m2", "--out", files / "res", "--no-plot",
                           "--chunk-tokens", 128)
    assert code == 0
    assert json.loads((files / "res" / "mincorr.json").read_text())["models"] == ["m0", "m2"]
    assert not (files / "res" / "mincorr.png").exists()


def test_maxcorr_on_npy_files_with_progress_and_checkpoint(files, capsys):
    inputs = [files / f"m{i}.npy" for i in range(3)]
    code, _, err = run_cli(capsys, "maxcorr", *inputs, "--out", files / "res", "--progress", "always",
                           "--chunk-tokens", 128, "--checkpoint", files / "ck", "--devices", "cpu:0")
    assert code == 0
    assert "600/600 tokens (100%)" in err and "tokens/s" in err
    assert not (files / "ck").exists()  # removed once the results are written


@pytest.mark.parametrize("argv,message", [
    (["maxcorr", "{d}/nothere.npy", "{d}/m1.npy"], "no such file or store: {d}/nothere.npy"),
    (["maxcorr", "{d}/s.zarr#m0/layers/9", "{d}/m1.npy"], "no model or layer 'm0/layers/9'"),
    (["maxcorr", "{d}/m0.npy", "{d}/short.npy"], "mismatched token counts between inputs"),
    (["maxcorr", "{d}/broken.npy", "{d}/m1.npy"], "broken.npy: not a readable .npy file"),
    (["maxcorr", "{d}/m0.npy"], "maxcorr compares at least 2 models, but the inputs hold 1 (m0)"),
    (["maxcorr", "{d}/m0.npy", "{d}/m1.npy", "--devices", "tpu"], "no 'tpu' devices"),
    (["maxcorr", "{d}/m0.npy", "{d}/m1.npy", "--devices", "cpu,gpu"], "give a device count (e.g. 8) or one device"),
    (["maxcorr", "{d}/m0.npy", "{d}/m1.npy", "--devices", "64"], "devices=64: this process sees"),
    (["convert", "{d}/m0.npy", "--out", "{d}/x.txt"], "give a .zarr store folder or a .npz file"),
    (["report", "{d}/nothere.json"], "no such file or folder"),
])
def test_user_mistakes_are_one_line_with_exit_code_2(files, capsys, argv, message):
    np.save(files / "short.npy", np.zeros((10, 2), np.float32))
    (files / "broken.npy").write_bytes((files / "m0.npy").read_bytes()[:100])
    jn.write_store(jn.open_activations(files / "m0.npy"), files / "s.zarr")
    code, out, err = run_cli(capsys, *(a.format(d=files) for a in argv), "--out", files / "res") if "--out" not in argv \
        else run_cli(capsys, *(a.format(d=files) for a in argv))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert message.format(d=files) in err
    assert not (files / "res").exists()  # nothing half-written


def test_corrupt_store_mid_run_leaves_no_output(files, capsys, rng):
    with jn.StoreWriter(files / "s.zarr", chunk_tokens=64) as w:
        w.append("a", "l", rng.normal(size=(256, 3)).astype(np.float32))
        w.append("b", "l", rng.normal(size=(256, 3)).astype(np.float32))
    (files / "s.zarr" / "b.l" / "c" / "3" / "0").write_bytes(b"\x00" * 5)
    code, _, err = run_cli(capsys, "maxcorr", files / "s.zarr", "--out", files / "res", "--chunk-tokens", 64)
    assert code == 2 and "cannot read tokens 192:256 of 'b/l'" in err
    assert not (files / "res").exists()
    code, _, err = run_cli(capsys, "convert", files / "s.zarr", "--out", files / "copy.zarr", "--chunk-tokens", 64)
    assert code == 2 and not (files / "copy.zarr").exists()
    assert [p.name for p in files.iterdir() if p.name.startswith(".")] == []


def test_convert_neurox_with_tokens_to_store_and_npz(tmp_path, capsys, rng):
    from tests.data.test_formats import neurox_matrix, neurox_sentences, write_neurox_hdf5

    words, acts = neurox_sentences(rng)
    write_neurox_hdf5(tmp_path / "acts.hdf5", words, acts)
    (tmp_path / "tok.txt").write_text("\n".join(" ".join(w) for w in words))
    code, _, _ = run_cli(capsys, "convert", tmp_path / "acts.hdf5", "--tokens", tmp_path / "tok.txt",
                         "--out", tmp_path / "acts.zarr")
    assert code == 0
    store = jn.open_activations(tmp_path / "acts.zarr")
    np.testing.assert_array_equal(store.read(0, store.tokens), neurox_matrix(acts))
    assert store.text().tokens == tuple(w for s in words for w in s)
    code, _, _ = run_cli(capsys, "convert", f"{tmp_path}/acts.hdf5#2", "--out", tmp_path / "layer2.npz")
    assert code == 0
    with np.load(tmp_path / "layer2.npz") as saved:
        np.testing.assert_array_equal(saved["acts/2"], neurox_matrix(acts)[:, 8:12])


def test_report_command_gathers_results(files, capsys):
    run_cli(capsys, "maxcorr", files / "m0.npy", files / "m1.npy", "--out", files / "res", "--no-plot")
    (files / "res" / "sim.json").write_text(json.dumps({"matrix": [[1, 0.5], [0.5, 1]], "rows": ["a", "b"],
                                                        "columns": ["a", "b"], "title": "similarity"}))
    (files / "res" / "other.json").write_text(json.dumps({"something": 1}))
    code, out, _ = run_cli(capsys, "report", files / "res", "--out", files / "res")
    assert code == 0 and "skipped" in out and "other.json" in out
    page = (files / "res" / "report.html").read_text()
    assert "similarity" in page and "MaxCorr: top 12 of 12 neurons" in page
    assert page.count('src="data:image/png;base64,') == 2 and not (files / "res" / "report").exists()


def test_loaders_keep_their_signatures(files):
    models = _common.load_models([files / "m0.npy", files / "m1.npy"])
    assert list(models) == ["m0", "m1"] and isinstance(models["m0"], np.memmap)
    assert _common.load_activations(files / "m2.npy").shape == (600, 6)
    with jn.StoreWriter(files / "s.zarr") as w:
        w.append("x", "l0", np.ones((4, 2)))
        w.append("x", "l1", np.zeros((4, 1)))
        w.append("y", "l0", np.ones((4, 3)))
    assert _common.load_activations(f"{files}/s.zarr#x").tolist()[0] == [1.0, 1.0, 0.0]
    assert _common.load_activations(f"{files}/s.zarr#y", dtype=np.float64).dtype == np.float64
    with pytest.raises(jn.JNeuronError, match="pick one with"):
        _common.load_activations(files / "s.zarr")
    assert {k: v.shape for k, v in _common.load_models([files / "s.zarr"]).items()} == {"x": (4, 3), "y": (4, 3)}


def test_streaming_arguments_parse():
    parser = argparse.ArgumentParser()
    _common.add_streaming_arguments(parser)
    args = parser.parse_args(["--dtype", "float32", "--chunk-tokens", "256", "--devices", "cpu"])
    assert (args.dtype, args.chunk_tokens, args.devices, args.progress) == ("float32", 256, "cpu", "auto")
    assert _common.select_device("cpu:0").platform == "cpu"
    with pytest.raises(SystemExit):
        parser.parse_args(["--chunk-tokens", "0"])


def test_progress_line_reports_rate_and_time_left():
    stream = io.StringIO()
    bar = Progress(1000, stream=stream, enabled=True, interval=0.0)
    bar(250)
    line = stream.getvalue().splitlines()[-1]
    assert line.startswith("250/1,000 tokens (25%)") and "tokens/s" in line and "left" in line
    quiet = io.StringIO()
    Progress(10, stream=quiet)(5)  # not a terminal and not asked for: silent
    assert quiet.getvalue() == ""
