"""Damaged or unusual inputs are read correctly or refused in one line; stores are replaced atomically.

Kills are simulated by leaving what a killed process leaves: a ``.NAME.<pid>.<hex>.<kind>`` entry of a
process that no longer runs.
"""

import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import zarr

import jneuron as jn
from jneuron.cli.main import main
from jneuron.data import atomic as io_utils
from jneuron.errors import JNeuronError


def dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def leave(target, kind, pid=None):
    """The leftover a process ``pid`` (default: one that has ended) would leave next to ``target``."""
    return target.parent / f".{target.name}.{dead_pid() if pid is None else pid}.0123abcd.{kind}"


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def write_two_models(path, rng, tokens=256, chunk=64, zeros=False):
    a = rng.normal(size=(tokens, 3)).astype(np.float32)
    b = np.zeros((tokens, 3), np.float32) if zeros else rng.normal(size=(tokens, 3)).astype(np.float32)
    with jn.StoreWriter(path, chunk_tokens=chunk) as w:
        w.append("a", "l", a)
        w.append("b", "l", b)
    return a, b


# --- item 2: a missing zarr chunk is an error, never zeros ----------------------------------------------------


def test_chunks_of_zeros_are_written_and_read_back(tmp_path, rng):
    a, b = write_two_models(tmp_path / "s.zarr", rng, zeros=True)
    array = zarr.open_group(tmp_path / "s.zarr", mode="r")["b.l"]
    assert array.nchunks_initialized == array.nchunks == 4
    np.testing.assert_array_equal(jn.open_activations(tmp_path / "s.zarr").read(0, 256), np.hstack([a, b]))


def test_missing_chunk_is_one_line_naming_layer_and_tokens(tmp_path, rng, capsys):
    np.save(tmp_path / "c.npy", rng.normal(size=(256, 2)).astype(np.float32))
    write_two_models(tmp_path / "s.zarr", rng)
    (tmp_path / "s.zarr" / "b.l" / "c" / "2" / "0").unlink()
    code, _, err = run_cli(capsys, "maxcorr", tmp_path / "s.zarr", tmp_path / "c.npy", "--out", tmp_path / "res")
    assert code == 2
    assert "'b/l': chunk c/2/0 (tokens 128:192) is missing from the store" in one_line(err)
    assert "older" not in err and not (tmp_path / "res").exists()


def test_chunk_lost_after_open_is_an_error_when_read(tmp_path, rng):
    write_two_models(tmp_path / "s.zarr", rng)
    source = jn.open_activations(tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / "a.l" / "c" / "3" / "0").unlink()
    np.testing.assert_equal(source.read(0, 192).shape, (192, 6))
    with pytest.raises(JNeuronError, match=r"'a/l': chunk c/3/0 \(tokens 192:256\) is missing"):
        source.read(100, 256)


def test_missing_chunk_of_an_older_store_says_so(tmp_path, rng):
    write_two_models(tmp_path / "s.zarr", rng)
    meta = json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())
    meta["attributes"]["jneuron"]["format"] = 1
    (tmp_path / "s.zarr" / "zarr.json").write_text(json.dumps(meta))
    (tmp_path / "s.zarr" / "a.l" / "c" / "0" / "0").unlink()
    with pytest.raises(JNeuronError, match=r"tokens 0:64\) is missing .* older jneuron writer"):
        jn.open_activations(tmp_path / "s.zarr")


# --- item 5: stores written in any order, atomic replacement, leftovers ---------------------------------------


def test_store_written_layer_by_layer_opens_grouped_by_model(tmp_path, rng):
    x = {(m, l): rng.normal(size=(40, 2 + l)).astype(np.float32) for l in range(2) for m in "ab"}
    with jn.StoreWriter(tmp_path / "s.zarr", chunk_tokens=16) as w:
        for (m, l), values in x.items():  # a/l0, b/l0, a/l1, b/l1
            w.append(m, f"l{l}", values)
    source = jn.open_activations(tmp_path / "s.zarr")
    assert source.layers == {"a": (("l0", 2), ("l1", 3)), "b": (("l0", 2), ("l1", 3))}
    expected = np.hstack([x["a", 0], x["a", 1], x["b", 0], x["b", 1]])
    np.testing.assert_array_equal(np.concatenate(list(source.chunks(16))), expected)


def test_store_replacement_swaps_in_one_step(tmp_path, rng):
    old, _ = write_two_models(tmp_path / "s.zarr", rng)
    new, _ = write_two_models(tmp_path / "s.zarr", rng)
    np.testing.assert_array_equal(jn.open_activations(tmp_path / "s.zarr#a").read(0, 256), new)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_store_replacement_killed_between_renames_gets_the_old_store_back(tmp_path, rng, monkeypatch):
    old, _ = write_two_models(tmp_path / "s.zarr", rng)
    monkeypatch.setattr(io_utils, "_exchange", lambda a, b: False)  # a system that cannot swap folders
    rename, renames = os.rename, []

    def rename_then_die(src, dst):
        if renames:
            raise KeyboardInterrupt  # killed between the two renames
        renames.append(dst)
        rename(src, dst)

    monkeypatch.setattr(io_utils.os, "rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_two_models(tmp_path / "s.zarr", rng)
    monkeypatch.undo()
    assert not (tmp_path / "s.zarr").exists()
    for path, kind, _ in io_utils.leftovers(tmp_path / "s.zarr"):  # as the killed process left them
        path.rename(leave(tmp_path / "s.zarr", kind))
    np.testing.assert_array_equal(jn.open_activations(tmp_path / "s.zarr#a").read(0, 256), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_killed_convert_leftovers_are_removed_by_the_next_run(tmp_path, rng, capsys):
    np.save(tmp_path / "m.npy", rng.normal(size=(50, 3)).astype(np.float32))
    dead = leave(tmp_path / "copy.zarr", "tmp")
    live = leave(tmp_path / "copy.zarr", "tmp", pid=os.getpid())
    for folder in (dead, live):
        (folder / "m").mkdir(parents=True)
        (folder / "m" / "chunk").write_bytes(b"\0" * 1000)
    code, _, err = run_cli(capsys, "convert", tmp_path / "m.npy", "--out", tmp_path / "copy.zarr")
    assert code == 0, err
    assert not dead.exists() and live.exists()  # a process still running keeps its folder
    assert jn.open_activations(tmp_path / "copy.zarr").tokens == 50


def test_store_writer_error_leaves_no_store_and_keeps_the_old_one(tmp_path, rng):
    old, _ = write_two_models(tmp_path / "s.zarr", rng)
    with pytest.raises(JNeuronError, match="complex values are not supported"):
        with jn.StoreWriter(tmp_path / "s.zarr") as w:
            w.append("a", "l", rng.normal(size=(10, 2)))
            w.append("b", "l", np.ones((10, 2), np.complex64))
    np.testing.assert_array_equal(jn.open_activations(tmp_path / "s.zarr#a").read(0, 256), old)
    with pytest.raises(JNeuronError, match="complex values"):
        with jn.StoreWriter(tmp_path / "new.zarr") as w:
            w.append("b", "l", np.ones((10, 2), np.complex64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_store_writer_keeps_bfloat16_values_exactly_as_float32(tmp_path, rng):
    values = rng.normal(size=(30, 4)).astype(ml_dtypes.bfloat16)
    with jn.StoreWriter(tmp_path / "s.zarr", chunk_tokens=8) as w:
        w.append("m", "l", values)
    source = jn.open_activations(tmp_path / "s.zarr")
    assert source.columns[0].dtype == np.float32
    np.testing.assert_array_equal(source.read(0, 30), values.astype(np.float32))


# --- item 5: unusual dtypes and shapes, truncated and corrupt files --------------------------------------------


def test_bfloat16_npy_and_npz_read_as_float32(tmp_path, rng):
    values = rng.normal(size=(20, 3)).astype(ml_dtypes.bfloat16)
    np.save(tmp_path / "b.npy", values)
    np.savez(tmp_path / "b.npz", **{"m/l": values})
    assert np.load(tmp_path / "b.npy").dtype == np.dtype("V2")  # what the file records
    for path in (tmp_path / "b.npy", tmp_path / "b.npz"):
        source = jn.open_activations(path)
        assert source.dtype == np.float32
        np.testing.assert_array_equal(source.read(0, 20), values.astype(np.float32))


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint16", "int64", "float16"])
def test_numeric_dtypes_are_read(tmp_path, dtype):
    values = (np.arange(24).reshape(8, 3) % 5).astype(dtype)
    np.save(tmp_path / "x.npy", values)
    np.testing.assert_array_equal(jn.open_activations(tmp_path / "x.npy").read(0, 8), values.astype(np.float32))


@pytest.mark.parametrize("values, message", [
    (np.ones((5, 2), np.complex128), "complex values are not supported"),
    (np.array([["a", "b"]] * 5), "strings are not activations"),
    (np.array([[b"a", b"b"]] * 5), "strings are not activations"),
    (np.zeros((5, 2), "datetime64[s]"), "dates are not activations"),
    (np.zeros((5, 2), "timedelta64[s]"), "time spans are not activations"),
    (np.zeros((5, 2), [("x", "f4"), ("y", "f4")]), "structured records are not activations"),
    (np.zeros((5, 2), ml_dtypes.float8_e4m3fn), "a float8 or int4 type the file does not name"),
    (np.zeros((5, 0), np.float32), "has no neurons"),
])
def test_unsupported_arrays_are_refused_in_one_line(tmp_path, rng, capsys, values, message):
    np.save(tmp_path / "x.npy", values)
    np.savez(tmp_path / "y.npz", m=values)
    np.save(tmp_path / "ok.npy", rng.normal(size=(5, 2)).astype(np.float32))
    for path in ("x.npy", "y.npz"):
        code, _, err = run_cli(capsys, "maxcorr", tmp_path / path, tmp_path / "ok.npy", "--out", tmp_path / "res")
        assert code == 2 and message in one_line(err) and path in err


def test_object_arrays_are_refused_in_one_line(tmp_path, rng, capsys):
    np.save(tmp_path / "x.npy", np.array([[1, None]] * 5, dtype=object), allow_pickle=True)
    np.save(tmp_path / "ok.npy", rng.normal(size=(5, 2)).astype(np.float32))
    code, _, err = run_cli(capsys, "maxcorr", tmp_path / "x.npy", tmp_path / "ok.npy", "--out", tmp_path / "res")
    assert code == 2 and one_line(err).endswith("x.npy: Python objects are not activations (dtype object)")


def test_npy_cut_short_while_mapped_is_an_error_not_a_crash(tmp_path, rng):
    np.save(tmp_path / "x.npy", rng.normal(size=(4096, 16)).astype(np.float32))
    source = jn.open_activations(tmp_path / "x.npy")
    assert source.read(0, 10).shape == (10, 16)
    os.truncate(tmp_path / "x.npy", 4096)  # reading a mapped page past the new end would be SIGBUS
    with pytest.raises(JNeuronError, match=r"x.npy: the file was cut to 4096 bytes while being read"):
        source.read(4000, 4096)


def test_corrupt_compressed_chunk_is_one_line_and_nothing_after(tmp_path, rng):
    with jn.StoreWriter(tmp_path / "s.zarr", chunk_tokens=64) as w:  # a read of many chunks at once
        w.append("a", "l", rng.normal(size=(8192, 8)).astype(np.float32))
        w.append("b", "l", rng.normal(size=(8192, 8)).astype(np.float32))
    for k in (3, 50, 100):
        (tmp_path / "s.zarr" / "b.l" / "c" / str(k) / "0").write_bytes(b"\0" * 5)
    result = subprocess.run([sys.executable, "-m", "jneuron.cli.main", "maxcorr", str(tmp_path / "s.zarr"),
                             "--out", str(tmp_path / "res"), "--chunk-tokens", "8192"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "cannot read tokens 0:8192 of 'b/l' (corrupt or truncated file?)" in one_line(result.stderr)
    assert not (tmp_path / "res").exists()
