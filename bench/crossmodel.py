"""MaxCorr across models: jneuron vs its physical floor vs np.corrcoef + block maxima.

    python bench/crossmodel.py                 # issue size: 4 x 1,024 neurons x 100,000 tokens
    python bench/crossmodel.py --memory 8 4096 50000   # ... and the peak-memory case in a fresh process
    python bench/crossmodel.py --small         # a quick run at small sizes

The floor (bench/_common.py, measured right before and after jneuron in the same run) is
max(arithmetic / numpy's float32 GEMM rate, bytes / read bandwidth), the arithmetic being the
cross-model blocks only (models choose 2 products of width x width over all tokens) and the bytes the
input read once.

Prints ratios and writes bench/results/crossmodel.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import numpy as np
import psutil

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _common import (bracketed, described_machine, floor_seconds, load, peak_rss_bytes, ratio_line,  # noqa: E402
                     rss_bytes, run_child, timed, write_results)

import jneuron as jn  # noqa: E402

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


def speed(models: int, width: int, tokens: int, *, repeats: int = 3, float64_baseline: bool = True) -> dict:
    data = make_models(models, width, tokens)
    # compile once on a slice with the same chunk shape, so the timed run measures the computation
    chunk = jn.streaming.passes.default_chunk_tokens(models * width, tokens)
    jn.maxcorr([m[: 2 * chunk] for m in data], chunk_tokens=chunk)
    # the unavoidable work: the cross-model blocks (models choose 2 of them, width x width each) over all
    # tokens, and reading the input once
    pairs = models * (models - 1) // 2
    run = bracketed(lambda: jn.maxcorr(data, chunk_tokens=chunk), repeats=repeats)
    floor = floor_seconds(flops=2.0 * tokens * pairs * width**2, bytes_read=models * width * tokens * 4,
                          limits=run["limits"])
    ranking = jn.maxcorr(data, chunk_tokens=chunk)
    joined = np.concatenate(data, axis=1)
    del data

    def baseline(dtype) -> tuple[float, float, float]:
        """np.corrcoef of the concatenated matrix, then block maxima: seconds, max |score difference|, load."""
        t_corr, corr = timed(lambda: np.corrcoef(joined, rowvar=False, dtype=dtype))
        t_blocks, scores = timed(lambda: block_maxima(corr, [width] * models))
        return t_corr + t_blocks, float(np.max(np.abs(scores - ranking.scores))), load()

    # np.corrcoef computes in float64 unless told otherwise; it needs a float64 copy of the input
    enough = float64_baseline and psutil.virtual_memory().available > 2.5 * joined.nbytes
    t_baseline, error, load64 = baseline(np.float64) if enough else (float("nan"), float("nan"), None)
    t_baseline32, error32, load32 = baseline(np.float32)
    return {
        "models": models, "width": width, "tokens": tokens, "chunk_tokens": chunk,
        "jneuron_s": run["seconds"], "jneuron_all_s": run["all_seconds"], "jneuron_load": run["load"],
        "floor": floor, "jneuron_over_floor": run["seconds"] / floor["floor_s"],
        "floors_before": run["floors_before"], "floors_after": run["floors_after"],
        "baseline_s": t_baseline, "baseline_load": load64, "baseline_float32_s": t_baseline32,
        "baseline_float32_load": load32, "baseline_over_jneuron": t_baseline / run["seconds"],
        "baseline_float32_over_jneuron": t_baseline32 / run["seconds"],
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
                        help="speed case size (default 4 1024 100000)")
    parser.add_argument("--memory", nargs=3, type=int, metavar=("MODELS", "WIDTH", "TOKENS"),
                        help="also run the peak-memory case at this size in a fresh process (issue size: "
                             "8 4096 50000, about 15 minutes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-float64-baseline", action="store_true", help="leave out np.corrcoef in float64")
    parser.add_argument("--memory-case", nargs=3, type=int, metavar=("MODELS", "WIDTH", "TOKENS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        print(json.dumps(memory_case(*args.memory_case)))
        return
    speed_size = tuple(args.speed or ((4, 256, 20_000) if args.small else (4, 1024, 100_000)))
    results = {"machine": described_machine(),
               "speed": speed(*speed_size, repeats=args.repeats, float64_baseline=not args.no_float64_baseline)}
    s = results["speed"]
    limits = s["floors_before"]
    print(f"MaxCorr {s['models']} x {s['width']} neurons x {s['tokens']:,} tokens, float32; "
          f"{results['machine']['cpu']}, BLAS {results['machine']['blas']}")
    print(f"  floors: GEMM {limits['gemm_flops'] / 1e9:.0f} -> {s['floors_after']['gemm_flops'] / 1e9:.0f} GFLOP/s, "
          f"read {limits['read_bytes_per_s'] / 1e9:.1f} GB/s (load {limits['load']} -> {s['floors_after']['load']})")
    print(ratio_line("jneuron jn.maxcorr", s["jneuron_s"], s["floor"], load_avg=s["jneuron_load"],
                     baseline_s=s["baseline_s"]) + "   (target <= 1.3x)")
    if s["baseline_load"] is not None:
        print(ratio_line("np.corrcoef (float64) + maxima", s["baseline_s"], s["floor"], load_avg=s["baseline_load"]))
    print(ratio_line("np.corrcoef float32 + maxima", s["baseline_float32_s"], s["floor"],
                     load_avg=s["baseline_float32_load"]))
    print(f"  max |score difference| vs baseline: {s['max_abs_score_difference_vs_baseline']:.1e} "
          f"(float32 baseline: {s['max_abs_score_difference_vs_float32_baseline']:.1e})")
    if args.memory:
        results["memory"] = m = run_child([__file__, "--memory-case", *map(str, args.memory)])
        print(f"Peak memory {m['models']} x {m['width']} x {m['tokens']:,}: input {m['input_gib']:.2f} GiB, "
              f"peak RSS {m['peak_rss_gib']:.2f} GiB (input + {m['peak_after_input_gib']:.2f} GiB; target < +1 GiB;"
              f" naive route ~{m['naive_full_matrix_gib']:.1f} GiB), {m['seconds']:.1f} s")
    print(f"wrote {write_results('crossmodel' + ('-small' if args.small else ''), results)}")


if __name__ == "__main__":
    main()
