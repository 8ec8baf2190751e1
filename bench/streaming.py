"""Streaming benchmark: MaxCorr over a zarr store larger than memory vs the same computation on in-memory chunks.

Phases, each in its own process so peak memory (ru_maxrss) is measured per phase:

  generate  write the store: MODELS models x WIDTH neurons x TOKENS tokens, float32, uncompressed zarr v3
            (each model = a shared signal mixed in + its own noise, so the correlations are not trivial);
  read      the I/O floor: read every chunk of the store, no compute;
  memory    the baseline: the same MaxCorr (jneuron.streaming.passes.accumulate + reductions) on chunks already in
            memory (a pool of chunks cycled to the same token count, no file I/O);
  stream    jneuron: ``jn.maxcorr(jn.open_activations(store))`` with the background prefetch.

Prints throughputs (tokens/s) and the ratio stream/memory, writes bench/results/streaming.json atomically,
and deletes the store unless --keep. Run heavy: ``flock /tmp/jneuron-heavy.lock python bench/streaming.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(args) -> dict:
    import jneuron as jn

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    chunk = args.chunk_tokens
    with jn.StoreWriter(args.store, chunk_tokens=chunk, compressors=None,
                        tokenization="synthetic benchmark rows") as writer:
        for first in range(0, args.tokens, chunk):
            rows = min(chunk, args.tokens - first)
            shared = rng.standard_normal((rows, 64), dtype=np.float32)
            for m in range(args.models):
                mix = np.random.default_rng(m).standard_normal((64, args.width), dtype=np.float32) / 8
                noise = rng.standard_normal((rows, args.width), dtype=np.float32)
                writer.append(f"model{m}", "layer", noise + shared @ mix)
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in Path(args.store).rglob("*") if f.is_file())
    return {"seconds": seconds, "bytes": size, "peak_mib": _peak_mib()}


def read(args) -> dict:
    import jneuron as jn

    source = jn.open_activations(args.store)
    start = time.perf_counter()
    rows = sum(c.shape[0] for c in source.chunks(args.chunk_tokens))
    seconds = time.perf_counter() - start
    return {"tokens": rows, "seconds": seconds, "tokens_per_s": rows / seconds, "peak_mib": _peak_mib()}


def _maxcorr(source, args) -> tuple[dict, object]:
    import jneuron as jn

    start = time.perf_counter()
    ranking = jn.maxcorr(source, chunk_tokens=args.chunk_tokens)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens_per_s": args.tokens_compute / seconds, "peak_mib": _peak_mib(),
            "top": ranking.top(3)[0]["label"], "passes": _passes(args)}, ranking


def _passes(args) -> int:
    from jneuron.crossmodel.maxcorr import passes_needed

    return passes_needed([args.width] * args.models)


def memory(args) -> dict:
    import jneuron as jn

    rng = np.random.default_rng(1)
    pool = [tuple(rng.standard_normal((args.chunk_tokens, args.width), dtype=np.float32) for _ in range(args.models))
            for _ in range(3)]
    count = -(-(args.memory_tokens or args.tokens_compute) // args.chunk_tokens)

    def chunks():
        return (pool[i % len(pool)] for i in range(count))

    source = jn.as_source(chunks, names=[f"model{m}" for m in range(args.models)])
    result, _ = _maxcorr(source, args)
    result["tokens"] = count * args.chunk_tokens
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    return result


def stream(args) -> dict:
    import jneuron as jn

    source = jn.open_activations(args.store)
    if args.tokens_compute < source.tokens:  # the first tokens_compute rows of the store
        from dataclasses import replace

        source = replace(source, tokens=args.tokens_compute)
    result, _ = _maxcorr(source, args)
    result["tokens"] = source.tokens
    result["tokens_per_s"] = source.tokens / result["seconds"]
    return result


PHASES = {"generate": generate, "read": read, "memory": memory, "stream": stream}


def _child(phase: str, args) -> dict:
    command = [sys.executable, __file__, "--phase", phase, "--store", str(args.store), "--tokens", str(args.tokens),
               "--tokens-compute", str(args.tokens_compute), "--models", str(args.models), "--width", str(args.width),
               "--chunk-tokens", str(args.chunk_tokens), "--memory-tokens", str(args.memory_tokens or 0)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{phase:>8}: {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, default=HERE / "results" / "streaming-store.zarr")
    parser.add_argument("--tokens", type=int, default=200_000,
                        help="tokens in the store (default 200,000 = 3.3 GB; the issue's full size is 3,000,000 = 48 GB)")
    parser.add_argument("--tokens-compute", type=int, default=None,
                        help="tokens MaxCorr runs over, in both the stream and memory phases (default: all)")
    parser.add_argument("--memory-tokens", type=int, default=None,
                        help="tokens for the in-memory phase (a throughput, so it may be shorter; default: the same)")
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--chunk-tokens", type=int, default=4096, help="tokens per chunk (64 MiB of 4 x 1,024 float32)")
    parser.add_argument("--keep", action="store_true", help="keep the generated store")
    args = parser.parse_args()
    args.tokens_compute = args.tokens_compute or args.tokens
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return
    sys.path.insert(0, str(HERE.parent))
    from jneuron.data.atomic import atomic_write_text

    free = shutil.disk_usage(args.store.parent if args.store.parent.exists() else HERE).free
    size = args.tokens * args.models * args.width * 4
    print(f"store: {args.models} models x {args.width} neurons x {args.tokens:,} tokens float32 = {size / 1e9:.1f} GB; "
          f"disk free {free / 1e9:.1f} GB; memory {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f} GiB")
    if size > 0.8 * free:
        raise SystemExit("not enough free disk for this store; lower --tokens")
    results = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "phase"}}
    try:
        for phase in ("generate", "read", "memory", "stream"):
            results[phase] = _child(phase, args)
    finally:
        if not args.keep:
            shutil.rmtree(args.store, ignore_errors=True)
    ratio = results["memory"]["tokens_per_s"] / results["stream"]["tokens_per_s"]
    results["stream_slowdown_vs_memory"] = ratio
    results["read_vs_stream"] = results["read"]["tokens_per_s"] / results["stream"]["tokens_per_s"]
    print(f"\nMaxCorr throughput: stream {results['stream']['tokens_per_s']:,.0f} tok/s, in-memory "
          f"{results['memory']['tokens_per_s']:,.0f} tok/s (stream is {ratio:.2f}x slower; target < 1.5x)")
    print(f"read-only floor: {results['read']['tokens_per_s']:,.0f} tok/s "
          f"({results['read_vs_stream']:.1f}x the streamed MaxCorr rate)")
    print(f"peak memory: stream {results['stream']['peak_mib']:.0f} MiB (target < 2048), "
          f"memory phase {results['memory']['peak_mib']:.0f} MiB")
    out = HERE / "results" / "streaming.json"
    atomic_write_text(out, json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
