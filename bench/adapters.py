"""Benchmark: 100 ablation masks on the demo MLP over the whole digits dataset.

jneuron (``jnf.sweep`` over an ablated NNX model: one vmapped compiled call) against the baseline a user
would write (a Python loop of 100 calls of one jitted masked forward pass) and the floor (a hand-written
pure-JAX masked MLP over the stacked masks, no adapters). Steady-state times are medians of repeats; compile time
(first call minus steady state) is reported separately. jneuron also runs with ``lax.map`` over
groups of masks (``batch_size``), and the hand-written floor with both forms. Writes ``bench/results/adapters.json``.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jneuron import flax as jnf
from jneuron.data.atomic import atomic_write_text
from jneuron.data.bundled import load_digits
from jneuron.models import MLP

MASKS = 100
BATCHES = (25, 10, 4)  # masks per lax.map step
REPEATS = 7
HIGHEST = jax.lax.Precision.HIGHEST


def accuracy(model, x, y):
    return jnp.mean((jnp.argmax(model(x), -1) == y).astype(jnp.float32))


def timed(fn, repeats: int = REPEATS) -> tuple[float, float]:
    """(first call seconds, median of later calls)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main() -> dict:
    digits = load_digits()
    x, y = jnp.asarray(digits.images, jnp.float32), jnp.asarray(digits.labels)
    model = MLP(64, (64, 32), 10, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    masks0 = jnp.asarray(rng.random((MASKS, 64)) > 0.3, jnp.float32)
    masks1 = jnp.asarray(rng.random((MASKS, 32)) > 0.3, jnp.float32)

    variant = jnf.ablate(model, {"layers/0": np.ones(64), "layers/1": np.ones(32)})

    def run_jneuron():
        return jnf.sweep(variant, accuracy, x, y, masks={"layers/0": masks0, "layers/1": masks1}, batch_size=None)

    def run_jneuron_default():
        return jnf.sweep(variant, accuracy, x, y, masks={"layers/0": masks0, "layers/1": masks1})

    def run_jneuron_map(batch_size):
        return lambda: jnf.sweep(variant, accuracy, x, y, masks={"layers/0": masks0, "layers/1": masks1},
                                 batch_size=batch_size)

    params = [(layer.kernel[...], layer.bias[...]) for layer in (*model.layers, model.head)]

    def masked_mlp(params, m0, m1, x, y):
        (w0, b0), (w1, b1), (w2, b2) = params
        h = jax.nn.relu(jnp.dot(x, w0, precision=HIGHEST) + b0[None]) * m0[None]
        h = jax.nn.relu(jnp.dot(h, w1, precision=HIGHEST) + b1[None]) * m1[None]
        logits = jnp.dot(h, w2, precision=HIGHEST) + b2[None]
        return jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))

    one = jax.jit(masked_mlp)

    def run_loop():
        return jnp.stack([one(params, masks0[k], masks1[k], x, y) for k in range(MASKS)])

    floor = jax.jit(jax.vmap(masked_mlp, in_axes=(None, 0, 0, None, None)))
    floor_map = jax.jit(lambda p, a, b, x, y: jax.lax.map(lambda m: masked_mlp(p, *m, x, y), (a, b), batch_size=10))

    def run_floor():
        return floor(params, masks0, masks1, x, y)

    def run_floor_map():
        return floor_map(params, masks0, masks1, x, y)

    results = {}
    runs = {"jneuron_default_auto": run_jneuron_default, "jneuron_vmap": run_jneuron,
            **{f"jneuron_lax_map_batch{b}": run_jneuron_map(b) for b in BATCHES},
            "python_loop_of_jit": run_loop, "handwritten_jax_vmap": run_floor,
            "handwritten_jax_lax_map_batch10": run_floor_map}
    for name, fn in runs.items():
        first, steady = timed(fn)
        results[name] = {"first_call_s": first, "steady_s": steady, "compile_s": max(first - steady, 0.0)}
    reference = run_loop()
    same = all(bool(np.allclose(fn(), reference, atol=1e-6)) for fn in runs.values())
    best = min((r["steady_s"], name) for name, r in results.items() if name.startswith("jneuron"))
    floor_s = min(r["steady_s"] for name, r in results.items() if name.startswith("handwritten"))
    report = {
        "benchmark": "adapters",
        "what": f"{MASKS} ablation masks (layers/0 and layers/1) on MLP(64,(64,32),10), accuracy on "
                f"{x.shape[0]} digits",
        "machine": f"{platform.processor() or platform.machine()}, {jax.devices()[0].platform}, "
                   f"{jax.device_count()} device(s)",
        "jax": jax.__version__,
        "results": results,
        "speedup_vs_loop": results["python_loop_of_jit"]["steady_s"] / results["jneuron_default_auto"]["steady_s"],
        "speedup_vs_loop_vmap": results["python_loop_of_jit"]["steady_s"] / results["jneuron_vmap"]["steady_s"],
        "best_jneuron": best[1],
        "speedup_vs_loop_best": results["python_loop_of_jit"]["steady_s"] / best[0],
        "best_ratio_to_handwritten": best[0] / floor_s,
        "results_agree": same,
    }
    for name, r in results.items():
        print(f"{name:32s} steady {r['steady_s'] * 1e3:8.2f} ms   compile {r['compile_s'] * 1e3:8.1f} ms")
    print(f"speed-up vs Python loop of jitted calls: default {report['speedup_vs_loop']:.1f}x, "
          f"vmap {report['speedup_vs_loop_vmap']:.1f}x, best "
          f"({best[1]}) {report['speedup_vs_loop_best']:.1f}x (target >= 5x); best jneuron / best hand-written: "
          f"{report['best_ratio_to_handwritten']:.2f}; results agree: {same}")
    out = Path(__file__).parent / "results" / "adapters.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
