"""Which MaxCorr tile reduction runs: the pure-JAX one, or the fused Pallas kernel where it is faster.

On CPU the pure-JAX reduction always runs (Pallas there is only an interpreter). On a GPU or TPU the
first tile of each shape is timed both ways (a few runs each, after compiling) and the faster one is
kept for that shape; a kernel that fails to compile counts as slower. With a mesh whose ``"neurons"``
axis splits the rows, each device reduces its band with the chosen kernel and the column partners are
combined across bands (:func:`jneuron.kernels.sharded.make_reduce_tile`).

>>> import jax.numpy as jnp
>>> from jneuron.kernels.compensated import Pair
>>> reduce = tile_reducer((2, 3), ((0, 2), (2, 3)))
>>> rows, cols = reduce(Pair(jnp.eye(2, 3), jnp.zeros((2, 3))), jnp.ones(2), jnp.ones(3))
>>> [int(u) for u in cols.unit]
[0, 1, 0]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jneuron.kernels import maxcorr as kmax
from jneuron.kernels import maxcorr_pallas as kpallas
from jneuron.kernels import sharded as ksharded
from jneuron.kernels.compensated import Pair
from jneuron.kernels.sharded import NEURONS

KERNELS = ("auto", "jax", "pallas")
_PROBE_RUNS = 3


def tile_reducer(shape: tuple[int, int], segments: tuple[tuple[int, int], ...], mesh: Mesh | None = None,
                 kernel: str = "auto", dtype=jnp.float32) -> Callable:
    """``reduce(cross, inv_sd_rows, inv_sd_cols) -> (row partners, column partners)`` for tiles of ``shape``.

    Args:
      shape: the cross-product tile's ``(rows, columns)``.
      segments: the column segments (one per partner model), as in :func:`jneuron.kernels.maxcorr.reduce_tile`.
      mesh: split the rows over the mesh's ``"neurons"`` axis (when it has one of size > 1).
      kernel: ``"auto"`` (timed choice on GPU/TPU, pure JAX on CPU and for float64 tiles), ``"jax"`` or
        ``"pallas"`` (float32 only).
      dtype: the tile's dtype.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: expected one of {KERNELS}")
    shards = ksharded.axis_size(mesh, NEURONS) if mesh is not None else 1
    band = (-(-shape[0] // shards), shape[1])
    if kernel == "auto":
        kernel = "jax" if jnp.dtype(dtype) == jnp.float64 else choose_kernel(band, segments, jax.default_backend())
    return _local(segments, kernel) if shards == 1 else _sharded(mesh, segments, kernel)


@lru_cache(maxsize=64)
def _sharded(mesh: Mesh, segments: tuple[tuple[int, int], ...], kernel: str) -> Callable:
    return ksharded.make_reduce_tile(mesh, segments, _local(segments, kernel))


@lru_cache(maxsize=64)
def _local(segments: tuple[tuple[int, int], ...], kernel: str) -> Callable:
    if kernel == "pallas":
        return partial(_pallas, segments=segments)
    return partial(kmax.reduce_tile, segments=segments)


def _pallas(cross: Pair, inv_sd_rows, inv_sd_cols, segments):
    return kpallas.reduce_tile(cross, inv_sd_rows, inv_sd_cols, segments, interpret=jax.default_backend() == "cpu")


@lru_cache(maxsize=256)
def choose_kernel(shape: tuple[int, int], segments: tuple[tuple[int, int], ...], platform: str) -> str:
    """``"jax"`` on CPU; elsewhere whichever of ``"jax"`` and ``"pallas"`` reduces a ``shape`` tile faster."""
    if platform == "cpu":
        return "jax"
    timings = {name: _time(_local(segments, name), shape) for name in ("jax", "pallas")}
    return min(timings, key=timings.get)


def _time(reduce: Callable, shape: tuple[int, int]) -> float:
    keys = jax.random.split(jax.random.key(0), 3)
    cross = Pair(jax.random.normal(keys[0], shape), jnp.zeros(shape))
    inv_rows = jax.random.uniform(keys[1], shape[:1])
    inv_cols = jax.random.uniform(keys[2], shape[1:])
    try:
        jax.block_until_ready(reduce(cross, inv_rows, inv_cols))
    except Exception:  # noqa: BLE001 - a kernel this platform cannot compile is never chosen
        return float("inf")
    start = time.perf_counter()
    for _ in range(_PROBE_RUNS):
        jax.block_until_ready(reduce(cross, inv_rows, inv_cols))
    return (time.perf_counter() - start) / _PROBE_RUNS
