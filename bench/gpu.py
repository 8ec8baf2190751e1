"""Accelerator benchmark: jneuron's streamed kernels against the device's own measured ceilings.

In one run it measures the ceilings (dense matmul throughput in float32 ``precision="highest"``, float32
default precision (TF32 on NVIDIA GPUs) and bfloat16 inputs; memory bandwidth from a large read+write
pass), then the workloads, each reported as achieved throughput and as a fraction of the roofline
``min(matmul peak, arithmetic intensity x bandwidth)``:

* co-moments: the streamed update (centre, ``X^T X`` with ``highest``, compensated Chan merge) over
  ``tokens x width`` (default 1,000,000 x 4,096), chunks already on the device;
* MaxCorr: every cross-model block of ``models x model_width`` neurons (default 8 x 4,096) over the same
  tokens, in as many passes as ``--memory-budget`` needs, then the tile reduction (pure JAX and the fused
  Pallas kernel, bandwidth-bound);
* SVCCA matrix: the streamed blocks of a layer-by-layer similarity matrix, ``layers`` x ``layer_width``
  (default 12 x 768; each layer against itself and every later layer), the part that scales with tokens;
* probes: one elastic-net probe trained for an epoch (batch 32, Adam) on ``tokens x width x classes``
  (default 1,000,000 x 4,096 x 45), and the 16-setting penalty grid on the same batches;
* information: integer joint counts of 1-bit quantized neurons with the labels, ``tokens x info_width``
  (default 1,000,000 x 16,384, 45 classes);
* precision: the same cross-product from float32 ``highest``, float32 default precision (TF32) and
  bfloat16 inputs, with the largest correlation error of each against float64 (numpy, on a subsample).

The floor for each workload is the ceiling itself (a bare matmul or memory pass on the same device). Data
is generated on the device, so host transfer is excluded. ``--small`` runs CPU-sized problems (for
checking the script; on CPU, Pallas runs in interpret mode and is timed only for completeness).

    python bench/gpu.py            # on a GPU: writes bench/results/gpu.json and the table as gpu.md
    python bench/gpu.py --small    # anywhere: writes bench/results/gpu_small.json (.md); or
    JNEURON_BENCH_SMALL=1 make bench-gpu

Needs only jax, flax, optax, chex and ``pip install --no-deps -e .`` (no other package, no index).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_time  # noqa: E402

from jneuron.crossmodel.maxcorr import plan_passes
from jneuron.data.atomic import atomic_write_text
from jneuron.kernels import information as kinfo
from jneuron.kernels import maxcorr as kmax
from jneuron.kernels import maxcorr_pallas as kpallas
from jneuron.kernels import moments as kmoments
from jneuron.kernels.moments import Tile
from jneuron.probing import probe as jprobe
from jneuron.streaming import blocks as jblocks

HIGHEST, DEFAULT = jax.lax.Precision.HIGHEST, jax.lax.Precision.DEFAULT
SIZES = {
    "full": {"tokens": 1_000_000, "chunk": 65536, "width": 4096, "models": 8, "model_width": 4096,
             "matmul": 8192, "stream_bytes": 2**30, "accuracy_tokens": 65536, "layers": 12, "layer_width": 768,
             "classes": 45, "probe_tokens": 1_000_000, "info_width": 16384, "info_chunk": 16384},
    "small": {"tokens": 32768, "chunk": 8192, "width": 256, "models": 4, "model_width": 96,
              "matmul": 1024, "stream_bytes": 2**26, "accuracy_tokens": 8192, "layers": 4, "layer_width": 64,
              "classes": 5, "probe_tokens": 8192, "info_width": 512, "info_chunk": 4096},
}



def ceilings(n: int, stream_bytes: int, repeats: int) -> dict:
    """Measured matmul throughput (flop/s) per input precision, and memory bandwidth (bytes/s)."""
    keys = jax.random.split(jax.random.key(0), 3)
    a = jax.random.normal(keys[0], (n, n), jnp.float32)
    b = jax.random.normal(keys[1], (n, n), jnp.float32)
    modes = {
        "f32_highest": jax.jit(lambda x, y: jnp.matmul(x, y, precision=HIGHEST)),
        "f32_default": jax.jit(lambda x, y: jnp.matmul(x, y, precision=DEFAULT)),
        "bf16": jax.jit(lambda x, y: jnp.matmul(x.astype(jnp.bfloat16), y.astype(jnp.bfloat16),
                                                preferred_element_type=jnp.float32)),
    }
    result = {f"matmul_{name}_flops": 2 * n**3 / best_time(lambda f=f: f(a, b).block_until_ready(), repeats)
              for name, f in modes.items()}
    big = jax.random.normal(keys[2], (stream_bytes // 4,), jnp.float32)
    scale = jax.jit(lambda x: x * 1.5)
    result["bandwidth_bytes"] = 2 * stream_bytes / best_time(lambda: scale(big).block_until_ready(), repeats)
    return result


def roofline(flops: float, bytes_moved: float, seconds: float, peak_flops: float, bandwidth: float) -> dict:
    """Achieved throughput and its fraction of ``min(peak, intensity x bandwidth)``."""
    attainable = min(peak_flops, flops / bytes_moved * bandwidth)
    return {"seconds": seconds, "tflops": flops / seconds / 1e12, "gbytes_s": bytes_moved / seconds / 1e9,
            "intensity": flops / bytes_moved, "roofline_fraction": flops / seconds / attainable}


def stream_comoments(chunk: jax.Array, steps: int, tiles: tuple[Tile, ...]) -> kmoments.Stats:
    """``steps`` updates of streamed co-moments with the same device-resident chunk (timing only)."""
    stats = kmoments.init(chunk.shape[1], tiles, jnp.float32)
    for _ in range(steps):
        stats = kmoments.update(stats, chunk, chunk.shape[0], tiles)
    return jax.block_until_ready(stats)


def comoments_workload(sizes: dict, ceiling: dict, repeats: int) -> dict:
    width, chunk_rows = sizes["width"], sizes["chunk"]
    steps = sizes["tokens"] // chunk_rows
    chunk = jax.random.normal(jax.random.key(1), (chunk_rows, width), jnp.float32) + 10.0
    tiles = (Tile(0, width, 0, width),)
    seconds = best_time(lambda: stream_comoments(chunk, steps, tiles), repeats)
    tokens = steps * chunk_rows
    flops = 2.0 * tokens * width * width
    peak, bandwidth = ceiling["matmul_f32_highest_flops"], ceiling["bandwidth_bytes"]
    return {"tokens": tokens, "width": width, **roofline(flops, 4.0 * tokens * width, seconds, peak, bandwidth)}


def maxcorr_workload(sizes: dict, ceiling: dict, repeats: int, memory_budget: int) -> dict:
    models, model_width, chunk_rows = sizes["models"], sizes["model_width"], sizes["chunk"]
    widths = (model_width,) * models
    width = models * model_width
    steps = sizes["tokens"] // chunk_rows
    chunk = jax.random.normal(jax.random.key(2), (chunk_rows, width), jnp.float32) + 10.0
    passes = plan_passes(widths, memory_budget)
    entries = sum((t.r1 - t.r0) * (t.c1 - t.c0) for tiles in passes for t in tiles)

    def accumulate_all():
        return [stream_comoments(chunk, steps, tiles) for tiles in passes]

    seconds = best_time(accumulate_all, repeats)
    tokens = steps * chunk_rows
    result = {"tokens": tokens, "models": models, "model_width": model_width, "passes": len(passes),
              "accumulate": roofline(2.0 * tokens * entries, 4.0 * tokens * width * len(passes), seconds,
                                     ceiling["matmul_f32_highest_flops"], ceiling["bandwidth_bytes"])}
    tile = passes[0][0]
    shape = (tile.r1 - tile.r0, tile.c1 - tile.c0)
    keys = jax.random.split(jax.random.key(3), 3)
    cross = kmoments.Pair(jax.random.normal(keys[0], shape), jnp.zeros(shape))
    inv_rows, inv_cols = jax.random.uniform(keys[1], shape[:1]), jax.random.uniform(keys[2], shape[1:])
    segments = tuple((s, s + model_width) for s in range(0, shape[1], model_width))
    interpret = jax.default_backend() == "cpu"
    kernels = {
        "jax": lambda: jax.block_until_ready(kmax.reduce_tile(cross, inv_rows, inv_cols, segments)),
        "pallas": lambda: jax.block_until_ready(
            kpallas.reduce_tile(cross, inv_rows, inv_cols, segments, interpret=interpret)),
    }
    want = kernels["jax"]()
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
               zip(jax.tree.leaves(kernels["pallas"]()), jax.tree.leaves(want)))
    moved = 8.0 * shape[0] * shape[1]  # hi and lo read once; 3 flops per entry (add, 2 scalings)
    result["tile_reduction"] = {"tile": list(shape), "pallas_equals_jax": same, "pallas_interpret": interpret}
    for name, fn in kernels.items():
        result["tile_reduction"][name] = roofline(3.0 * shape[0] * shape[1], moved, best_time(fn, repeats),
                                                   ceiling["matmul_f32_highest_flops"], ceiling["bandwidth_bytes"])
    return result


def svcca_workload(sizes: dict, ceiling: dict, repeats: int) -> dict:
    """The blocks a symmetric layer-by-layer matrix streams (each diagonal block its own tile, as jneuron does)."""
    layers, layer_width, chunk_rows = sizes["layers"], sizes["layer_width"], sizes["chunk"]
    width = layers * layer_width
    bounds = tuple((g * layer_width, (g + 1) * layer_width) for g in range(layers))
    tiles, _ = jblocks._plan([(i, j) for i in range(layers) for j in range(i, layers)], bounds)
    steps = sizes["tokens"] // chunk_rows
    chunk = jax.random.normal(jax.random.key(4), (chunk_rows, width), jnp.float32) + 1.0
    seconds = best_time(lambda: stream_comoments(chunk, steps, tiles), repeats)
    tokens = steps * chunk_rows
    entries = sum((t.r1 - t.r0) * (t.c1 - t.c0) for t in tiles)
    return {"tokens": tokens, "layers": layers, "layer_width": layer_width,
            **roofline(2.0 * tokens * entries, 4.0 * tokens * width, seconds, ceiling["matmul_f32_highest_flops"],
                       ceiling["bandwidth_bytes"])}


def probe_workload(sizes: dict, ceiling: dict, repeats: int) -> dict:
    """One probe for an epoch, and the 16-setting grid (4 x 4 penalties) on the same batches."""
    tokens, width, classes = sizes["probe_tokens"], sizes["width"], sizes["classes"]
    keys = jax.random.split(jax.random.key(5), 2)
    x = jax.random.normal(keys[0], (tokens, width), jnp.float32)
    y = jax.random.randint(keys[1], (tokens,), 0, classes)
    rows, valid = jprobe.batch_rows(tokens, 1, 32, seed=0)
    result = {"tokens": tokens, "width": width, "classes": classes, "batch_size": 32, "steps": int(rows.shape[0])}
    for name, settings in (("one_probe", 1), ("grid16", 16)):
        masks = jnp.ones((settings, width), jnp.float32)
        l1 = jnp.full((settings,), 1e-4, jnp.float32)

        def train(masks=masks, l1=l1):
            return jax.block_until_ready(jprobe._train(x, y, masks, l1, l1, rows, valid, classes=classes,
                                                       learning_rate=1e-3, squared=False, regression=False))

        train()
        seconds = best_time(train, repeats)
        flops = 4.0 * tokens * width * classes * settings  # forward and weight-gradient products
        moved = 4.0 * tokens * width + 6 * 4.0 * settings * classes * width * rows.shape[0]  # batches; Adam state
        result[name] = roofline(flops, moved, seconds, ceiling["matmul_f32_highest_flops"], ceiling["bandwidth_bytes"])
    result["grid16_over_one_probe"] = result["grid16"]["seconds"] / result["one_probe"]["seconds"]
    return result


def information_workload(sizes: dict, ceiling: dict, repeats: int) -> dict:
    """Integer joint counts (neuron, bit, class) of 1-bit codes, chunk by chunk, on device-resident chunks."""
    width, chunk_rows, classes = sizes["info_width"], sizes["info_chunk"], sizes["classes"]
    steps = sizes["tokens"] // chunk_rows
    keys = jax.random.split(jax.random.key(6), 2)
    codes = (jax.random.normal(keys[0], (chunk_rows, width)) > 0).astype(jnp.int32)
    labels = jax.random.randint(keys[1], (chunk_rows,), 0, classes)
    counts = jax.jit(partial(kinfo.joint_counts, bins=2, classes=classes))

    def run():
        total = counts(codes, labels, chunk_rows)
        for _ in range(steps - 1):
            total = total + counts(codes, labels, chunk_rows)
        return jax.block_until_ready(total)

    run()
    seconds = best_time(run, repeats)
    tokens = steps * chunk_rows
    return {"tokens": tokens, "width": width, "classes": classes,
            **roofline(2.0 * tokens * width * classes, 4.0 * tokens * width, seconds,
                       ceiling["matmul_f32_highest_flops"], ceiling["bandwidth_bytes"])}


def precision_workload(sizes: dict, ceiling: dict) -> dict:
    """Correlation error of each input precision against float64, on ``accuracy_tokens`` tokens."""
    rng = np.random.default_rng(4)
    tokens, width = sizes["accuracy_tokens"], sizes["width"]
    shared = rng.normal(size=(tokens, 8))
    x = (shared @ rng.normal(size=(8, width)) + rng.normal(size=(tokens, width)) + 10).astype(np.float32)
    x64 = x.astype(np.float64)
    centred64 = x64 - x64.mean(0)
    reference = _correlation(centred64.T @ centred64)
    centred = jnp.asarray(centred64.astype(np.float32))
    variants = {
        "f32_highest": lambda c: jnp.matmul(c.T, c, precision=HIGHEST),
        "f32_default": lambda c: jnp.matmul(c.T, c, precision=DEFAULT),
        "bf16": lambda c: jnp.matmul(c.T.astype(jnp.bfloat16), c.astype(jnp.bfloat16),
                                     preferred_element_type=jnp.float32),
    }
    result = {name: {"max_abs_corr_error": float(np.abs(_correlation(np.asarray(jax.jit(f)(centred), np.float64))
                                                         - reference).max()),
                     "matmul_tflops": ceiling[f"matmul_{name}_flops"] / 1e12}
              for name, f in variants.items()}
    stats = kmoments.init(width, (Tile(0, width, 0, width),), jnp.float32)
    for start in range(0, tokens, sizes["chunk"]):
        part = jnp.asarray(x[start : start + sizes["chunk"]])
        stats = kmoments.update(stats, part, part.shape[0], (Tile(0, width, 0, width),))
    result["jneuron_stream_f32"] = {"max_abs_corr_error": float(np.abs(
        _correlation(kmoments.cross_value64(stats, 0)) - reference).max())}
    return result


def _correlation(cross: np.ndarray) -> np.ndarray:
    scale = np.sqrt(np.diag(cross))
    return cross / scale[:, None] / scale[None, :]


def table(results: dict) -> str:
    """One table: per method its time and the fractions of the matmul peak, the bandwidth and the roofline
    (float32 ``highest``); then the bare cross-product in each input precision with its accuracy lost."""
    ceiling = results["ceilings"]
    peak, bandwidth = ceiling["matmul_f32_highest_flops"], ceiling["bandwidth_bytes"]
    m, p = results["maxcorr"], results["probes"]
    rows = [("co-moments (centre, X^T X, Chan merge)", results["comoments"]),
            (f"MaxCorr blocks ({m['passes']} pass(es))", m["accumulate"]),
            ("MaxCorr tile reduction, JAX", m["tile_reduction"]["jax"]),
            ("MaxCorr tile reduction, Pallas", m["tile_reduction"]["pallas"]),
            ("SVCCA matrix blocks", results["svcca"]),
            ("probe, 1 epoch, batch 32", p["one_probe"]),
            ("probe grid, 16 settings", p["grid16"]),
            ("information joint counts, 1 bit", results["information"])]
    lines = [f"{results['device']} ({results['platform']}), {results['date']}; ceilings: "
             + ", ".join(f"{k[7:-6]} {v / 1e12:.2f} TFLOP/s" for k, v in ceiling.items() if k.endswith("_flops"))
             + f", bandwidth {bandwidth / 1e9:.0f} GB/s",
             "| method | input precision | seconds | TFLOP/s | GB/s | of matmul peak | of bandwidth | of roofline "
             "| max abs corr error vs float64 |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    stream_error = results["precision"]["jneuron_stream_f32"]["max_abs_corr_error"]
    for name, r in rows:
        error = f"{stream_error:.1e}" if name.startswith("co-moments") else ""
        lines.append(f"| {name} | f32 highest | {r['seconds']:.3f} | {r['tflops']:.2f} | {r['gbytes_s']:.0f} | "
                     f"{r['tflops'] * 1e12 / peak:.0%} | {r['gbytes_s'] * 1e9 / bandwidth:.0%} | "
                     f"{r['roofline_fraction']:.0%} | {error} |")
    labels = {"f32_highest": "f32 highest", "f32_default": "f32 default (TF32 on NVIDIA)", "bf16": "bf16"}
    for key, label in labels.items():
        r = results["precision"][key]
        lines.append(f"| bare X^T X, {results['sizes']['matmul']}-square peak | {label} | | {r['matmul_tflops']:.2f} | | "
                     f"{r['matmul_tflops'] * 1e12 / peak:.0%} | | | {r['max_abs_corr_error']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", default=bool(os.environ.get("JNEURON_BENCH_SMALL")),
                        help="CPU-sized problems, to check the script (or set JNEURON_BENCH_SMALL=1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=None, help="override the token count")
    parser.add_argument("--memory-budget", type=int, default=8 * 2**30,
                        help="bytes of MaxCorr blocks per pass (default 8 GiB)")
    args = parser.parse_args()
    started = time.perf_counter()
    sizes = dict(SIZES["small" if args.small else "full"])
    if args.tokens:
        sizes["tokens"] = args.tokens
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), sizes: {sizes}")
    ceiling = ceilings(sizes["matmul"], sizes["stream_bytes"], args.repeats)
    flops = [f"{k[:-6]} {v / 1e12:.3f} TFLOP/s" for k, v in ceiling.items() if k.endswith("_flops")]
    print("ceilings: " + ", ".join(flops) + f", bandwidth {ceiling['bandwidth_bytes'] / 1e9:.1f} GB/s")
    results = {"device": device.device_kind, "platform": device.platform, "sizes": sizes, "ceilings": ceiling,
               "date": time.strftime("%Y-%m-%d", time.gmtime())}
    results["comoments"] = comoments_workload(sizes, ceiling, args.repeats)
    c = results["comoments"]
    print(f"comoments {c['tokens']} x {c['width']}: {c['seconds']:.3f}s, {c['tflops']:.2f} TFLOP/s, "
          f"{c['roofline_fraction']:.1%} of roofline")
    results["maxcorr"] = maxcorr_workload(sizes, ceiling, args.repeats, args.memory_budget)
    m = results["maxcorr"]
    print(f"maxcorr accumulate {m['models']} x {m['model_width']} x {m['tokens']} ({m['passes']} passes): "
          f"{m['accumulate']['seconds']:.3f}s, {m['accumulate']['roofline_fraction']:.1%} of roofline")
    for name in ("jax", "pallas"):
        t = m["tile_reduction"][name]
        print(f"maxcorr tile reduction {m['tile_reduction']['tile']} {name}: {t['seconds'] * 1e3:.2f} ms, "
              f"{t['gbytes_s']:.1f} GB/s, {t['roofline_fraction']:.1%} of roofline")
    print(f"pallas equals jax: {m['tile_reduction']['pallas_equals_jax']}")
    results["svcca"] = svcca_workload(sizes, ceiling, args.repeats)
    s = results["svcca"]
    print(f"svcca matrix blocks {s['layers']} x {s['layer_width']} x {s['tokens']}: {s['seconds']:.3f}s, "
          f"{s['roofline_fraction']:.1%} of roofline")
    results["probes"] = probe_workload(sizes, ceiling, args.repeats)
    p = results["probes"]
    print(f"probe {p['tokens']} x {p['width']} x {p['classes']}, 1 epoch: {p['one_probe']['seconds']:.3f}s "
          f"({p['one_probe']['roofline_fraction']:.1%} of roofline); 16-setting grid {p['grid16']['seconds']:.3f}s "
          f"= {p['grid16_over_one_probe']:.2f}x one probe")
    results["information"] = information_workload(sizes, ceiling, args.repeats)
    i = results["information"]
    print(f"information joint counts {i['tokens']} x {i['width']} x {i['classes']}: {i['seconds']:.3f}s, "
          f"{i['roofline_fraction']:.1%} of roofline")
    results["precision"] = precision_workload(sizes, ceiling)
    for name, p in results["precision"].items():
        print(f"precision {name}: max |corr error| vs float64 {p['max_abs_corr_error']:.1e}")
    results["wall_s"] = time.perf_counter() - started
    out = Path(__file__).parent / "results" / ("gpu_small.json" if args.small else "gpu.json")
    atomic_write_text(out, json.dumps(results, indent=2) + "\n")
    text = table(results)
    print(text)
    atomic_write_text(out.with_suffix(".md"), text + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')} ({results['wall_s']:.0f} s in all)")


if __name__ == "__main__":
    main()
