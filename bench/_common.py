"""Helpers shared by the benchmark scripts: timing, peak memory, machine description, atomic results."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax

RESULTS = Path(__file__).parent / "results"


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Wall-clock seconds of ``fn()``, waiting for JAX's asynchronous results."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def best_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of ``fn()`` (which must block until its result is ready) after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def rss_bytes(field: str = "VmRSS") -> int | None:
    """This process's resident memory now (``VmRSS``) or at its peak (``VmHWM``), from Linux's /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far.

    Linux's ``VmHWM``, not ``ru_maxrss``: the latter survives ``fork`` and ``exec``, so a child started by a
    large benchmark process would report its parent's peak instead of its own.
    """
    peak = rss_bytes("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = jax.devices()[0]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d"),
    }


def run_child(args: list[str]) -> dict:
    """Run this benchmark script again in a fresh process (for clean peak-memory figures)."""
    output = subprocess.run([sys.executable, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def write_results(name: str, results: dict) -> Path:
    """Write ``bench/results/<name>.json`` atomically."""
    from jneuron.data.atomic import atomic_write_text

    return atomic_write_text(RESULTS / f"{name}.json", json.dumps(results, indent=1))
