"""All information measures of every neuron: jneuron vs the floor vs hand-written numpy, on one stream.

    python bench/information.py                  # issue size: 1,000,000 tokens x 4,096 neurons x 45 classes
    python bench/information.py --tokens 65536   # a quicker run

The activations are streamed in chunks of 8,192 tokens generated on the fly (a few random base chunks,
recycled, with fresh random labels per chunk), so the run needs about 1 GiB whatever the token count.
The time spent generating chunks is measured inside the generator and subtracted from every contender.

- jneuron: ``jn.neuron_information`` with 1-bit quantization (``x > 0.5``): exact joint counts, entropy,
  mutual information, KL selectivity and class selectivity (class means), rankings included, with the
  backend's default counting (the host BLAS on CPU); then ``"uniform"`` and ``"quantile"`` bins.
- physical floor (measured in the same run, ``bench/_common.py``): max(arithmetic / numpy's float32 GEMM
  rate, bytes / read bandwidth). Arithmetic: per counting pass one float32 contraction of the one-hot
  labels with each bin edge's 0/1 indicators and one with the activations (class sums), 2 n d c flops
  each; bytes: the activations once per pass (uniform bins: 2 passes, quantile bins: 3).
- numpy: what a user would write: per chunk ``onehot.T @ (x > 0.5)`` and ``onehot.T @ x`` with BLAS, then
  the measures from the totals.

Prints ratios and writes bench/results/information.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import jneuron as jn
from jneuron.kernels import information as kinfo

sys.path.insert(0, str(Path(__file__).parent))
from _common import described_machine, floor_seconds, floors, load, ratio_line, write_results  # noqa: E402


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


def run_jneuron(stream: Chunks, **options) -> tuple[float, jn.NeuronInformation]:
    stream.generating = 0.0
    start = time.perf_counter()
    info = jn.neuron_information(stream, classes=stream.classes, chunk_tokens=stream.chunk, **options)
    rankings = info.rankings()
    assert len(rankings) == 4
    return time.perf_counter() - start - stream.generating, info


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


def best(fn, repeats: int) -> tuple[float, list[float], object]:
    """Min of ``repeats`` timed calls of ``fn() -> (seconds, result)``, with all times and the last result."""
    times, out = [], None
    for _ in range(repeats):
        seconds, out = fn()
        times.append(seconds)
    return min(times), times, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--neurons", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=45)
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--bins", type=int, default=4, help="bins of the uniform and quantile runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--binned-tokens", type=int, default=None,
                        help="tokens of the uniform and quantile runs (default: --tokens)")
    parser.add_argument("--skip-numpy", action="store_true", help="leave out the numpy baseline")
    args = parser.parse_args()
    n, d, c, b = args.tokens, args.neurons, args.classes, args.bins
    nb = args.binned_tokens or n
    streams = {"threshold": Chunks(n, d, c, args.chunk), "uniform": Chunks(nb, d, c, args.chunk),
               "quantile": Chunks(nb, d, c, args.chunk)}
    stream = streams["threshold"]
    limits = floors()
    # the unavoidable work: read the activations once per pass; per pass that counts, one float32
    # contraction of the one-hot labels with each bin edge's 0/1 indicators (the counts) and one with the
    # activations (the class sums): 2 n d c flops each. Uniform bins without a range need one more read
    # (min/max), quantile bins two more (min/max, then the fine histograms that place the edges).
    cases = {
        "threshold": ({"threshold": 0.5}, floor_seconds(flops=2 * 2.0 * n * d * c, bytes_read=4 * n * d,
                                                         limits=limits)),
        "uniform": ({"quantize": "uniform", "bins": b},
                    floor_seconds(flops=b * 2.0 * nb * d * c, bytes_read=2 * 4 * nb * d, limits=limits)),
        "quantile": ({"quantize": "quantile", "bins": b},
                     floor_seconds(flops=b * 2.0 * nb * d * c, bytes_read=3 * 4 * nb * d, limits=limits)),
    }
    warm = Chunks(2 * args.chunk, d, c, args.chunk)
    for options, _ in cases.values():  # compile on the chunk shape
        jn.neuron_information(warm, classes=c, chunk_tokens=args.chunk, **options)
    results = {"size": {"tokens": n, "binned_tokens": nb, "neurons": d, "classes": c, "chunk": args.chunk,
                        "bins": b},
               "machine": described_machine(), "floors_before": limits, "contenders": {}}
    print(f"Information measures, {n:,} tokens x {d:,} neurons x {c} classes, chunks of {args.chunk:,}; "
          f"{results['machine']['cpu']}, BLAS {results['machine']['blas']}")
    print(f"  floors now: GEMM {limits['gemm_flops'] / 1e9:.0f} GFLOP/s, read {limits['read_bytes_per_s'] / 1e9:.1f} "
          f"GB/s (load {limits['load']})")
    infos = {}
    for name, (options, floor) in cases.items():
        seconds, times, info = best(lambda: run_jneuron(streams[name], **options), args.repeats)
        infos[name] = info
        results["contenders"][f"jneuron {name}"] = {"seconds": seconds, "all_seconds": times, "load": load(),
                                                     "floor": floor, "over_floor": seconds / floor["floor_s"]}
        print(ratio_line(f"jneuron, {name}" + ("" if name == "threshold" else f" {b} bins, {nb:,} tokens"), seconds, floor,
                         load_avg=load()))
    if not args.skip_numpy:
        seconds, times, (numpy_counts, measures) = best(
            lambda: (lambda r: (r[0], (r[1], r[2])))(run_numpy(stream)), args.repeats)
        floor = cases["threshold"][1]
        info = infos["threshold"]
        agree = bool(np.array_equal(numpy_counts.astype(np.int64), info.counts)
                     and np.allclose(measures["mutual_information"], info.mutual_information, rtol=1e-9, atol=1e-12))
        results["contenders"]["numpy baseline (BLAS one-hot products), threshold"] = {
            "seconds": seconds, "all_seconds": times, "load": load(), "floor": floor,
            "over_floor": seconds / floor["floor_s"], "counts_equal_jneuron": agree}
        results["baseline_over_jneuron_threshold"] = seconds / results["contenders"]["jneuron threshold"]["seconds"]
        print(ratio_line("numpy baseline, threshold", seconds, floor, load_avg=load(),
                         baseline_s=None) + f"   counts equal jneuron's: {agree}")
        print(f"  baseline / jneuron (threshold) = {results['baseline_over_jneuron_threshold']:.2f}x")
    results["floors_after"] = floors()
    print(f"  floors after: GEMM {results['floors_after']['gemm_flops'] / 1e9:.0f} GFLOP/s, read "
          f"{results['floors_after']['read_bytes_per_s'] / 1e9:.1f} GB/s (load {results['floors_after']['load']})")
    print(f"wrote {write_results('information', results)}")


if __name__ == "__main__":
    main()
