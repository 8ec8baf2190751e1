"""Follow the caller's dtype: float64 in, float64 arithmetic out, without touching JAX's global x64 flag.

JAX computes in float32 unless ``jax_enable_x64`` is on, and flipping that flag globally would change
every other JAX computation in the user's process. An analysis given float64 data instead runs inside
:func:`follow_dtype`, which turns on 64-bit mode for the duration and for this thread only
(``jax.enable_x64``); its streamed pass and its finalization (tile reductions, factorizations) then
run in float64, and it hands back host numpy float64 arrays (a JAX float64 array outside the context
would be cast down by the user's next ``jnp`` operation). float32 input runs exactly as before.

On a platform without float64 (a TPU, or any JAX backend not known to compute it) float64 input is
computed in float32, with compensated accumulation, and :class:`~jneuron.errors.Float64UnavailableWarning`
says so once per process.

JAX's configuration is thread-local: work started inside the context on another thread (the read-ahead
of :mod:`jneuron.streaming.prefetch`) must not create JAX arrays; it only reads and pads host arrays.

>>> import jax, numpy as np
>>> with follow_dtype(np.float64) as dtype:
...     print(dtype, working_dtype(np.float64), jax.numpy.ones(1).dtype)
float64 float64 float64
>>> bool(jax.config.jax_enable_x64), working_dtype(np.float64), working_dtype(np.float32)
(False, dtype('float32'), dtype('float32'))
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import jax
import numpy as np

from jneuron.errors import Float64UnavailableWarning

FLOAT64_PLATFORMS = ("cpu", "gpu", "cuda", "rocm")  # JAX backends that compute in float64
_warned = False  # Float64UnavailableWarning is given once per process


def default_platform() -> str:
    """The platform JAX computes on here: its default device's (``jax.default_device``), else the backend's."""
    device = jax.config.jax_default_device
    return getattr(device, "platform", device or jax.default_backend())


def has_float64() -> bool:
    """Whether the default platform computes in float64 (a CPU or a GPU; not a TPU)."""
    return default_platform().lower() in FLOAT64_PLATFORMS


def working_dtype(dtype) -> np.dtype:
    """The float dtype JAX computes input of ``dtype`` in, here and now.

    float64 for float64 input while 64-bit mode is on (inside :func:`follow_dtype`, or globally);
    float32 for everything else.
    """
    if np.dtype(dtype) == np.float64 and jax.config.read("jax_enable_x64"):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


@contextlib.contextmanager
def follow_dtype(dtype) -> Iterator[np.dtype]:
    """Compute in the precision of input of ``dtype`` for the duration; yields the working dtype.

    float64 input on a platform with float64 turns on JAX's 64-bit mode in this thread until the block
    ends; on a platform without it, float64 input is computed in float32 and
    :class:`~jneuron.errors.Float64UnavailableWarning` is given (once per process). Any other input
    changes nothing.
    """
    if np.dtype(dtype) != np.float64 or jax.config.read("jax_enable_x64"):
        yield working_dtype(dtype)
    elif not has_float64():
        _warn_float32()
        yield np.dtype(np.float32)
    else:
        with _x64():
            yield np.dtype(np.float64)


def _x64():
    """``jax.enable_x64(True)``, or its older home in ``jax.experimental``."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # pragma: no cover - JAX before 0.4.36

    return enable_x64()


def _warn_float32() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"float64 input is computed in float32 on this platform ({default_platform()}), which "
                      "has no float64: expect float32-level results", Float64UnavailableWarning, stacklevel=4)
