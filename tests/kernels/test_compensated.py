import chex
import jax
import jax.numpy as jnp
import numpy as np

from jneuron.kernels import compensated as comp
from tests.kernels.variants import KernelTest
from tests.tolerance import assert_close, tolerance


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


class CompensatedVariantsTest(KernelTest):
    """The pair arithmetic jitted and not: XLA must not reassociate or contract TwoSum away."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_two_sum_and_add_pairs_are_exact(self):
        a = (self.rng.normal(size=500) * 1e4).astype(np.float32)
        b = self.rng.normal(size=500).astype(np.float32)
        s, err = self.variant(comp.two_sum)(jnp.asarray(a), jnp.asarray(b))
        exact = a.astype(np.float64) + b.astype(np.float64)
        np.testing.assert_array_equal(np.asarray(s, np.float64) + np.asarray(err, np.float64), exact)
        pair = self.variant(comp.add_pairs)(comp.Pair(jnp.asarray(a), jnp.zeros(500, jnp.float32)),
                                            comp.Pair(jnp.asarray(b), jnp.zeros(500, jnp.float32)))
        np.testing.assert_array_equal(comp.value64(pair), exact)

    @chex.variants(with_jit=True, without_jit=True)
    def test_add_keeps_products_to_float64_level(self):
        # the added values are products, which XLA may contract into fused multiply-adds under jit
        u = (self.rng.normal(size=(64, 8)) * 10).astype(np.float32)
        v = (self.rng.normal(size=(64, 8)) + 1e3).astype(np.float32)

        def total(u, v):
            pair = comp.zeros((8,), jnp.float32)
            for row in range(u.shape[0]):  # a static unrolled sum: the pair, not a scan, carries the error
                pair = comp.add(pair, u[row] * v[row])
            return pair

        pair = self.variant(total)(jnp.asarray(u), jnp.asarray(v))
        exact = (u.astype(np.float64) * v.astype(np.float64)).sum(0)
        # each product rounds once (eps/2 relative) and the pair adds at most an n-term sum of roundings of
        # the running total
        products = np.abs(u.astype(np.float64) * v).sum(0)
        partial = np.abs(np.cumsum(u.astype(np.float64) * v, axis=0)).sum(0)
        eps = float(np.finfo(np.float32).eps)
        assert_close(comp.value64(pair), exact, 1.0, eps / 2 * products + tolerance(64) * eps / 2 * partial, "sum")
        np.testing.assert_array_equal(np.asarray(self.variant(comp.value)(pair)),
                                      (np.asarray(pair.hi) + np.asarray(pair.lo)).astype(np.float32))
