"""All information measures of every neuron: jneuron vs the floor vs hand-written numpy, on one stream.

    python bench/information.py                  # issue size: 1,000,000 tokens x 4,096 neurons x 45 classes
    python bench/information.py --tokens 65536   # a quicker run

The activations are streamed in chunks of 8,192 tokens generated on the fly (a few random base chunks,
recycled, with fresh random labels per chunk), so the run needs about 1 GiB whatever the token count.
The time spent generating chunks is measured inside the generator and subtracted from every contender.

- jneuron: ``jn.neuron_information`` with 1-bit quantization (``x > 0.5``): exact joint counts, entropy,
  mutual information, KL selectivity and class selectivity (class means), rankings included; with the
  backend's default counting (segment sums on CPU) and, for comparison, ``counting="contract"`` (the
  one-hot contractions used on GPU/TPU).
- floor: one jitted contraction per chunk of the one-hot labels with the quantized activations
  (``onehot(y)^T @ (x > 0.5)``), summed over chunks: the counts alone.
- numpy: what a user would write: per chunk ``onehot.T @ (x > 0.5)`` and ``onehot.T @ x`` with BLAS, then
  the measures from the totals.

Prints ratios and writes bench/results/information.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jneuron as jn
from jneuron.data.atomic import atomic_write_text
from jneuron.kernels import information as kinfo

HIGHEST = jax.lax.Precision.HIGHEST
RESULTS = Path(__file__).parent / "results"


class Chunks:
    """A re-iterable stream of ``(x, y)`` chunks; ``generating`` accumulates the seconds spent making them."""

    def __init__(self, tokens: int, neurons: int, classes: int, chunk: int, pool: int = 4, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.base = [rng.random((chunk, neurons), dtype=np.float32) for _ in range(pool)]
        self.tokens, self.classes, self.chunk, self.seed = tokens, classes, chunk, seed
        self.generating = 0.0

    def __call__(self):
        rng = np.random.default_rng(self.seed + 1)
        for index, start in enumerate(range(0, self.tokens, self.chunk)):
            begin = time.perf_counter()
            rows = min(self.chunk, self.tokens - start)
            x = self.base[index % len(self.base)][:rows]
            y = rng.integers(0, self.classes, rows).astype(np.int32)
            self.generating += time.perf_counter() - begin
            yield x, y


def run_jneuron(stream: Chunks, counting: str | None = None) -> tuple[float, jn.NeuronInformation]:
    stream.generating = 0.0
    start = time.perf_counter()
    info = jn.neuron_information(stream, classes=stream.classes, threshold=0.5, chunk_tokens=stream.chunk,
                                 counting=counting)
    rankings = info.rankings()
    assert len(rankings) == 4
    return time.perf_counter() - start - stream.generating, info


def run_floor(stream: Chunks) -> tuple[float, np.ndarray]:
    classes = stream.classes

    @jax.jit
    def step(total, x, y):
        onehot = (y[:, None] == jnp.arange(classes)[None, :]).astype(jnp.float32)
        return total + jax.lax.dot_general(onehot, (x > 0.5).astype(jnp.float32), (((0,), (0,)), ((), ())),
                                           precision=HIGHEST)

    neurons = stream.base[0].shape[1]
    total = jnp.zeros((classes, neurons), jnp.float32)
    for x, y in Chunks(stream.chunk * 2, neurons, classes, stream.chunk)():  # compile on the chunk shape
        total = step(total, x, y)
    jax.block_until_ready(total)
    stream.generating = 0.0
    start = time.perf_counter()
    total = jnp.zeros((classes, neurons), jnp.float32)
    for x, y in stream():
        if len(y) < stream.chunk:  # pad the last chunk, as jneuron does, so nothing recompiles
            x = np.pad(x, ((0, stream.chunk - len(y)), (0, 0)))
            y = np.pad(y, (0, stream.chunk - len(y)), constant_values=classes)
        total = step(total, x, y)
    total = np.asarray(jax.block_until_ready(total))
    return time.perf_counter() - start - stream.generating, total


def run_numpy(stream: Chunks) -> tuple[float, np.ndarray, dict]:
    neurons, classes = stream.base[0].shape[1], stream.classes
    stream.generating = 0.0
    start = time.perf_counter()
    ones = np.zeros((classes, neurons), np.float64)
    sums = np.zeros((classes, neurons), np.float64)
    per_class = np.zeros(classes, np.int64)
    for x, y in stream():
        onehot = (y[:, None] == np.arange(classes)[None, :]).astype(np.float32)
        ones += onehot.T @ (x > 0.5).astype(np.float32)
        sums += onehot.T @ x
        per_class += onehot.sum(axis=0).astype(np.int64)
    counts = np.stack([per_class[None, :] - ones.T, ones.T], axis=1)  # (neurons, 2, classes)
    measures = {"mutual_information": kinfo.mutual_information(counts), "entropy": kinfo.entropy(counts)}
    return time.perf_counter() - start - stream.generating, counts, measures


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
            "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--neurons", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=45)
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--skip-numpy", action="store_true", help="leave out the numpy baseline")
    args = parser.parse_args()
    stream = Chunks(args.tokens, args.neurons, args.classes, args.chunk)
    for counting in (None, "contract"):  # compile on the chunk shape
        jn.neuron_information(Chunks(2 * args.chunk, args.neurons, args.classes, args.chunk), classes=args.classes,
                              chunk_tokens=args.chunk, counting=counting)
    t_floor_first, floor_counts = run_floor(stream)
    t_jneuron, info = run_jneuron(stream)
    t_contract, contracted = run_jneuron(stream, "contract")
    t_floor_again, _ = run_floor(stream)  # the floor before and after: the ratio uses the faster (stricter)
    t_floor = min(t_floor_first, t_floor_again)
    exact = bool(np.array_equal(info.counts[:, 1, :].T, floor_counts.astype(np.int64))
                 and np.array_equal(contracted.counts, info.counts))
    results = {
        "size": {"tokens": args.tokens, "neurons": args.neurons, "classes": args.classes, "chunk": args.chunk,
                 "quantization": "1 bit, x > 0.5"},
        "machine": machine(),
        "seconds": {"jneuron": t_jneuron, "jneuron_contract": t_contract, "floor": t_floor,
                    "floor_runs": [t_floor_first, t_floor_again]},
        "ratio_jneuron_to_floor": t_jneuron / t_floor,
        "ratio_jneuron_contract_to_floor": t_contract / t_floor,
        "default_counting": "segment" if jax.default_backend() == "cpu" else "contract",
        "counts_equal_floor": exact,
        "chunk_generation_seconds_excluded": stream.generating,
    }
    print(f"{args.tokens:,} tokens x {args.neurons:,} neurons x {args.classes} classes, 1 bit, "
          f"chunks of {args.chunk:,}")
    print(f"  floor (one-hot^T @ quantized, per chunk): {t_floor:8.2f} s   (runs {t_floor_first:.2f}, "
          f"{t_floor_again:.2f}; the faster is used)")
    print(f"  jneuron (all measures + rankings):        {t_jneuron:8.2f} s   {t_jneuron / t_floor:.2f}x floor"
          f"   counts equal floor: {exact}")
    print(f"  jneuron, counting='contract':             {t_contract:8.2f} s   {t_contract / t_floor:.2f}x floor")
    if not args.skip_numpy:
        t_numpy, numpy_counts, measures = run_numpy(stream)
        agree = bool(np.array_equal(numpy_counts.astype(np.int64), info.counts)
                     and np.allclose(measures["mutual_information"], info.mutual_information, rtol=1e-9, atol=1e-12))
        results["seconds"]["numpy"] = t_numpy
        results["ratio_numpy_to_jneuron"] = t_numpy / t_jneuron
        results["numpy_agrees"] = agree
        print(f"  numpy (BLAS, counts + class sums):        {t_numpy:8.2f} s   {t_numpy / t_jneuron:.2f}x jneuron"
              f"   agrees: {agree}")
    path = atomic_write_text(RESULTS / "information.json", json.dumps(results, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
