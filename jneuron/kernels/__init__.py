"""Pure array kernels of jneuron: jit-able, vmap-able, shard-able functions of arrays.

No I/O, no Flax, no printing, no Python loops over data.
"""

from jneuron.kernels import compensated, information, maxcorr, moments, quantize

__all__ = ["compensated", "information", "maxcorr", "moments", "quantize"]
