"""Two processes on localhost, four CPU devices each, combine their token ranges like one process."""

import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import jneuron as jn

WORKER = Path(__file__).parent / "multidevice" / "multihost_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multidevice
def test_two_processes_equal_one(tmp_path):
    sys.path.insert(0, str(WORKER.parent))
    try:
        from multihost_worker import data, models
    finally:
        sys.path.pop(0)
    port, out = _free_port(), tmp_path / "result.npz"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
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
    single = jn.comoments(data())
    assert int(got["count"]) == single.count == 1003
    np.testing.assert_allclose(got["mean"], single.mean, atol=1e-7)
    np.testing.assert_allclose(got["cross"], single.cross, rtol=1e-6, atol=1e-6 * np.abs(single.cross).max())
    assert list(single.dead) == [2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jn.DeadNeuronWarning)
        ranking = jn.maxcorr(models(data()))
    np.testing.assert_allclose(got["scores"], ranking.scores, atol=5e-7)
    np.testing.assert_array_equal(got["unit"], ranking.partner_unit)
