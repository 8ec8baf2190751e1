"""Strict test settings: shape and dtype slips fail loudly (equinox-style)."""

import os
import re

# Two CPU devices in every test process (pytest-xdist workers included), as equinox and chex test: the
# sharded paths (devices=2, a mesh) run in-process in every test run, not only in the subprocess scripts of
# tests/streaming/multidevice. Entry points stay on one device unless asked (devices=None is unsharded).
# Kept beside whatever XLA_FLAGS the caller sets (`make test-numerics` adds --xla_cpu_max_isa=AVX); a
# device count already given wins.
DEVICES = 2
_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count={DEVICES}".strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("ci")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261120)


@pytest.fixture
def cpu_devices_env():
    """``env = cpu_devices_env(8)``: this process's environment for a subprocess on N forced CPU devices,
    keeping the caller's other XLA flags (``make test-numerics`` limits XLA's CPU code to AVX)."""

    def make(devices: int) -> dict[str, str]:
        flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
        return {**os.environ, "JAX_PLATFORMS": "cpu",
                "XLA_FLAGS": f"{flags.strip()} --xla_force_host_platform_device_count={devices}".strip()}

    return make


def pytest_collection_modifyitems(config, items):
    """Tests that start their own multi-device processes run first: under pytest-xdist they are the
    longest single items, and started last they would leave one worker running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("multidevice") is None)
