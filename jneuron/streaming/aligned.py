"""Host buffers that JAX's CPU client adopts without a copy.

JAX wraps a host numpy array as a CPU device array in place when its data starts on a 64-byte boundary
(and is C-contiguous); numpy itself only guarantees 16 bytes, so an ordinary array is copied on every
transfer. The CPU pass's chunk products are allocated here (:mod:`jneuron.streaming.cpu_fold`), so each is
written once and merged where it lies.

>>> import numpy as np
>>> a = aligned_empty((3, 5), np.float32)
>>> a.shape, a.ctypes.data % ALIGNMENT
((3, 5), 0)
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

