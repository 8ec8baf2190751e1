"""A command's outputs reach ``--out`` as one set, with the usual permissions, leaving nothing behind.

Kills are simulated by leaving what a killed run leaves (``OUT/.jneuron-run.<pid>.<hex>.tmp`` or ``.ready``
of a process that has ended), or by failing a rename halfway through the moves.
"""

import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from jneuron.cli import outputs as _outputs
from jneuron.cli.commands import _crossmodel
from jneuron.data import atomic as io_utils
from jneuron.errors import JNeuronError
from tests.data.test_damaged_inputs import leave, one_line, run_cli


@pytest.fixture
def inputs(tmp_path, rng):
    shared = rng.normal(size=(200, 1))
    np.save(tmp_path / "a.npy", np.hstack([shared, rng.normal(size=(200, 2))]).astype(np.float32))
    np.save(tmp_path / "b.npy", np.hstack([rng.normal(size=(200, 1)), 3 * shared]).astype(np.float32))
    return tmp_path


def maxcorr(capsys, folder, *extra):
    return run_cli(capsys, "maxcorr", folder / "a.npy", folder / "b.npy", "--out", folder / "res", "--no-plot", *extra)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_results_and_report_have_the_usual_permissions(inputs, capsys):
    previous = os.umask(0o022)
    try:
        assert maxcorr(capsys, inputs)[0] == 0
        assert run_cli(capsys, "report", inputs / "res", "--out", inputs / "res")[0] == 0
    finally:
        os.umask(previous)
    modes = {p.relative_to(inputs).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in (inputs / "res").rglob("*")}
    modes["res"] = stat.S_IMODE((inputs / "res").stat().st_mode)
    assert {name for name, mode in modes.items() if mode == 0o755} == {"res"}
    assert "res/report.html" in modes and all(mode == 0o644 for name, mode in modes.items() if name != "res")
    assert hidden(inputs) == [] and hidden(inputs / "res") == []


def test_api_writes_honour_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        path = io_utils.atomic_write_json(tmp_path / "x" / "r.json", {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and stat.S_IMODE(path.parent.stat().st_mode) == 0o750


def test_printed_paths_name_out_not_the_staging_folder(inputs, capsys):
    code, out, _ = maxcorr(capsys, inputs)
    assert code == 0 and f"wrote {inputs / 'res' / 'maxcorr.json'}, {inputs / 'res' / 'maxcorr.csv'}" in out


def test_failed_run_leaves_out_as_it_was(inputs, capsys, monkeypatch):
    assert maxcorr(capsys, inputs)[0] == 0
    before = (inputs / "res" / "maxcorr.json").read_bytes()

    def fail_after_one_file(args, method):
        (args.out / "maxcorr.json").write_text("{}")
        raise JNeuronError("something went wrong")

    monkeypatch.setattr(_crossmodel, "run", fail_after_one_file)
    code, _, err = maxcorr(capsys, inputs)
    assert code == 2 and one_line(err) == "jneuron maxcorr: error: something went wrong"
    assert (inputs / "res" / "maxcorr.json").read_bytes() == before
    assert hidden(inputs) == [] and hidden(inputs / "res") == []


def test_interrupted_run_is_one_line_exit_130_and_leaves_nothing(inputs, capsys, monkeypatch):
    def interrupted(args, method):
        (args.out / "maxcorr.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(_crossmodel, "run", interrupted)
    code, _, err = maxcorr(capsys, inputs)
    assert code == 130 and one_line(err) == "jneuron maxcorr: interrupted"
    assert not (inputs / "res").exists() and hidden(inputs) == []


def test_unwritable_out_fails_before_computing(inputs, capsys, monkeypatch):
    monkeypatch.setattr(_crossmodel, "run", lambda args, method: pytest.fail("computed before checking --out"))
    code, _, err = run_cli(capsys, "maxcorr", inputs / "a.npy", inputs / "b.npy", "--out", inputs / "a.npy" / "res")
    assert code == 2 and one_line(err) == f"jneuron maxcorr: error: --out {inputs}/a.npy/res: {inputs}/a.npy is a file, not a folder"
    code, _, err = run_cli(capsys, "maxcorr", inputs / "a.npy", inputs / "b.npy", "--out", inputs / "b.npy")
    assert code == 2 and "exists and is not a folder" in one_line(err)
    code, _, err = run_cli(capsys, "convert", inputs / "a.npy", "--out", inputs / "a.npy" / "x.zarr")
    assert code == 2 and "is a file, not a folder" in one_line(err)


def test_run_killed_before_its_commit_is_cleaned_by_the_next(inputs, capsys):
    (inputs / "res").mkdir()
    dead = leave(inputs / "res" / "jneuron-run", "tmp")
    dead.mkdir()
    (dead / "maxcorr.json").write_text("{}")
    assert maxcorr(capsys, inputs)[0] == 0
    assert not dead.exists() and hidden(inputs / "res") == []
    assert sorted(os.listdir(inputs / "res")) == ["maxcorr.csv", "maxcorr.json", "run_maxcorr.json"]


def test_run_killed_during_its_moves_is_finished_by_the_next(inputs, capsys, monkeypatch):
    assert maxcorr(capsys, inputs, "--top", "1")[0] == 0  # run A
    real, moved = io_utils.replace_path, []

    def die_after_first_move(new, path):
        if moved:
            raise KeyboardInterrupt
        moved.append(path)
        real(new, path)

    monkeypatch.setattr(io_utils, "replace_path", die_after_first_move)
    monkeypatch.setattr(_crossmodel, "run", lambda args, method: write_set(args.out, "B"))
    assert maxcorr(capsys, inputs)[0] == 130  # run B: killed after its first move
    monkeypatch.undo()
    assert [p.name for p in moved] == ["maxcorr.csv"]
    assert (inputs / "res" / "maxcorr.csv").read_text() == "B" and (inputs / "res" / "maxcorr.json").read_text() != "B"
    for path, kind, _ in io_utils.leftovers(inputs / "res" / "jneuron-run"):  # as the killed run left it
        path.rename(leave(inputs / "res" / "jneuron-run", kind))
    monkeypatch.setattr(_crossmodel, "run", lambda args, method: None)  # run C writes nothing
    assert maxcorr(capsys, inputs)[0] == 0
    assert [(inputs / "res" / n).read_text() for n in ("maxcorr.csv", "maxcorr.json")] == ["B", "B"]
    assert hidden(inputs / "res") == []


def write_set(folder: Path, content: str) -> None:
    for name in ("maxcorr.json", "maxcorr.csv"):
        (folder / name).write_text(content)


def test_two_runs_never_mix_their_sets(tmp_path):
    first, second = _outputs.OutputSet(tmp_path / "res"), _outputs.OutputSet(tmp_path / "res")
    write_set(first.folder, "first")
    write_set(second.folder, "second")
    second.commit()
    first.commit()
    assert {p.read_text() for p in (tmp_path / "res").iterdir()} == {"first"}


def test_a_commit_waits_for_the_lock_of_another(tmp_path):
    outputs = _outputs.OutputSet(tmp_path / "res")
    write_set(outputs.folder, "x")
    with _outputs._locked(tmp_path / "res"):
        committing = threading.Thread(target=outputs.commit)
        committing.start()
        committing.join(0.3)
        assert committing.is_alive() and not (tmp_path / "res" / "maxcorr.json").exists()
    committing.join(10)
    assert sorted(os.listdir(tmp_path / "res")) == ["maxcorr.csv", "maxcorr.json"]


def test_ctrl_c_while_the_command_starts_is_one_line_and_exit_130(inputs):
    script = Path(sys.executable).with_name("jneuron")
    if not script.exists():
        pytest.skip("the jneuron console script is not installed next to this Python")
    environment = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}  # each finished import is a line on stderr
    with subprocess.Popen([str(script), "maxcorr", str(inputs / "a.npy"), str(inputs / "b.npy"), "--out",
                           str(inputs / "res")], stderr=subprocess.PIPE, text=True, env=environment) as process:
        for line in process.stderr:
            if line.rstrip().endswith("jneuron._interrupts"):  # the package goes on to import JAX and the rest
                process.send_signal(signal.SIGINT)
                break
        rest = [line for line in process.stderr if not line.startswith("import time:")]
        assert process.wait(60) == 130
    assert len(rest) == 1 and rest[0].rstrip() in ("jneuron: interrupted", "jneuron maxcorr: interrupted"), rest
    assert not (inputs / "res").exists() and hidden(inputs) == []



def test_ctrl_c_during_the_moves_waits_until_the_set_is_in_place(tmp_path, monkeypatch):
    outputs = _outputs.OutputSet(tmp_path / "res")
    write_set(outputs.folder, "x")
    real = io_utils.replace_path

    def interrupted_then_move(new, path):
        os.kill(os.getpid(), signal.SIGINT)
        real(new, path)

    monkeypatch.setattr(io_utils, "replace_path", interrupted_then_move)
    with pytest.raises(KeyboardInterrupt):
        outputs.commit()
    assert sorted(os.listdir(tmp_path / "res")) == ["maxcorr.csv", "maxcorr.json"]


def test_out_may_be_the_working_directory_holding_other_files(inputs, capsys, monkeypatch):
    monkeypatch.chdir(inputs)
    code, out, _ = run_cli(capsys, "maxcorr", "a.npy", "b.npy", "--out", ".", "--no-plot")
    assert code == 0 and "wrote ./maxcorr.json, ./maxcorr.csv" in out
    assert sorted(os.listdir(inputs)) == ["a.npy", "b.npy", "maxcorr.csv", "maxcorr.json", "run_maxcorr.json"]
