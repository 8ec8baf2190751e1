"""Benchmark: linear probes and their neuron rankings, jneuron against NeuroX 1.0.9 and against the floor,
all in the same run on the same data and settings (Adam, lr, batch size, epochs, l1, l2).

The physical floor (bench/_common.py, measured in the same run) is max(arithmetic / numpy's float32 GEMM
rate, bytes / read bandwidth): the logits and weight gradient over all tokens (4 n d c flops an epoch),
the activations read once; for the 16-setting grid also against the traffic of Adam's state (weight and
two moments read and written each step, 16 x 4,096 x 45 floats each, out of cache).

NeuroX runs in its own environment (``python -m venv .venv-neurox``, then in it ``pip install --no-deps
neurox==1.0.9`` plus numpy, scipy, scikit-learn, imbalanced-learn, h5py, tqdm and a CPU-only torch; NeuroX's
own pins do not install on Python 3.11) through a subprocess that reads the same
``.npy`` files (memory-mapped, one copy in the page cache). Sizes: ``a`` = 5,000 tokens x 256 neurons x 5
classes; ``b`` = 200,000 x 4,096 x 45 (fewer epochs); the ordering target is a 45 x 53,248 weight matrix.

    python bench/probe.py --size a            # writes bench/results/probe_a.json
    python bench/probe.py --size b --epochs 1 # heavy: run under flock /tmp/jneuron-heavy.lock
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jneuron as jn
from jneuron.data.atomic import atomic_write_text

sys.path.insert(0, str(Path(__file__).parent))
from _common import described_machine, floor_seconds, floors, load, ratio_line  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NEUROX_PYTHON = ROOT / ".venv-neurox" / "bin" / "python"
SIZES = {"a": (5_000, 1_000, 256, 5), "b": (200_000, 20_000, 4_096, 45)}
GRID = [0.0, 1e-5, 1e-4, 1e-3]
PERCENTAGES = [0.05, 0.1, 0.2]


def planted_files(folder: Path, train: int, test: int, neurons: int, classes: int, seed: int = 0):
    """Gaussian activations where each class lifts 3 planted neurons by 1.5; written in chunks as .npy."""
    rng = np.random.default_rng(seed)
    tokens = train + test
    y = rng.integers(0, classes, tokens)
    planted = rng.choice(neurons, size=(classes, 3), replace=False)
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float32, shape=(tokens, neurons))
    for start in range(0, tokens, 8192):
        stop = min(tokens, start + 8192)
        block = rng.standard_normal((stop - start, neurons), dtype=np.float32)
        rows = np.arange(stop - start)
        for k in range(3):
            block[rows, planted[y[start:stop], k]] += 1.5
        x[start:stop] = block
    x.flush()
    del x
    np.save(folder / "y.npy", y)
    return planted


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def jaccard(a, b) -> float:
    a, b = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    return len(a & b) / max(1, len(a | b))


def neurox(job: dict, folder: Path) -> dict:
    """Run the NeuroX side in its own environment; its result as a dict (or why it could not run)."""
    if not NEUROX_PYTHON.exists():
        return {"error": f"NeuroX environment missing: {NEUROX_PYTHON}"}
    job = {**job, "out": str(folder / "neurox.json"), "weights": str(folder / "neurox_w.npy")}
    (folder / "job.json").write_text(json.dumps(job))
    run = subprocess.run([str(NEUROX_PYTHON), str(ROOT / "bench" / "_neurox_probe.py"), str(folder / "job.json")],
                         capture_output=True, text=True)
    if run.returncode != 0:
        return {"error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"}
    return json.loads((folder / "neurox.json").read_text())


def floor_train(x_train: np.ndarray, classes: int, epochs: int) -> float:
    """The arithmetic a probe cannot avoid: per epoch, logits and weight gradient over all tokens as two big
    matrix products (perfect batching, no optimizer)."""
    x = jnp.asarray(x_train)
    w = jnp.ones((x.shape[1], classes), x.dtype) * 1e-3

    @jax.jit
    def passes(x, w):
        def one(w, _):
            logits = jnp.matmul(x, w, precision=jax.lax.Precision.HIGHEST)
            return w - 1e-6 * jnp.matmul(x.T, jax.nn.softmax(logits), precision=jax.lax.Precision.HIGHEST), None

        return jax.lax.scan(one, w, None, length=epochs)[0]

    jax.block_until_ready(passes(x, w))
    _, seconds = timed(lambda: jax.block_until_ready(passes(x, w)))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="a")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--l1", type=float, default=1e-3)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--skip-grid", action="store_true", help="do not time the 16-setting grid")
    parser.add_argument("--skip-big-ordering", action="store_true", help="do not time the 53,248-neuron ordering")
    args = parser.parse_args()
    train_tokens, test_tokens, neurons, classes = SIZES[args.size]
    settings = dict(l1=args.l1, l2=args.l2, epochs=args.epochs, batch_size=32, learning_rate=1e-3)
    report = {"size": args.size, "tokens": train_tokens, "test_tokens": test_tokens, "neurons": neurons,
              "classes": classes, "settings": settings, "machine": described_machine()}
    with tempfile.TemporaryDirectory(dir=os.environ.get("JNEURON_BENCH_TMP")) as tmp:
        folder = Path(tmp)
        planted = planted_files(folder, train_tokens, test_tokens, neurons, classes)
        big = np.abs(np.random.default_rng(1).standard_normal((45, 53_248), dtype=np.float32))
        np.save(folder / "big_w.npy", big)
        job = {"x": str(folder / "x.npy"), "y": str(folder / "y.npy"), "train_tokens": train_tokens,
               "seed": 0, "l1": args.l1, "l2": args.l2, "epochs": args.epochs, "batch_size": 32, "lr": 1e-3,
               "percentages": PERCENTAGES}
        if not args.skip_big_ordering:
            job["ordering_weights"] = str(folder / "big_w.npy")
        theirs = neurox(job, folder)
        report["neurox"] = {k: v for k, v in theirs.items() if k not in ("ordering", "cutoffs", "top", "big_cutoffs")}

        x = np.load(folder / "x.npy", mmap_mode="r")
        y = np.load(folder / "y.npy")
        x_train, y_train = x[:train_tokens], y[:train_tokens]
        x_test, y_test = x[train_tokens:], y[train_tokens:]
        x_train = np.ascontiguousarray(x_train)  # in memory, as the floor's own reads are
        probe, first = timed(jn.train_probe, x_train, y_train, **settings)
        limits = floors()
        probe, steady = timed(jn.train_probe, x_train, y_train, **settings)
        ours = {"train_first_call_s": first, "train_s": steady, "train_load": load(),
                "accuracy": probe.evaluate(x_test, y_test)["accuracy"]}
        # the unavoidable work of an epoch: the logits and the weight gradient over all tokens (2 n d c flops
        # each), the activations read once; per Adam step, the weight and both moments read and written
        # (float32) -- cache-resident for one probe, not for 16 settings (16 x 3 x d x c x 4 bytes)
        steps = args.epochs * -(-train_tokens // settings["batch_size"])
        flops = 4.0 * args.epochs * train_tokens * neurons * classes
        ours["floors"] = limits
        ours["floor"] = floor_seconds(flops=flops, bytes_read=args.epochs * x_train.nbytes, limits=limits)
        ours["train_over_floor"] = steady / ours["floor"]["floor_s"]
        ordering, ours["probe_ordering_s"] = timed(jn.neuron_ordering, probe)
        ours["xla_full_batch_train_s"] = floor_train(np.asarray(x_train), classes, args.epochs)
        if not args.skip_grid:
            grid_args = dict(l1=GRID, l2=GRID, validation=(x_test, y_test), **{k: settings[k] for k in
                                                                               ("epochs", "batch_size", "learning_rate")})
            grid, ours["grid16_first_call_s"] = timed(jn.train_probes, x_train, y_train, **grid_args)
            settings16 = len(GRID) ** 2
            ours["grid16_floor"] = floor_seconds(flops=settings16 * flops, bytes_read=args.epochs * x_train.nbytes,
                                                 limits=limits)
            ours["grid16_adam_state_floor"] = floor_seconds(
                flops=settings16 * flops, bytes_read=steps * 6 * settings16 * neurons * classes * 4, limits=limits)
            if ours["grid16_first_call_s"] > 20:  # compilation (~2 s) is noise here: do not run it twice
                ours["grid16_s"] = ours["grid16_first_call_s"]
            else:
                grid, ours["grid16_s"] = timed(jn.train_probes, x_train, y_train, **grid_args)
            ours["grid16_load"] = load()
            ours["grid16_over_floor"] = ours["grid16_s"] / ours["grid16_floor"]["floor_s"]
            ours["grid16_over_adam_state_floor"] = ours["grid16_s"] / ours["grid16_adam_state_floor"]["floor_s"]
            ours["grid16_best"] = grid.to_dict()["best"]
            ours["grid16_over_one_probe"] = ours["grid16_s"] / steady
        if not args.skip_big_ordering:
            jn.neuron_ordering(big)
            times = [timed(jn.neuron_ordering, big)[1] for _ in range(3)]
            ours["big_ordering_s"] = min(times)
            ours["floor_big_ordering_s"] = min(timed(np.sort, big, axis=1)[1] for _ in range(3))
            if "big_cutoffs" in theirs:
                ours["big_cutoffs_equal_neurox"] = jn.ordering_cutoffs(jn.neuron_ordering(big)).tolist() == \
                    theirs["big_cutoffs"]
        report["jneuron"] = ours
        planted_set = set(planted.ravel().tolist())
        agreement = {"planted_in_first_k": len(planted_set & set(ordering.order[: len(planted_set)].tolist()))
                     / len(planted_set)}
        if "accuracy" in theirs:
            agreement["accuracy_difference_points"] = 100 * (ours["accuracy"] - theirs["accuracy"])
            agreement["neurox_planted_in_first_k"] = len(planted_set & set(theirs["ordering"][: len(planted_set)])) \
                / len(planted_set)
            for p in PERCENTAGES:
                agreement[f"top_jaccard_{p}"] = jaccard(jn.top_neurons(probe, p).union, theirs["top"][str(p)])
            k = len(planted_set)
            agreement["ordering_first_k_jaccard"] = jaccard(ordering.order[:k], theirs["ordering"][:k])
            ratios = {"train_speedup": theirs["train_s"] / steady,
                      "train_speedup_with_compile": theirs["train_s"] / first,
                      "probe_ordering_speedup": theirs["probe_ordering_s"] / ours["probe_ordering_s"]}
        else:
            ratios = {}
        if "big_ordering_s" in theirs and "big_ordering_s" in ours:
            ratios["big_ordering_speedup"] = theirs["big_ordering_s"] / ours["big_ordering_s"]
            ratios["big_ordering_over_floor"] = ours["big_ordering_s"] / ours["floor_big_ordering_s"]
        ratios["train_over_floor"] = ours["train_over_floor"]
        if "grid16_s" in ours:
            ratios["grid16_over_one_probe"] = ours["grid16_over_one_probe"]
        report["agreement"] = agreement
        report["ratios"] = ratios
    report["floors_after"] = floors()
    for section in ("neurox", "jneuron", "agreement", "ratios"):
        print(section, json.dumps(report[section], indent=1, default=float))
    print(f"Probe {train_tokens:,} x {neurons:,} x {classes}, batch 32, {args.epochs} epoch(s); "
          f"{report['machine']['cpu']}, BLAS {report['machine']['blas']}")
    print(ratio_line("jneuron train_probe", ours["train_s"], ours["floor"], load_avg=ours["train_load"],
                     baseline_s=theirs.get("train_s")) + "   (target <= 2x)")
    if "grid16_s" in ours:
        print(ratio_line("jneuron train_probes, 16 settings", ours["grid16_s"], ours["grid16_floor"],
                         load_avg=ours["grid16_load"]) + "   (target <= 1.3x)")
        print(ratio_line("   ... against Adam's state traffic", ours["grid16_s"], ours["grid16_adam_state_floor"],
                         load_avg=ours["grid16_load"]))
    path = ROOT / "bench" / "results" / f"probe_{args.size}.json"
    atomic_write_text(path, json.dumps(report, indent=1, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
