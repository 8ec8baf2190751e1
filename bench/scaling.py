"""Scaling over 1, 2, 4 and 8 forced CPU devices: sharded co-moments and MaxCorr against one device.

Each device count runs in its own process (``XLA_FLAGS`` must be set before JAX starts). In every
process: jneuron unsharded (the reference), jneuron with ``devices=n``, the numpy baseline a user would
write (float64 ``np.cov`` / ``np.corrcoef`` and a Python loop of argmax over the models' blocks), and the
floor (one jitted ``X^T X`` with ``precision="highest"``, data already on the device). Compile time is
excluded (one warm-up call); the best of ``--repeats`` runs is kept. On a 2-core machine forced devices
share the same cores, so the point is correctness and the overhead of sharding, not speed-up.

    python bench/scaling.py [--tokens 200000] [--width 256] [--models 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

from _common import best_time  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "scaling.json"
COUNTS = (1, 2, 4, 8)



def measure(devices: int, tokens: int, width: int, models: int, repeats: int) -> dict:
    """One process's measurements (JAX already sees ``devices`` CPU devices)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jneuron as jn

    assert jax.device_count() == devices, jax.devices()
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(tokens, width)) + 10).astype(np.float32)
    per_model = width // models
    acts = [x[:, m * per_model : (m + 1) * per_model] for m in range(models)]
    chunk = 16384

    def numpy_maxcorr():
        corr = np.corrcoef(np.hstack(acts).T.astype(np.float64))
        return [np.abs(corr[m * per_model : (m + 1) * per_model]).argmax(1) for m in range(models)]

    on_device = jax.device_put(x, jax.devices()[0])
    floor = jax.jit(lambda a: jnp.matmul(a.T, a, precision=jax.lax.Precision.HIGHEST))
    ref = jn.comoments(x, chunk_tokens=chunk)
    got = jn.comoments(x, chunk_tokens=chunk, devices=devices)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_rank = jn.maxcorr(acts, chunk_tokens=chunk)
        got_rank = jn.maxcorr(acts, chunk_tokens=chunk, devices=devices)
    row = {
        "devices": devices,
        "comoments_unsharded_s": best_time(lambda: jn.comoments(x, chunk_tokens=chunk), repeats),
        "comoments_sharded_s": best_time(lambda: jn.comoments(x, chunk_tokens=chunk, devices=devices), repeats),
        "numpy_cov_s": best_time(lambda: np.cov(x.T.astype(np.float64)), repeats),
        "floor_matmul_s": best_time(lambda: floor(on_device).block_until_ready(), repeats),
        "maxcorr_unsharded_s": best_time(lambda: jn.maxcorr(acts, chunk_tokens=chunk), repeats),
        "maxcorr_sharded_s": best_time(lambda: jn.maxcorr(acts, chunk_tokens=chunk, devices=devices), repeats),
        "numpy_maxcorr_s": best_time(numpy_maxcorr, repeats),
        "max_abs_corr_diff": float(np.abs(got.correlation() - ref.correlation()).max()),
        "max_abs_score_diff": float(np.abs(got_rank.scores - ref_rank.scores).max()),
        "same_partners": bool((got_rank.partner_unit == ref_rank.partner_unit).all()),
    }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = (args.tokens, args.width, args.models, args.repeats)
    if args.child is not None:
        print(json.dumps(measure(args.child, *sizes)))
        return
    rows = []
    for n in COUNTS:
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}
        command = [sys.executable, __file__, "--child", str(n), "--tokens", str(args.tokens), "--width",
                   str(args.width), "--models", str(args.models), "--repeats", str(args.repeats)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"tokens={args.tokens} width={args.width} models={args.models} (float32, best of {args.repeats})")
    print(f"{'devices':>7} {'comoments':>10} {'vs 1 dev':>8} {'vs numpy':>8} {'vs floor':>8} "
          f"{'maxcorr':>8} {'vs 1 dev':>8} {'vs numpy':>8} {'corr diff':>9} {'partners':>8}")
    for r in rows:
        print(f"{r['devices']:>7} {r['comoments_sharded_s']:>9.3f}s "
              f"{r['comoments_sharded_s'] / r['comoments_unsharded_s']:>7.2f}x "
              f"{r['comoments_sharded_s'] / r['numpy_cov_s']:>7.2f}x "
              f"{r['comoments_sharded_s'] / r['floor_matmul_s']:>7.2f}x "
              f"{r['maxcorr_sharded_s']:>7.3f}s {r['maxcorr_sharded_s'] / r['maxcorr_unsharded_s']:>7.2f}x "
              f"{r['maxcorr_sharded_s'] / r['numpy_maxcorr_s']:>7.2f}x {r['max_abs_corr_diff']:>9.1e} "
              f"{'same' if r['same_partners'] else 'DIFFER':>8}")
    from jneuron.data.atomic import atomic_write_text

    meta = {"tokens": args.tokens, "width": args.width, "models": args.models, "repeats": args.repeats,
            "date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": f"{os.cpu_count()}-core CPU"}
    atomic_write_text(RESULTS, json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
