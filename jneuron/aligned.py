"""Host buffers that JAX's CPU client adopts without a copy.

JAX wraps a host numpy array as a CPU device array in place when its data starts on a 64-byte boundary
(and is C-contiguous); numpy itself only guarantees 16 bytes, so an ordinary array is copied on every
transfer. Chunks and chunk products are allocated here, so on a CPU each is written once.

>>> import numpy as np
>>> a = aligned_empty((3, 5), np.float32)
>>> a.shape, is_aligned(a)
((3, 5), True)
"""

from __future__ import annotations

import numpy as np

ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``ALIGNMENT``-byte boundary."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + ALIGNMENT, np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    return raw[start : start + size].view(dtype).reshape(shape)


def is_aligned(array: np.ndarray) -> bool:
    """Whether JAX can adopt ``array`` without copying it (aligned and C-contiguous)."""
    return array.flags.c_contiguous and array.ctypes.data % ALIGNMENT == 0
