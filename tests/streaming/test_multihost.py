"""Two processes on localhost, four CPU devices each, combine their token ranges like one process."""

import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import jneuron as jn
from tests.reference import assert_partners_close, mean_scale
from tests.tolerance import assert_close, covariance_scale, tolerance

WORKER = Path(__file__).parent / "multidevice" / "multihost_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multidevice
def test_two_processes_equal_one(tmp_path, cpu_devices_env):
    sys.path.insert(0, str(WORKER.parent))
    try:
        from multihost_worker import data, models
    finally:
        sys.path.pop(0)
    port, out = _free_port(), tmp_path / "result.npz"
    env = cpu_devices_env(4)  # keeps the caller's other XLA flags
    workers = [subprocess.Popen([sys.executable, str(WORKER), str(port), str(i), str(out)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = []
    try:
        for worker in workers:
            logs.append(worker.communicate(timeout=240)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert all(w.returncode == 0 for w in workers), "\n".join(log[-3000:] for log in logs)
    got = np.load(out)
    x = data()
    single = jn.comoments(x)
    assert int(got["count"]) == single.count == 1003
    # 8 devices over 2 processes vs one: two float32 computations, each within one bound
    bound = 2 * tolerance(1003)
    assert_close(got["mean"], single.mean, 1.0, 2 * mean_scale(x, tolerance(1003)), "mean")
    assert_close(got["cross"], single.cross, bound, 1003 * covariance_scale(x), "cross-products")
    assert list(single.dead) == [2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jn.DeadNeuronWarning)
        ranking = jn.maxcorr(models(x))
    assert_close(got["scores"], ranking.scores, bound, what="maxcorr scores")
    assert_partners_close(got["unit"], models(x), tolerance(1003))  # ties within rounding may swap
    assert_partners_close(ranking.partner_unit, models(x), tolerance(1003))
