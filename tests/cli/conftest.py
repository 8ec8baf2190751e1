"""Fixtures shared by the command-line tests."""

import contextlib
import io

import pytest

from jneuron.cli.main import main


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The demo (3 models, 1 epoch, top 3), run once for the whole session: ``(exit code, stdout, output
    folder)``. Its tests live in tests/cli/test_cli.py, so one test process runs it."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--models", "3", "--epochs", "1", "--out", str(out), "--top", "3"])
    return code, stdout.getvalue(), out
