"""NeuroX side of bench/probe.py, run with the NeuroX environment's Python (never imports jneuron).

Usage: python _neurox_probe.py job.json  (job: paths and settings; writes job["out"] as JSON and
job["weights"] as .npy). NeuroX 1.0.9 is called on arrays directly (its create_tensors fails on numpy >= 1.24).
"""

import contextlib
import io
import json
import sys
import time

import numpy as np
import torch
from neurox.interpretation import linear_probe


def quiet(function, *args, **kwargs):
    """Call a NeuroX function with its prints and progress bars swallowed."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return function(*args, **kwargs)


def main(path):
    job = json.load(open(path))
    result = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if "x" in job:
        x = np.load(job["x"], mmap_mode="r")
        y = np.load(job["y"])
        train, test = slice(0, job["train_tokens"]), slice(job["train_tokens"], len(y))
        x_train = np.ascontiguousarray(x[train])
        torch.manual_seed(job["seed"])
        start = time.perf_counter()
        probe = quiet(linear_probe.train_logistic_regression_probe, x_train, y[train].astype(np.int64),
                      lambda_l1=job["l1"], lambda_l2=job["l2"], num_epochs=job["epochs"],
                      batch_size=job["batch_size"], learning_rate=job["lr"])
        result["train_s"] = time.perf_counter() - start
        del x_train
        with torch.no_grad():
            logits = probe(torch.from_numpy(np.ascontiguousarray(x[test])))
        result["accuracy"] = float((logits.argmax(1).numpy() == y[test]).mean())
        class_to_idx = {c: c for c in range(int(y.max()) + 1)}
        start = time.perf_counter()
        ordering, cutoffs = quiet(linear_probe.get_neuron_ordering, probe, class_to_idx)
        result["probe_ordering_s"] = time.perf_counter() - start
        result["ordering"] = [int(i) for i in ordering]
        result["cutoffs"] = [int(c) for c in cutoffs]
        result["top"] = {str(p): sorted(int(i) for i in quiet(linear_probe.get_top_neurons, probe, p,
                                                               class_to_idx)[0]) for p in job["percentages"]}
        np.save(job["weights"], probe.linear.weight.detach().numpy())
    if "ordering_weights" in job:
        weights = np.load(job["ordering_weights"])
        probe = linear_probe.LinearProbe(weights.shape[1], weights.shape[0])
        with torch.no_grad():
            probe.linear.weight.copy_(torch.from_numpy(weights))
        class_to_idx = {c: c for c in range(weights.shape[0])}
        start = time.perf_counter()
        ordering, cutoffs = quiet(linear_probe.get_neuron_ordering, probe, class_to_idx)
        result["big_ordering_s"] = time.perf_counter() - start
        result["big_cutoffs"] = [int(c) for c in cutoffs]
    json.dump(result, open(job["out"], "w"))


if __name__ == "__main__":
    main(sys.argv[1])
