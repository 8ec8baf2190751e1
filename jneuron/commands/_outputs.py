"""A command's outputs land in ``--out`` as one set, or not at all.

The command writes into a staging folder next to ``--out`` (``.OUT.<pid>.<hex>.tmp``), created before
anything is computed, so an unwritable ``--out`` fails at once. When the command succeeds:

* if ``--out`` does not exist, the staging folder is renamed to it: the whole set appears in one step;
* otherwise the staging folder is renamed ``.OUT.<pid>.<hex>.ready`` (the commit point) and its entries
  are moved into ``--out`` one rename each (a folder such as ``report/`` is swapped whole), after which it
  is removed.

Two runs never move files into the same folder at the same time: the moves hold an exclusive lock on the
folder that contains ``--out``. A run killed before its commit point leaves a ``.tmp`` folder, which the
next run for the same ``--out`` removes; a run killed during the moves leaves its ``.ready`` folder, and
the next run (any command with that ``--out``) finishes those moves before it starts, so ``--out``
never keeps a mix of two runs. A failed or interrupted run leaves ``--out`` as it was.

Why not a manifest naming the run? It would only let a reader detect a mix, and every reader (``jneuron
report``, the user's scripts) would have to check it. Moving a whole ``--out`` folder in one rename
is not possible either: ``--out`` is the user's folder and may hold inputs and results of other commands.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from jneuron.errors import JNeuronError
from jneuron.io_utils import aside, clean_leftovers, make_folder, move_into

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: runs are not serialized
    fcntl = None


class OutputSet:
    """Stage one run's outputs for ``out`` (see the module docstring).

    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "results")
    >>> with OutputSet(out) as outputs:
    ...     _ = (outputs.folder / "a.txt").write_text("1")
    ...     outputs.commit()
    >>> os.listdir(out)
    ['a.txt']
    """

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.folder: Path | None = None
        self.committed = False
        if self.out.exists() and not self.out.is_dir():
            raise JNeuronError(f"--out {self.out}: exists and is not a folder")
        prepare_parent(self.out)
        try:
            with _locked(self.out.parent):
                clean_leftovers(self.out)
            if self.out.exists():
                _check_access(self.out)
            self.folder = make_folder(aside(self.out))
        except OSError as error:
            self.discard()
            raise JNeuronError(f"--out {self.out}: cannot write there ({error.strerror or error})") from None

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def commit(self) -> None:
        """Put the staged outputs in ``out`` (Ctrl-C waits until they are all in place)."""
        with _locked(self.out.parent), _interrupts_deferred():
            clean_leftovers(self.out)
            if not self.out.exists():
                os.rename(self.folder, self.out)
            else:
                ready = self.folder.with_suffix(".ready")
                os.rename(self.folder, ready)
                move_into(ready, self.out)
        self.committed = True

    def discard(self) -> None:
        """Drop the staged outputs unless they were committed."""
        if self.folder is not None and not self.committed:
            shutil.rmtree(self.folder, ignore_errors=True)


def prepare_parent(out: Path) -> None:
    """Create the folders above ``out``; a one-line error if that fails or the last one cannot be written."""
    blocking = next((p for p in reversed(out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise JNeuronError(f"--out {out}: {blocking} is a file, not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _check_access(out.parent)
    except OSError as error:
        raise JNeuronError(f"--out {out}: cannot write there ({error.strerror or error})") from None


def _check_access(folder: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` (no lock file is left behind)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT back in this block; it is delivered (as KeyboardInterrupt) when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class ShownAs:
    """A text stream that names the staging folder by its final name in what it prints.

    Commands print the paths they wrote, which are inside the staging folder until the commit.
    """

    def __init__(self, stream, staging: Path, out: Path):
        self._stream, self._staging, self._out = stream, str(staging), str(out)

    def write(self, text: str) -> int:
        return self._stream.write(text.replace(self._staging, self._out))

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def shown_as_out(outputs: OutputSet) -> Iterator[None]:
    """Print paths in the staging folder as their places in ``--out`` while the command runs."""
    with contextlib.redirect_stdout(ShownAs(sys.stdout, outputs.folder, outputs.out)):
        yield
