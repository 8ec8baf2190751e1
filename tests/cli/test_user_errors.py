"""Every user mistake issue 18 names is one line on stderr and exit code 2, rows and lines counted from 1; the
inputs every command takes (NeuroX text, .npy integers or strings, one label per line, layers as models,
selectors before validation); and a help text that is quick, plain and complete."""

import argparse
import os
import re
import subprocess
import sys

import h5py  # noqa: F401  (the NeuroX writer below needs it)
import numpy as np
import pytest

from jneuron.cli.main import build_parser, main, plain_text


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 120)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    x[:, 1] += y
    np.save(tmp_path / "acts.npy", x)
    np.save(tmp_path / "b.npy", rng.normal(size=(120, 4)).astype(np.float32))
    np.save(tmp_path / "labels.npy", y)
    np.save(tmp_path / "strings.npy", np.array(["DT", "NN", "VB"])[y])
    (tmp_path / "lines.txt").write_text("".join(f"{t}\n" for t in np.array(["DT", "NN", "VB"])[y]))
    return tmp_path


def fails(capsys, *argv, message):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_info:  # a usage mistake argparse finds
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    return err


def succeeds(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_labels_one_short_name_the_row_without_a_label(data, capsys):
    np.save(data / "short.npy", np.load(data / "labels.npy")[:-1])
    for command in ("probe", "information"):
        fails(capsys, command, data / "acts.npy", "--labels", data / "short.npy", "--out", data / "o",
              message=r"119 labels for 120 activation rows; row 120 \(counted from 1\) has no label")
    assert not (data / "o").exists()


def test_empty_and_unreadable_label_files(data, capsys):
    (data / "empty.npy").write_bytes(b"")
    fails(capsys, "information", data / "acts.npy", "--labels", data / "empty.npy", message="the file is empty")
    np.save(data / "objects.npy", np.array([{"a": 1}] * 120, dtype=object), allow_pickle=True)
    err = fails(capsys, "information", data / "acts.npy", "--labels", data / "objects.npy",
                message="holds Python objects")
    assert "allow_pickle" not in err
    np.save(data / "floats.npy", np.r_[np.zeros(7), 0.5, np.zeros(112)])
    fails(capsys, "probe", data / "acts.npy", "--labels", data / "floats.npy", message=r"row 8 \(counted from 1\)")


def test_a_folder_given_as_labels_says_so(data, capsys):
    fails(capsys, "probe", data / "acts.npy", "--labels", data, message="is a folder, not a label file")
    fails(capsys, "information", data / "acts.npy", "--labels", data / "nothere.txt", message="no such file")


def test_a_nan_is_reported_at_its_own_row(data, capsys):
    x = np.load(data / "acts.npy")
    x[86, 3] = np.nan  # row 87 counted from 1, whatever the held-out split or shuffling
    np.save(data / "nan.npy", x)
    for command in ("probe", "information"):
        fails(capsys, command, data / "nan.npy", "--labels", data / "labels.npy",
              message=r"non-finite value \(NaN or Inf\) at row 87, neuron nan/3 \(rows counted from 1\)")


def test_convert_counts_lines_from_1(data, capsys):
    from tests.data.test_formats import write_neurox_hdf5

    words = [["a", "b"], ["c", "d", "e"], ["f"]]
    write_neurox_hdf5(data / "x.hdf5", words, [np.zeros((2, len(w), 3), np.float32) for w in words])
    (data / "tok.txt").write_text("a b\nc d\nf\n")
    fails(capsys, "convert", data / "x.hdf5", "--tokens", data / "tok.txt", "--out", data / "x.zarr",
          message=r"tok.txt: line 2 \(sentence 2\) has 2 tokens but the activations have 3 rows")


def test_out_is_checked_before_any_work(data, capsys, monkeypatch):
    (data / "file").write_text("")
    import jneuron.crossmodel.maxcorr as module

    def never(*args, **kwargs):
        raise AssertionError("the analysis ran before --out was checked")

    monkeypatch.setattr(module, "maxcorr", never)
    fails(capsys, "maxcorr", data / "acts.npy", data / "b.npy", "--out", data / "file" / "res",
          message=r"--out .*file is a file, not a folder")
    if os.geteuid() != 0:  # root writes anywhere
        (data / "locked").mkdir(mode=0o555)
        fails(capsys, "maxcorr", data / "acts.npy", data / "b.npy", "--out", data / "locked" / "res",
              message="cannot write there")
    monkeypatch.undo()


def test_one_model_with_layers_names_layers_as_models(data, capsys):
    np.savez(data / "m.npz", **{"m/l0": np.load(data / "acts.npy"), "m/l1": np.load(data / "b.npy")})
    fails(capsys, "maxcorr", data / "m.npz", message=r"hold 1 \(m\); add --layers-as-models")
    out = succeeds(capsys, "maxcorr", data / "m.npz", "--layers-as-models", "--no-plot", "--out", data / "o")
    assert "m/l0/" in out or "m/l1/" in out


def test_selectors_apply_before_validation(data, capsys):
    np.savez(data / "p.npz", layer0=np.load(data / "acts.npy"), layer1=np.load(data / "b.npy"),
             position=np.arange(120))  # a 1-D array the selector leaves out
    succeeds(capsys, "maxcorr", f"{data}/p.npz#layer0,layer1", "--no-plot", "--out", data / "o")
    fails(capsys, "maxcorr", f"{data}/p.npz#layer0,nope", message=r"no model or layer 'nope' \(available: layer0, layer1, position\)")


def test_labels_in_every_format_give_the_same_result(data, capsys):
    results = []
    for labels in ("labels.npy", "strings.npy", "lines.txt"):
        out = data / labels.replace(".", "_")
        succeeds(capsys, "information", data / "acts.npy", data / "b.npy", "--labels", data / labels,
                 "--threshold", "0", "--out", out)
        results.append((out / "information.json").read_text())
    import json

    mi = [[n["mutual_information"] for n in json.loads(r)["neurons"]] for r in results]
    assert mi[0] == mi[1] == mi[2]


def test_options_that_cannot_apply_are_refused_not_ignored(data, capsys, monkeypatch):
    fails(capsys, "maxcorr", data / "acts.npy", data / "b.npy", "--tokens", data / "lines.txt",
          message="--tokens .* uses a token file only to read NeuroX .hdf5/.json inputs, and none is given")
    fails(capsys, "information", data / "acts.npy", "--tokens", data / "lines.txt",
          message=r"--tokens .* goes with NeuroX .hdf5/.json inputs or a NeuroX label file \(--labels\), and neither")
    err = fails(capsys, "convert", data / "acts.npy", "--tokens", data / "lines.txt", "--labels", data / "lines.txt",
                "--out", data / "x.zarr", message="--tokens .* uses a token file only to read NeuroX")
    assert "neither" not in err
    fails(capsys, "similarity", data / "acts.npy", data / "b.npy", "--labels", data / "lines.txt",
          message="--labels .* uses labels only to read NeuroX")
    import jneuron.probing.probe as module

    def never(*args, **kwargs):
        raise AssertionError("probe trained although it was given an option it cannot honour")

    monkeypatch.setattr(module, "train_probes", never)
    for option, message in ((["--checkpoint", data / "ck"], "--checkpoint is not supported: probe training holds "
                                                            "its data in memory"),
                            (["--chunk-tokens", "8"], "--chunk-tokens is not supported: probe training holds"),
                            (["--progress", "always"], "--progress always is not supported: probe training reports")):
        fails(capsys, "probe", data / "acts.npy", "--labels", data / "labels.npy", *option, "--out", data / "p",
              message=message)
    fails(capsys, "convert", data / "acts.npy", "--out", data / "x.zarr", "--devices", "2",
          message="--devices is not supported: convert copies activations")
    fails(capsys, "convert", data / "acts.npy", "--out", data / "x.zarr", "--checkpoint", data / "ck",
          message="--checkpoint is not supported: convert writes its output aside")
    assert not (data / "p").exists() and not (data / "x.zarr").exists() and not (data / "ck").exists()


def test_every_command_on_activations_takes_the_shared_options():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    shared = ["--dtype", "float32", "--chunk-tokens", "8", "--devices", "cpu", "--checkpoint", "ck", "--out", "o"]
    inputs = {"extract": ["model", "text.txt"], "probe": ["a.npy"]}
    for name in ("maxcorr", "mincorr", "linreg", "similarity", "match", "probe", "information", "convert", "extract"):
        args = commands[name].parse_args([*inputs.get(name, ["a.npy", "b.npy"]), *shared])
        assert (args.dtype, args.chunk_tokens, args.devices, str(args.checkpoint)) == ("float32", 8, "cpu", "ck"), name
        assert commands[name].parse_args([*inputs.get(name, ["a.npy"]), "--out", "o"]).progress == "auto", name


def test_extract_checks_out_before_loading_the_model(data, capsys, monkeypatch):
    from jneuron.models import bert

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(bert, "load", never)
    (data / "text.txt").write_text("a b c\n")
    fails(capsys, "extract", data, data / "text.txt", "--out", "/proc/jneuron-test.zarr",
          message=r"^jneuron extract: error: --out /proc/jneuron-test.zarr: cannot write there")
    fails(capsys, "convert", data / "acts.npy", "--out", "/proc/jneuron-test.zarr", message="cannot write there")


def test_progress_counts_each_pass_over_the_tokens(data, capsys, monkeypatch):
    from jneuron import config
    from jneuron.crossmodel.maxcorr import passes_needed

    monkeypatch.setattr(config, "MEMORY_BUDGET", 4 * 4 * 8)  # a few entries per pass: several passes
    passes = passes_needed((5, 4))
    assert passes > 1
    main(["mincorr", str(data / "acts.npy"), str(data / "b.npy"), "--progress", "always", "--chunk-tokens", "60",
          "--no-plot", "--out", str(data / "o")])
    lines = [line for line in capsys.readouterr().err.splitlines() if "tokens/s" in line]
    assert lines[-1].startswith(f"pass {passes}/{passes}, 120/120 tokens (100% of {passes} passes)"), lines
    counts = [int(n) for line in lines for n in re.findall(r"(\d+)/120 tokens", line)]
    assert len(counts) == len(lines) and max(counts) == 120 and any("pass 2/" in line for line in lines), lines


def test_similarity_writes_one_file_per_metric(data, capsys):
    succeeds(capsys, "similarity", data / "acts.npy", data / "b.npy", "--metric", "cka", "svcca", "--out", data / "s")
    assert {p.name for p in (data / "s").iterdir()} >= {"similarity_cka.json", "similarity_svcca.json",
                                                         "similarity_cka.png", "similarity_svcca.png"}


def test_help_is_plain_and_complete():
    # its speed (no JAX import) is test_help_import_does_not_load_jax's; a timing would measure the machine's load
    result = subprocess.run([sys.executable, "-m", "jneuron.cli.main", "probe", "--help"], capture_output=True,
                            text=True, check=False, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        text = sub.format_help()
        assert "``" not in text and ":func:" not in text and ":mod:" not in text, name
        for action in sub._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings}"
            flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            assert flag or action.required or "default" in sub._get_formatter()._get_help_string(action), \
                f"{name} {action.option_strings}: no default shown"


def test_help_import_does_not_load_jax():
    code = "import sys; from jneuron.cli.main import build_parser; build_parser(); print('jax' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.stdout.strip() == "False", result.stderr


def test_plain_text_drops_restructuredtext():
    assert plain_text("Use :func:`jneuron.open_activations` with ``--out``.") == \
        "Use jneuron.open_activations with --out."


def test_neurox_labels_are_checked_line_by_line_against_a_stores_sentences(data, capsys):
    import jneuron as jn

    x = np.load(data / "acts.npy")
    lengths = [30, 0, 50, 40]  # sentence 2 has no words (an empty line), as extract writes it
    sentence = np.repeat(np.arange(len(lengths)), lengths)
    with jn.StoreWriter(data / "s.zarr") as writer:
        writer.append("m", "l0", x)
        writer.append_text([f"w{i}" for i in range(120)], sentence)
    y = np.load(data / "strings.npy")
    lines = np.split(y, np.cumsum(lengths)[:-1])
    (data / "good.txt").write_text("".join(" ".join(line) + "\n" for line in lines))
    succeeds(capsys, "information", data / "s.zarr", "--labels", data / "good.txt", "--out", data / "o")
    succeeds(capsys, "information", data / "s.zarr", "--labels", data / "lines.txt", "--out", data / "o")
    shifted = [lines[0][:-1], lines[1], np.r_[lines[0][-1:], lines[2]], lines[3]]  # same total, line 1 one short
    (data / "shifted.txt").write_text("".join(" ".join(line) + "\n" for line in shifted))
    (data / "one_line.txt").write_text(" ".join(y) + "\n")
    (data / "no_last.txt").write_text("".join(" ".join(line) + "\n" for line in lines[:-1]))
    for command in ("probe", "information"):
        fails(capsys, command, data / "s.zarr", "--labels", data / "shifted.txt", "--out", data / "o",
              message=r"shifted.txt: line 1 \(sentence 1\) has 29 labels but the activations have 30 rows for "
                      r"sentence 1 \(lines and sentences counted from 1\)")
    fails(capsys, "information", data / "s.zarr", "--labels", data / "one_line.txt",
          message=r"line 1 \(sentence 1\) has 120 labels but the activations have 30 rows")
    fails(capsys, "information", data / "s.zarr", "--labels", data / "no_last.txt",
          message=r"line 4 \(sentence 4\) is missing: the file ends after 3 lines")
    assert not (data / "o" / "probe.json").exists()


def test_messages_and_records_say_what_they_mean(data, capsys):
    import json

    out = succeeds(capsys, "probe", data / "acts.npy", "--labels", data / "labels.npy", "--l1", "0", "1e-5",
                   "--epochs", "1", "--out", data / "p")
    settings = json.loads((data / "p" / "run_probe.json").read_text())["jneuron_run"]["settings"]
    assert settings["l1"] == [0.0, 1e-5] and settings["epochs"] == 1 and settings["labels"] == str(data / "labels.npy")
    out = succeeds(capsys, "information", data / "acts.npy", "--labels", data / "labels.npy", "--threshold", "0",
                   "--out", data / "i")
    assert "ranking_<" not in out and str(data / "i" / "ranking_mutual_information.json") in out
    (data / "short.txt").write_text(" ".join(np.load(data / "strings.npy")[:119]) + "\n")
    fails(capsys, "information", data / "acts.npy", "--labels", data / "short.txt",
          message=r"\(1 row left over after the last line\)")
    fails(capsys, "report", data / "nothere", "--out", data / "nothere",
          message=r"nothere: no such file or folder")
    assert not (data / "nothere").exists()
