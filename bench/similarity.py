"""Benchmark: CCA/SVCCA from streamed co-moments vs the classic numpy float64 route, and vs the floor.

Part 1 (two layers of 1,024 neurons x 20,000 tokens, float32 activations):
  - jneuron: ``jn.cca(x, y)`` (one streamed pass, float64 host factorizations), and the same call with
    its canonical directions read (they are computed on first access);
  - baseline: the google/svcca route in numpy float64 (joint ``np.cov``, pseudo-inverse square roots of
    the diagonal blocks, SVD of the whitened cross-covariance), which is also the accuracy reference;
  - physical floor (bench/_common.py, measured right before and after jneuron): max(arithmetic / numpy's
    float32 GEMM rate, bytes / read bandwidth), the arithmetic being two half Grams and the cross block;
    for reference, XLA's centred gram product of both layers side by side.
Part 2 (12 layers x 768 neurons x 100,000 tokens): the layer-by-layer SVCCA matrix, streamed in one
pass, against its physical floor (each layer's half Gram and every pair's cross block at the measured
GEMM rate) and, for reference, XLA's gram product of all layers (chunked like the stream).

Usage: ``python bench/similarity.py [--quick]``; writes ``bench/results/similarity.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import (bracketed, described_machine, floor_seconds, floors, load, peak_rss_bytes,  # noqa: E402
                     ratio_line, rss_bytes)

import jneuron as jn
from jneuron.data.atomic import atomic_write_text
from jneuron.streaming.passes import default_chunk_tokens

HIGHEST = jax.lax.Precision.HIGHEST


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, times


def google_cca(acts1: np.ndarray, acts2: np.ndarray) -> np.ndarray:
    """The classic route (google/svcca cca_core.get_cca_similarity, epsilon=0), acts as (neurons, tokens)."""
    numx = acts1.shape[0]
    sigma = np.cov(np.concatenate((acts1, acts2), axis=0))
    sigma_xx, sigma_xy = sigma[:numx, :numx], sigma[:numx, numx:]
    sigma_yx, sigma_yy = sigma[numx:, :numx], sigma[numx:, numx:]
    xmax, ymax = np.max(np.abs(sigma_xx)), np.max(np.abs(sigma_yy))
    sigma_xx, sigma_yy = sigma_xx / xmax, sigma_yy / ymax
    sigma_xy, sigma_yx = sigma_xy / np.sqrt(xmax * ymax), sigma_yx / np.sqrt(xmax * ymax)

    def invsqrt(matrix):
        w, v = np.linalg.eigh(np.linalg.pinv(matrix))
        return v @ np.diag(np.sqrt(np.maximum(w, 0))) @ v.T

    arr = invsqrt(sigma_xx) @ sigma_xy @ invsqrt(sigma_yy)
    _, s, _ = np.linalg.svd(arr)
    return np.abs(s)


def make_pair(tokens: int, width: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(tokens, 256)).astype(np.float32)
    x = z @ rng.normal(size=(256, width)).astype(np.float32) + rng.normal(size=(tokens, width)).astype(np.float32)
    y = np.tanh(z @ rng.normal(size=(256, width)).astype(np.float32) / 8) + 0.3 * rng.normal(
        size=(tokens, width)).astype(np.float32)
    return x + np.float32(3.0), y


@jax.jit
def _centred_gram(chunk):
    c = chunk - chunk.mean(0)
    return jnp.matmul(c.T, c, precision=HIGHEST)


@jax.jit
def _gram_step(acc, chunk):
    return acc + jnp.matmul(chunk.T, chunk, precision=HIGHEST)


def part1(tokens: int, width: int, repeats: int) -> dict:
    x, y = make_pair(tokens, width)
    _, first = timed(lambda: jn.cca(x, y), 1)  # includes compiling the streamed update
    run = bracketed(lambda: jn.cca(x, y).rho, repeats=repeats)
    result = jn.cca(x, y)
    # the unavoidable work: two half Grams (the BLAS's syrk) and the cross block, float32, and the input read once
    floor = floor_seconds(flops=4.0 * tokens * width**2, bytes_read=2 * tokens * width * 4, limits=run["limits"])
    # the directions are computed when first read: time a call that reads them too
    _, directions_times = timed(lambda: jn.cca(x, y).directions_x, repeats)
    # the baseline includes the user's conversion to google/svcca's (neurons, tokens) float64 layout
    reference, base_times = timed(lambda: google_cca(x.T.astype(np.float64), y.T.astype(np.float64)), repeats)
    base_load = load()
    joint = jnp.asarray(np.hstack([x, y]))
    _centred_gram(joint).block_until_ready()
    _, xla_times = timed(lambda: _centred_gram(joint).block_until_ready(), repeats)
    diff = float(np.max(np.abs(result.rho - reference[: len(result.rho)])))
    jn_t, base_t, xla_t, dir_t = run["seconds"], min(base_times), min(xla_times), min(directions_times)
    return {"tokens": tokens, "width": width, "jneuron_s": jn_t, "jneuron_all_s": run["all_seconds"],
            "jneuron_load": run["load"], "floor": floor, "jneuron_over_floor": jn_t / floor["floor_s"],
            "floors_before": run["floors_before"], "floors_after": run["floors_after"],
            "jneuron_first_call_s": first[0], "jneuron_with_directions_s": dir_t,
            "speedup_with_directions": base_t / dir_t, "baseline_s": base_t, "baseline_load": base_load,
            "xla_centred_gram_s": xla_t, "speedup_vs_baseline": base_t / jn_t,
            "max_abs_rho_diff": diff, "mean_rho": result.mean, "kept": [result.kept_x, result.kept_y]}


def make_layers(tokens: int, layers: int, width: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(tokens, 64)).astype(np.float32)
    out = {}
    for i in range(layers):
        mix = (rng.normal(size=(h.shape[1], width)) / np.sqrt(h.shape[1])).astype(np.float32)
        layer = np.tanh(h @ mix) + np.float32(0.1) * rng.standard_normal((tokens, width), np.float32)
        out[f"layer{i:02d}"] = layer
        h = layer
    return out


def part2(tokens: int, layers: int, width: int) -> dict:
    data = make_layers(tokens, layers, width)
    resting = rss_bytes()
    before = floors()
    start = time.perf_counter()
    matrix = jn.similarity_matrix(data, metric="svcca", keep=0.99)
    jn_t = time.perf_counter() - start
    jn_load, after = load(), floors()
    limits = {k: max(before[k], after[k]) for k in ("gemm_flops", "read_bytes_per_s")}
    # the unavoidable work: each layer's half Gram and every pair's cross block (float32), input read once
    pairs = layers * (layers - 1) // 2
    floor = floor_seconds(flops=(layers + 2 * pairs) * tokens * width**2, bytes_read=layers * tokens * width * 4,
                          limits=limits)
    peak = peak_rss_bytes()  # before the floor's own (tokens x all layers) gram
    chunk = default_chunk_tokens(layers * width, tokens)  # the chunks jneuron streams
    names = list(data)
    start = time.perf_counter()
    acc = jnp.zeros((layers * width, layers * width), jnp.float32)
    for s in range(0, tokens, chunk):
        block = np.concatenate([data[n][s : s + chunk] for n in names], axis=1)
        if block.shape[0] < chunk:
            block = np.pad(block, ((0, chunk - block.shape[0]), (0, 0)))
        acc = _gram_step(acc, block)
    acc.block_until_ready()
    floor_t = time.perf_counter() - start
    return {"tokens": tokens, "layers": layers, "width": width, "chunk_tokens": chunk, "jneuron_s": jn_t,
            "jneuron_load": jn_load, "floor": floor, "jneuron_over_floor": jn_t / floor["floor_s"],
            "floors_before": before, "floors_after": after, "xla_full_gram_s": floor_t,
            "input_gib": sum(v.nbytes for v in data.values()) / 2**30, "resting_rss_gib": resting / 2**30,
            "peak_rss_gib": peak / 2**30,
            "svcca_adjacent": [float(matrix.values[i, i + 1]) for i in range(layers - 1)],
            "kept": matrix.kept_a.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    parser.add_argument("--parts", nargs="+", type=int, default=[1, 2], choices=(1, 2),
                        help="which parts to run (results of the others are kept from the last run)")
    args = parser.parse_args()
    sizes = ((2000, 128, 3), (5000, 4, 64)) if args.quick else ((20000, 1024, 3), (100000, 12, 768))
    (t1, w1, reps), (t2, l2, w2) = sizes
    path = Path(__file__).parent / "results" / ("similarity_quick.json" if args.quick else "similarity.json")
    results = json.loads(path.read_text()) if path.is_file() else {}
    run = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": described_machine(),
           "jneuron": jn.__version__}
    print(f"{run['machine']['cpu']}, BLAS {run['machine']['blas']}")
    if 1 in args.parts:
        results["cca_two_layers"] = p1 = {**run, **part1(t1, w1, reps)}
        f = p1["floors_before"]
        print(f"CCA {w1}+{w1} neurons x {t1:,} tokens (floors: GEMM {f['gemm_flops'] / 1e9:.0f} GFLOP/s, read "
              f"{f['read_bytes_per_s'] / 1e9:.1f} GB/s, load {f['load']})")
        print(ratio_line("jneuron jn.cca (correlations)", p1["jneuron_s"], p1["floor"], load_avg=p1["jneuron_load"],
                         baseline_s=p1["baseline_s"]) + "   (target <= 1.3x)")
        print(ratio_line("google/svcca route, numpy float64", p1["baseline_s"], p1["floor"],
                         load_avg=p1["baseline_load"]))
        print(f"  reading the directions too: {p1['jneuron_with_directions_s']:.3f} s; max |d rho| "
              f"{p1['max_abs_rho_diff']:.2e}", flush=True)
    if 2 in args.parts:
        results["svcca_matrix"] = p2 = {**run, **part2(t2, l2, w2)}
        print(f"SVCCA matrix {l2} layers x {w2} neurons x {t2:,} tokens")
        print(ratio_line("jneuron similarity_matrix", p2["jneuron_s"], p2["floor"], load_avg=p2["jneuron_load"])
              + f"   (XLA full gram: {p2['xla_full_gram_s']:.1f} s)")
    atomic_write_text(path, json.dumps(results, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
