"""Hand freed heap memory back to the operating system between passes.

Compiling and running a pass allocates many small blocks; glibc keeps them in its heap after they are
freed, so a run of many passes (each compiling its own tile shapes) would grow its resident memory by
what every pass left behind. :func:`release_freed_memory` asks glibc to return it (``malloc_trim``);
elsewhere it does nothing.

>>> release_freed_memory() in (True, False)
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache


@lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> bool:
    """Return freed heap memory to the system where the C library can (glibc); whether it could."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
