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


# --- physical floors ------------------------------------------------------------------------------------


def blas() -> dict:
    """The BLAS numpy calls and the kernel it picked (OpenBLAS core type), via threadpoolctl if installed."""
    import numpy as np

    try:
        import threadpoolctl

        pools = [p for p in threadpoolctl.threadpool_info() if p.get("user_api") == "blas"]
        pools.sort(key=lambda p: "numpy" not in str(p.get("filepath", "")))  # numpy's own first (scipy has one too)
        if pools:
            p = pools[0]
            return {"library": f"{p.get('internal_api')} {p.get('version')}", "kernel": p.get("architecture"),
                    "threads": p.get("num_threads"), "coretype_env": os.environ.get("OPENBLAS_CORETYPE")}
    except ImportError:
        pass
    config = np.show_config(mode="dicts")
    info = config.get("Build Dependencies", {}).get("blas", {})
    return {"library": f"{info.get('name')} {info.get('version')}",
            "kernel": str(info.get("openblas configuration", "")).split()[-2:],
            "coretype_env": os.environ.get("OPENBLAS_CORETYPE")}


def load() -> float:
    """The machine's one-minute load average now (other jobs share these cores)."""
    return round(os.getloadavg()[0], 2)


def gemm_rate(size: int = 2048, repeats: int = 3) -> float:
    """numpy's float32 GEMM rate on a ``size`` square product, in FLOP/s (best of ``repeats``)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty((size, size), np.float32)
    np.matmul(a, b, out=out)
    best = min(_seconds(lambda: np.matmul(a, b, out=out)) for _ in range(repeats))
    return 2.0 * size**3 / best


def read_bandwidth(nbytes: int = 1 << 30, repeats: int = 3) -> float:
    """Memory read bandwidth in bytes/s: a streaming float32 sum over ``nbytes`` (far above the caches)."""
    import numpy as np

    x = np.ones(nbytes // 4, np.float32)
    # a reduction that reads each element once; np.add.reduce on float32 is pairwise + SIMD, so it is
    # memory-bound here; split into rows so numpy does not materialize anything
    rows = x.reshape(-1, 1 << 16)
    rows.sum(axis=0)
    best = min(_seconds(lambda: rows.sum(axis=0)) for _ in range(repeats))
    return nbytes / best


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def floors(*, repeats: int = 3) -> dict:
    """Measure the machine's limits now: float32 GEMM FLOP/s, read bytes/s, and the load at that moment."""
    return {"gemm_flops": gemm_rate(repeats=repeats), "read_bytes_per_s": read_bandwidth(repeats=repeats),
            "load": load()}


def floor_seconds(*, flops: float, bytes_read: float, limits: dict) -> dict:
    """The physical floor of a method: max(arithmetic / GEMM rate, bytes / read bandwidth), and which binds."""
    compute, memory = flops / limits["gemm_flops"], bytes_read / limits["read_bytes_per_s"]
    return {"flops": flops, "bytes": bytes_read, "compute_s": compute, "memory_s": memory,
            "floor_s": max(compute, memory), "bound": "compute" if compute >= memory else "memory"}


def bracketed(fn: Callable[[], object], *, repeats: int = 3) -> dict:
    """Time ``fn`` (min of ``repeats`` after one warm-up) between two floor measurements of this machine.

    Returns seconds, the load average at the time, and the floors before and after; ``limits`` holds the
    higher GEMM rate and bandwidth of the two (the stricter floor: a loaded moment does not lower the bar).
    """
    before = floors()
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    after = floors()
    limits = {"gemm_flops": max(before["gemm_flops"], after["gemm_flops"]),
              "read_bytes_per_s": max(before["read_bytes_per_s"], after["read_bytes_per_s"])}
    return {"seconds": min(times), "all_seconds": times, "load": load(), "floors_before": before,
            "floors_after": after, "limits": limits}


def described_machine() -> dict:
    """``machine()`` plus the BLAS kernel: the line every results file carries."""
    return {**machine(), "blas": blas()}


def ratio_line(name: str, seconds: float, floor: dict, *, load_avg: float, baseline_s: float | None = None) -> str:
    """One printed line: seconds, multiple of the physical floor, which limit binds, baseline ratio, load."""
    text = (f"  {name:34s} {seconds:8.3f} s   {seconds / floor['floor_s']:5.2f}x the floor "
            f"({floor['bound']}: {floor['floor_s']:.3f} s)")
    if baseline_s is not None:
        text += f"   baseline / this = {baseline_s / seconds:.2f}x"
    return text + f"   load {load_avg:.2f}"
