"""The constant-neuron rule and the range beside a streamed statistic (jneuron.streaming.constant)."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jneuron as jn
from jneuron import config
from jneuron.kernels.sharded import Reduction
from jneuron.streaming.constant import constant_neurons, with_range
from jneuron.streaming.passes import HostReduction, run_pass

COUNT = Reduction(init=lambda: jnp.zeros((), jnp.int32), chunk=lambda x, n, row0: jnp.asarray(n, jnp.int32))
HOST_COUNT = HostReduction(init=lambda: np.zeros((), np.int64), chunk=lambda x, n, row0: np.asarray(n, np.int64))


def columns(draw_seed: int, tokens: int) -> np.ndarray:
    rng = np.random.default_rng(draw_seed)
    x = rng.normal(size=(tokens, 5)).astype(np.float32)
    x[:, 1] = 3.0
    x[:, 2] = np.float32(1e4) + np.spacing(np.float32(1e4)) * rng.integers(0, 3, tokens)
    x[:, 3] *= np.float32(1e-30)
    return x


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), tokens=st.integers(1, 90), chunk=st.integers(1, 40), exponent=st.integers(-60, 60))
def test_range_is_exact_for_any_chunking_and_scale_free(seed, tokens, chunk, exponent):
    """The streamed range equals numpy's min and max for any chunk size (valid rows only), and multiplying a
    neuron by a power of two never changes whether it is constant."""
    x = columns(seed, tokens)
    valid = np.random.default_rng(seed + 1).random(tokens) < 0.8
    valid[0] = True
    for reduction in (COUNT, HOST_COUNT):
        done = run_pass(jn.as_source([x], valid=valid), with_range(reduction, 5, np.dtype(np.float32)), chunk)
        assert int(done.state.state) == valid.sum()
        np.testing.assert_array_equal(np.asarray(done.state.low), x[valid].min(0))
        np.testing.assert_array_equal(np.asarray(done.state.high), x[valid].max(0))
    kept = x[valid]
    scaled = np.ldexp(kept.astype(np.float64), exponent)
    assert (constant_neurons(kept.min(0), kept.max(0), np.float32).tolist()
            == constant_neurons(scaled.min(0), scaled.max(0), np.float32).tolist())


def test_rule_bounds():
    """Within CONSTANT_ROUNDINGS roundings of the magnitude is constant; twice that is not."""
    eps = np.finfo(np.float32).eps
    steps = config.CONSTANT_ROUNDINGS
    low = np.array([1.0, 1.0, 0.0, -2.0, np.inf])
    high = np.array([1.0 + steps * eps, 1.0 + 2 * steps * eps, 0.0, -2.0 + 1e-3, -np.inf])
    assert constant_neurons(low, high, np.float32).tolist() == [True, False, True, False, True]
    assert not constant_neurons(np.array([1.0]), np.array([1.0 + 1e-12]), np.float64)[0]  # float64's rounding is finer


@pytest.mark.parametrize("reduction", [COUNT, HOST_COUNT])
def test_with_range_is_one_object_per_statistic(reduction):
    """The same wrapped statistic is reused, so a compiled pass is not rebuilt on every call."""
    assert with_range(reduction, 5, np.dtype(np.float32)) is with_range(reduction, 5, np.dtype(np.float32))
