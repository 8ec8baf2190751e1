"""Device meshes for sharded analysis: the ``devices=`` / ``mesh=`` argument of the entry points.

The token axis is the data-parallel axis (mesh axis ``"tokens"``); wide layers may also split the rows
of their cross-products over a second axis, ``"neurons"``. Pass ``devices=8`` (or a list of devices) to
shard tokens over that many devices, or a mesh from :func:`device_mesh` (or your own
:func:`jax.make_mesh` with those axis names) for both axes. Several processes started with
:func:`jax.distributed.initialize` each pass their own token range; the statistics are combined across
all of them.

>>> import jax, jneuron as jn
>>> mesh = jn.device_mesh(1)
>>> dict(mesh.shape)
{'tokens': 1, 'neurons': 1}
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import AxisType, Mesh

from jneuron.errors import JNeuronError
from jneuron.kernels.sharded import NEURONS, TOKENS


def device_mesh(devices: int | Sequence | None = None, neuron_shards: int = 1) -> Mesh:
    """A ``("tokens", "neurons")`` mesh over ``devices`` (a count, a list of devices, or all devices).

    Args:
      devices: how many of :func:`jax.devices` to use (all of them when None), or the devices themselves.
      neuron_shards: how many devices split each cross-product's rows; must divide the device count.
    """
    if devices is None:
        chosen = jax.devices()
    elif isinstance(devices, int):
        available = jax.devices()
        if not 1 <= devices <= len(available):
            platform = available[0].platform
            raise JNeuronError(f"devices={devices}: this process sees {len(available)} device(s) ({platform})")
        chosen = available[:devices]
    else:
        chosen = list(devices)
        if not chosen:
            raise JNeuronError("devices: got an empty list of devices")
    if neuron_shards < 1 or len(chosen) % neuron_shards:
        raise JNeuronError(f"neuron_shards={neuron_shards} must be a positive divisor of the {len(chosen)} devices")
    shape = (len(chosen) // neuron_shards, neuron_shards)
    return jax.make_mesh(shape, (TOKENS, NEURONS), axis_types=(AxisType.Explicit,) * 2, devices=chosen)


def resolve_mesh(devices: int | Sequence | None, mesh: Mesh | None) -> Mesh | None:
    """The mesh an entry point runs on: None (one device, unsharded), or a checked mesh."""
    if devices is not None and mesh is not None:
        raise JNeuronError("pass either devices= or mesh=, not both")
    if mesh is None:
        return None if devices is None else device_mesh(devices)
    names = tuple(mesh.axis_names)
    if TOKENS not in names or not set(names) <= {TOKENS, NEURONS}:
        raise JNeuronError(
            f"mesh axes {names}: expected a {TOKENS!r} axis (tokens are sharded over it) and optionally "
            f"a {NEURONS!r} axis (cross-product rows); build one with jneuron.device_mesh"
        )
    return mesh
