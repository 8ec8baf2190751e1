"""One process of the two-process localhost check: reads its own token range, writes the combined result.

Run by ``tests/streaming/test_multihost.py`` as ``python multihost_worker.py PORT PROCESS_ID OUT.npz`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` in its environment; process 0 writes the
co-moments (tokens over all 8 devices) and MaxCorr scores (tokens over 4, rows over 2) combined across
both processes. Importing this module has no side effects (the test imports
:func:`data`).
"""

import sys
import warnings

import jax
import numpy as np

import jneuron as jn

TOKENS, SPLIT = 1003, 601  # uneven on purpose: process 0 reads 601 tokens, process 1 reads 402


def data() -> np.ndarray:
    """Activations with an offset, a shared signal and a dead neuron, the same in every process."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(TOKENS, 3)) @ rng.normal(size=(3, 6)) + rng.normal(size=(TOKENS, 6)) + 1e3
    x[:, 2] = 4.0
    return x.astype(np.float32)


def models(x: np.ndarray) -> list[np.ndarray]:
    """The same columns seen as two models, for MaxCorr."""
    return [x[:, :2], x[:, 2:]]


def main(port: int, process_id: int, out: str) -> None:
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=60)
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    rows = slice(0, SPLIT) if process_id == 0 else slice(SPLIT, TOKENS)
    local = data()[rows]
    moments = jn.comoments(local, chunk_tokens=64, mesh=jn.device_mesh())
    with warnings.catch_warnings():  # the dead neuron is expected
        warnings.simplefilter("ignore", jn.DeadNeuronWarning)
        ranking = jn.maxcorr(models(local), chunk_tokens=64, mesh=jn.device_mesh(neuron_shards=2))
    if process_id == 0:
        np.savez(out, count=moments.count, mean=moments.mean, cross=moments.cross, scores=ranking.scores,
                 unit=ranking.partner_unit)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
