import jax
import jax.numpy as jnp
import numpy as np

from jneuron.kernels import compensated as comp
from tests.tolerance import tolerance


def test_two_sum_is_exact(rng):
    a = rng.normal(size=1000).astype(np.float32) * 1e4
    b = rng.normal(size=1000).astype(np.float32)
    s, err = comp.two_sum(jnp.asarray(a), jnp.asarray(b))
    exact = a.astype(np.float64) + b.astype(np.float64)
    np.testing.assert_array_equal(np.asarray(s, np.float64) + np.asarray(err, np.float64), exact)


def test_compensated_sum_beats_plain_float32(rng):
    values = (rng.normal(size=20_000) * 0.01 + 1000).astype(np.float32)

    @jax.jit
    def total(values):
        def step(carry, v):
            return (comp.add(carry[0], v), carry[1] + v), None

        return jax.lax.scan(step, (comp.zeros((), jnp.float32), jnp.float32(0)), values)[0]

    pair, plain = total(jnp.asarray(values))
    exact = values.astype(np.float64).sum()
    # the pair's low half is a float32 sum of the high half's rounding errors, each at most eps/2 of the
    # running total: an n-term sum (tests/tolerance.py) of terms eps/2 |partial sum| each
    partial = np.abs(np.cumsum(values.astype(np.float64))).sum()
    bound = tolerance(len(values)) * np.finfo(np.float32).eps / 2 * partial
    assert abs(float(comp.value64(pair)) - exact) <= bound
    # a plain float32 running sum is off by about 2 here (above the bound too): not a rounding bound, the
    # gap that compensation must close
    assert abs(float(plain) - exact) > 10 * abs(float(comp.value64(pair)) - exact)
