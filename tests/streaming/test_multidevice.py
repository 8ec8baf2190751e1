"""Runs ``tests/streaming/multidevice/check_*.py`` in their own pytest process on 8 forced CPU devices."""

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


@pytest.mark.multidevice
def test_sharded_checks_on_eight_cpu_devices(cpu_devices_env):
    env = cpu_devices_env(8)  # keeps the caller's other XLA flags (make test-numerics: --xla_cpu_max_isa=AVX)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "python_files=check_*.py",
               "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"), str(HERE / "multidevice")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
