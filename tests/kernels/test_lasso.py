"""jneuron.kernels.lasso, jitted and not, against coordinate descent on the float64 data themselves."""

import chex
import jax.numpy as jnp
import numpy as np

from jneuron.kernels import lasso
from tests.kernels.variants import KernelTest
from tests.reference import lasso_bound, lasso_kkt, ref_lasso
from tests.tolerance import assert_close

SWEEPS = 200


def standardised(a):
    """Columns at mean 0 and sd 1 (float64); a constant column is all zeros."""
    a = np.asarray(a, np.float64)
    sd = a.std(0, ddof=1)
    return (a - a.mean(0)) / np.where(sd > 0, sd, 1)


def correlations(x, y):
    """The kernel's inputs in float32: predictor correlations (a dead predictor: a zero row and column)
    and predictor-target correlations."""
    xs, ys = standardised(x), standardised(y)
    n = len(xs) - 1
    return jnp.asarray(xs.T @ xs / n, jnp.float32), jnp.asarray(xs.T @ ys / n, jnp.float32)


class LassoTest(KernelTest):
    def nets(self, tokens=400):
        x = self.rng.normal(size=(tokens, 5))
        x[:, 1] += 0.6 * x[:, 0]  # correlated predictors
        y = x @ self.rng.normal(size=(5, 3)) + 0.5 * self.rng.normal(size=(tokens, 3))
        return (x + 1e3).astype(np.float32), (y - 1e3).astype(np.float32)

    @chex.variants(with_jit=True, without_jit=True)
    def test_lasso_reaches_the_optimum_of_the_data(self):
        x, y = self.nets()
        gram, cross = correlations(x, y)
        solve = self.variant(lambda g, c, p: lasso.lasso.__wrapped__(g, c, p, SWEEPS))
        for penalty in (0.3, 0.05, 0.0):
            coef, kkt = solve(gram, cross, jnp.float32(penalty))
            ref = ref_lasso(x, y, penalty)
            stopped = float(kkt) + lasso_kkt(x, y, ref, penalty)  # where both solvers stopped
            assert_close(coef, ref, lasso_bound(x, ref, stopped), what=f"coefficients at penalty {penalty}")
            assert float(kkt) < 1e-4  # converged in SWEEPS sweeps (the solver, not rounding)

    @chex.variants(with_jit=True, without_jit=True)
    def test_path_equals_each_penalty_alone_and_dead_predictors_stay_zero(self):
        x, y = self.nets()
        x[:, 3] = 2.0  # dead predictor: zero variance
        gram, cross = correlations(x, y)
        penalties = jnp.asarray([0.2, 0.02], jnp.float32)
        coefs, kkts = self.variant(lambda g, c, p: lasso.lasso_path.__wrapped__(g, c, p, SWEEPS))(gram, cross, penalties)
        assert coefs.shape == (2, 5, 3) and kkts.shape == (2,)
        np.testing.assert_array_equal(np.asarray(coefs)[:, 3], 0.0)
        for k in range(2):
            alone, kkt = lasso.lasso(gram, cross, penalties[k], SWEEPS)
            # the same coordinate descent vmapped or not: within the bound of where the two stopped
            live = np.delete(x, 3, axis=1)
            bound = lasso_bound(live, np.delete(np.asarray(alone), 3, 0), float(kkt) + float(kkts[k]))
            assert_close(coefs[k], alone, bound, what=f"path entry {k}")
