"""A command's outputs land in ``--out`` as one set, or not at all.

The command writes into a staging folder inside ``--out`` (``OUT/.jneuron-run.<pid>.<hex>.tmp``; ``--out``
is created if missing), made before anything is computed, so an unwritable ``--out`` fails at once.
When the command succeeds, the staging folder is renamed ``.jneuron-run.<pid>.<hex>.ready`` (the commit
point) and its entries are moved into ``--out``, one rename each (a folder such as ``report/`` is
swapped whole), after which it is removed.

Two runs never move files into the same ``--out`` at the same time: the moves hold an exclusive lock
(``flock``) on ``--out``. A run killed before its commit point leaves a ``.tmp`` folder, which the next
run for the same ``--out`` removes; a run killed during its moves leaves its ``.ready`` folder, and the
next run (any command with that ``--out``) finishes those moves before anything else, so ``--out`` never
keeps a mix of two runs. A failed or interrupted run leaves ``--out`` as it was (and removes it if it
created it and it is still empty).

Why not a manifest naming the run? It would only let a reader detect a mix, and every reader (``jneuron
report``, the user's scripts) would have to check it. Why not replace ``--out`` by one rename? It is the
user's folder and may hold inputs and other commands' results (or be the working directory or a mount
point). The staging folder sits inside ``--out``, so the moves never cross file systems.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from jneuron.data.atomic import (
    aside,
    leftovers,
    make_folder,
    move_into,
    process_running,
)
from jneuron.errors import JNeuronError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: runs are not serialized
    fcntl = None

_STAGING = "jneuron-run"  # staging folders are OUT/.jneuron-run.<pid>.<hex>.{tmp,ready}


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
        self.created = self.committed = False
        if self.out.exists() and not self.out.is_dir():
            raise JNeuronError(f"--out {self.out}: exists and is not a folder")
        prepare_parent(self.out)
        try:
            self.created = _make_if_missing(self.out)
            _check_access(self.out)
            with _locked(self.out):
                _settle(self.out)
            self.folder = make_folder(aside(self.out / _STAGING))
        except OSError as error:
            self.discard()
            raise JNeuronError(f"--out {self.out}: cannot write there ({error.strerror or error})") from None

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def commit(self) -> None:
        """Move the staged outputs into ``out`` (Ctrl-C waits until they are all in place)."""
        with _locked(self.out), _interrupts_deferred():
            _settle(self.out)
            ready = self.folder.with_suffix(".ready")
            os.rename(self.folder, ready)
            move_into(ready, self.out)
        self.committed = True

    def discard(self) -> None:
        """Drop the staged outputs unless they were committed (and ``out`` if this run made it and it is empty)."""
        if self.committed:
            return
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        if self.created:
            with contextlib.suppress(OSError):
                self.out.rmdir()


def prepare_parent(out: Path) -> None:
    """Create the folders above ``out``; a one-line error if that fails or nothing can be made in the last one
    (tried: a folder is made there and removed, as the output will be written aside first)."""
    blocking = next((p for p in reversed(out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise JNeuronError(f"--out {out}: {blocking} is a file, not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _check_access(out.parent)
        os.rmdir(make_folder(aside(out)))
    except OSError as error:
        raise JNeuronError(f"--out {out}: cannot write there ({error.strerror or error})") from None


def _make_if_missing(folder: Path) -> bool:
    """Create ``folder`` unless it exists; whether this call created it."""
    try:
        make_folder(folder)
    except FileExistsError:
        return False
    return True


def _check_access(folder: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))


def _settle(out: Path) -> None:
    """Finish the moves of killed runs' ``.ready`` sets in ``out`` and remove their ``.tmp`` folders."""
    for path, kind, pid in leftovers(out / _STAGING):
        if process_running(pid):
            continue
        if kind == "ready":
            move_into(path, out)
        else:
            shutil.rmtree(path)


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
    """Hold Ctrl-C back in this block: a SIGINT that arrives during it is raised (KeyboardInterrupt) at its end.

    The Python-level handler is swapped, not the signal mask: a SIGINT sent to the process may be
    delivered to any of its threads (JAX and zarr start several).
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    caught = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


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
