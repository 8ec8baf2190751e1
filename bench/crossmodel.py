"""MaxCorr across models: jneuron vs the floor (one gram product) vs np.corrcoef + block maxima.

    python bench/crossmodel.py                 # issue sizes: 4 x 1,024 neurons x 200,000 tokens, then the
                                               # peak-memory case 8 x 4,096 x 50,000 in a fresh process
    python bench/crossmodel.py --small         # a quick run at small sizes

Prints ratios and writes bench/results/crossmodel.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import psutil

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _common import machine, peak_rss_bytes, rss_bytes, run_child, timed, write_results  # noqa: E402

import jneuron as jn  # noqa: E402

HIGHEST = jax.lax.Precision.HIGHEST


def make_models(models: int, width: int, tokens: int, seed: int = 0) -> list[np.ndarray]:
    """Random float32 activations with a shared latent part and a 1e2 offset (no float64 temporaries)."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((tokens, 8), dtype=np.float32)
    out = []
    for _ in range(models):
        x = rng.standard_normal((tokens, width), dtype=np.float32)
        x += latent @ rng.standard_normal((8, width), dtype=np.float32)
        x += np.float32(100.0)
        out.append(x)
    return out


def block_maxima(corr: np.ndarray, widths: list[int]) -> np.ndarray:
    """The baseline's MaxCorr scores from a full correlation matrix."""
    starts = np.cumsum([0] + widths)
    best = np.full((corr.shape[0], len(widths)), -np.inf)
    for m in range(len(widths)):
        best[:, m] = np.abs(corr[:, starts[m] : starts[m + 1]]).max(axis=1)
        best[starts[m] : starts[m + 1], m] = -np.inf
    return best.max(axis=1)


def speed(models: int, width: int, tokens: int) -> dict:
    data = make_models(models, width, tokens)
    # compile once on a slice with the same chunk shape, so the timed run measures the computation
    chunk = jn.streaming.passes.default_chunk_tokens(models * width, tokens)
    jn.maxcorr([m[: 2 * chunk] for m in data], chunk_tokens=chunk)
    t_jneuron, ranking = timed(lambda: jn.maxcorr(data, chunk_tokens=chunk))

    joined = np.concatenate(data, axis=1)
    del data
    device = jnp.asarray(joined)
    gram = jax.jit(lambda x: jnp.matmul(x.T, x, precision=HIGHEST)).lower(device).compile()
    t_floor, _ = timed(lambda: gram(device))
    del device, gram

    def baseline(dtype) -> tuple[float, float]:
        """np.corrcoef of the concatenated matrix, then block maxima: seconds, max |score difference|."""
        t_corr, corr = timed(lambda: np.corrcoef(joined, rowvar=False, dtype=dtype))
        t_blocks, scores = timed(lambda: block_maxima(corr, [width] * models))
        return t_corr + t_blocks, float(np.max(np.abs(scores - ranking.scores)))

    # np.corrcoef computes in float64 unless told otherwise; it needs a float64 copy of the input
    enough = psutil.virtual_memory().available > 2.5 * joined.nbytes
    t_baseline, error = baseline(np.float64) if enough else (float("nan"), float("nan"))
    t_baseline32, error32 = baseline(np.float32)
    flops_floor = 2.0 * tokens * (models * width) ** 2
    return {
        "models": models, "width": width, "tokens": tokens,
        "jneuron_s": t_jneuron, "floor_s": t_floor, "baseline_s": t_baseline, "baseline_float32_s": t_baseline32,
        "jneuron_over_floor": t_jneuron / t_floor, "baseline_over_jneuron": t_baseline / t_jneuron,
        "baseline_float32_over_jneuron": t_baseline32 / t_jneuron,
        "floor_gflops": flops_floor / t_floor / 1e9,
        "max_abs_score_difference_vs_baseline": error, "max_abs_score_difference_vs_float32_baseline": error32,
    }


def memory_case(models: int, width: int, tokens: int) -> dict:
    """Run in a fresh process: peak resident memory of MaxCorr against the input's size."""
    data = make_models(models, width, tokens)
    input_bytes = sum(m.nbytes for m in data)
    before, resting = peak_rss_bytes(), rss_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jn.DeadNeuronWarning)
        t, _ = timed(lambda: jn.maxcorr(data))
    peak = peak_rss_bytes()
    return {
        "models": models, "width": width, "tokens": tokens, "seconds": t,
        "input_gib": input_bytes / 2**30, "peak_rss_gib": peak / 2**30,
        "peak_after_input_gib": (peak - input_bytes) / 2**30, "rss_before_gib": before / 2**30,
        "resting_rss_gib": resting / 2**30, "maxcorr_added_gib": (peak - resting) / 2**30,
        "naive_full_matrix_gib": (models * width) ** 2 * 8 / 2**30 + input_bytes * 2 / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="small sizes, for a quick check")
    parser.add_argument("--speed", nargs=3, type=int, metavar=("MODELS", "WIDTH", "TOKENS"),
                        help="speed case size (default 4 1024 200000)")
    parser.add_argument("--memory", nargs=3, type=int, metavar=("MODELS", "WIDTH", "TOKENS"),
                        help="peak-memory case size (default 8 4096 50000)")
    parser.add_argument("--memory-case", nargs=3, type=int, metavar=("MODELS", "WIDTH", "TOKENS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        print(json.dumps(memory_case(*args.memory_case)))
        return
    speed_size, memory_size = ((4, 256, 20_000), (8, 512, 10_000)) if args.small else (
        (4, 1024, 200_000), (8, 4096, 50_000))
    speed_size, memory_size = tuple(args.speed or speed_size), tuple(args.memory or memory_size)
    results = {"machine": machine(), "speed": speed(*speed_size)}
    results["memory"] = run_child([__file__, "--memory-case", *map(str, memory_size)])
    s, m = results["speed"], results["memory"]
    print(f"MaxCorr {s['models']} x {s['width']} neurons x {s['tokens']:,} tokens, float32, {machine()['cpu']}")
    print(f"  jneuron            {s['jneuron_s']:8.2f} s")
    print(f"  floor (X^T X)      {s['floor_s']:8.2f} s   ({s['floor_gflops']:.0f} GFLOP/s)   "
          f"jneuron / floor = {s['jneuron_over_floor']:.2f}x (target <= 1.0)")
    print(f"  np.corrcoef+max    {s['baseline_s']:8.2f} s   (float64, numpy's default)   "
          f"baseline / jneuron = {s['baseline_over_jneuron']:.1f}x (target >= 3)")
    print(f"  same in float32    {s['baseline_float32_s']:8.2f} s   "
          f"baseline / jneuron = {s['baseline_float32_over_jneuron']:.1f}x")
    print(f"  max |score difference| vs baseline: {s['max_abs_score_difference_vs_baseline']:.1e} "
          f"(float32 baseline: {s['max_abs_score_difference_vs_float32_baseline']:.1e})")
    print(f"Peak memory {m['models']} x {m['width']} x {m['tokens']:,}: input {m['input_gib']:.2f} GiB, "
          f"peak RSS {m['peak_rss_gib']:.2f} GiB (input + {m['peak_after_input_gib']:.2f} GiB; target < +1 GiB; "
          f"naive route ~{m['naive_full_matrix_gib']:.1f} GiB), {m['seconds']:.1f} s")
    print(f"wrote {write_results('crossmodel' + ('-small' if args.small else ''), results)}")


if __name__ == "__main__":
    main()
