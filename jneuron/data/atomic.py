"""Files and folders that appear whole or not at all, and what a killed run leaves behind.

Everything jneuron writes is built aside, under a name next to its target that says which process owns
it (``.NAME.<pid>.<hex>.tmp``, see :func:`aside`), and put in place by one rename: a reader sees the old
version or the new one, never a part. A process killed before that rename leaves only such a leftover,
and :func:`clean_leftovers` (run before each write to the same target) removes the ones whose process is
gone. Files are created with mode 0666 and folders with 0777, less the umask, like any other file the
user creates (not tempfile's private 0600/0700).

>>> import os, tempfile
>>> folder = tempfile.mkdtemp()
>>> path = atomic_write_text(os.path.join(folder, "a.txt"), "hello")
>>> path.read_text(), sorted(os.listdir(folder))
('hello', ['a.txt'])
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.(?P<kind>tmp|old|ready)")


def aside(target: str | Path, kind: str = "tmp") -> Path:
    """A fresh path next to ``target`` owned by this process: ``.NAME.<pid>.<8 hex digits>.<kind>``.

    ``kind`` is ``"tmp"`` (being written), ``"old"`` (a replaced version, about to be deleted) or
    ``"ready"`` (complete, being moved in entry by entry with :func:`move_into`).
    """
    target = Path(target)
    return target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}"


def make_folder(path: str | Path) -> Path:
    """Create the folder ``path`` (its parent must exist) with mode 0777 less the umask."""
    os.mkdir(path, 0o777)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a file aside (mode 0666 less the umask) and one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    temporary = aside(path)
    try:
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text (UTF-8) atomically; see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data) -> Path:
    """Write JSON-ready ``data`` atomically (NaN is refused: convert it to None first)."""
    return atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False))


def replace_path(new: str | Path, path: str | Path) -> None:
    """Put ``new`` (a file or folder) at ``path``, replacing what is there, so that ``path`` always holds
    the old one or the new one.

    Files replace files by one rename. Where a folder is involved, on Linux the two are swapped in one step
    (``renameat2`` with ``RENAME_EXCHANGE``) and the old one, now at ``new``'s name, is deleted. Elsewhere
    (or on a file system that cannot swap) the old one is renamed aside (``.NAME.<pid>.<hex>.old``) before
    ``new`` is renamed in; a kill between the two renames leaves no ``path``, and :func:`clean_leftovers`
    puts the old one back.
    """
    new, path = Path(new), Path(path)
    if not _is_folder(new) and not _is_folder(path):
        os.replace(new, path)
    elif not os.path.lexists(path):
        os.rename(new, path)
    elif _exchange(new, path):
        _remove(new)
    else:
        old = aside(path, "old")
        os.rename(path, old)
        os.rename(new, path)
        _remove(old)


def move_into(folder: str | Path, target: str | Path) -> None:
    """Move every entry of ``folder`` into the folder ``target`` (:func:`replace_path` each), then remove ``folder``.

    An entry already moved is no longer in ``folder``, so an interrupted move is finished by calling this again.
    """
    folder, target = Path(folder), Path(target)
    for entry in sorted(folder.iterdir()):
        destination = target / entry.name
        clean_leftovers(destination)
        replace_path(entry, destination)
    shutil.rmtree(folder)


def leftovers(target: str | Path) -> Iterator[tuple[Path, str, int]]:
    """``(path, kind, pid)`` of every ``.NAME.<pid>.<hex>.<kind>`` entry next to ``target``."""
    target = Path(target)
    try:
        names = os.listdir(target.parent)
    except FileNotFoundError:
        return
    for name in sorted(names):
        match = _LEFTOVER.fullmatch(name)
        if match and match["name"] == target.name:
            yield target.parent / name, match["kind"], int(match["pid"])


def clean_leftovers(target: str | Path) -> None:
    """Settle what killed processes left next to ``target``; entries of running processes are not touched.

    ``tmp``: removed (it never became ``target``). ``old``: put back at ``target`` if ``target`` is missing
    (the process died between the two renames of :func:`replace_path`), removed otherwise. ``ready``
    entries are left to their owner (:mod:`jneuron.cli.outputs` finishes their moves).
    """
    target = Path(target)
    for path, kind, pid in leftovers(target):
        if kind == "ready" or process_running(pid):
            continue
        if kind == "old" and not os.path.lexists(target):
            os.rename(path, target)
        else:
            _remove(path)


def process_running(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a process of another user counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _remove(path: Path) -> None:
    if _is_folder(path):
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@functools.cache
def _renameat2():
    """libc's ``renameat2`` (Linux, glibc 2.28+), or None."""
    if not sys.platform.startswith("linux"):
        return None
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is not None:
        function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` in one step; False where this system or file system cannot."""
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))
