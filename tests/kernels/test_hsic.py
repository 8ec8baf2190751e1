"""jneuron.kernels.hsic, jitted and not, against float64 numpy: the streamed row-norm moments and the
unbiased HSIC (Song et al., 2012) computed from them equal the token-by-token definition."""

import chex
import jax.numpy as jnp
import numpy as np

from jneuron.kernels import hsic
from tests.kernels.variants import KernelTest
from tests.similarity.test_measures import _hsic
from tests.tolerance import assert_close, tolerance

GROUPS = ((0, 3), (3, 5))


class HSICTest(KernelTest):
    def data(self, tokens=120, offset=0.0):
        x = self.rng.normal(size=(tokens, 5))
        x[:, 3:] += 0.8 * x[:, :2]
        return (x + offset).astype(np.float32)

    @chex.variants(with_jit=True, without_jit=True)
    def test_row_norm_moments_skip_padding(self):
        x = self.data()
        padded = np.vstack([x, np.full((8, 5), 1e3, np.float32)])
        q, u = self.variant(lambda x, n: hsic.row_norm_moments.__wrapped__(x, n, GROUPS))(padded, len(x))
        x64 = x.astype(np.float64)
        norms = np.stack([(x64[:, a:b] ** 2).sum(1) for a, b in GROUPS], axis=1)
        # sums of non-negative products of sums over at most 3 columns
        bound = tolerance(len(x)) + 2 * tolerance(3)
        assert_close(q, norms.T @ norms, bound, norms.T @ norms, "Q")
        assert_close(u, norms.T @ x64, bound, norms.T @ np.abs(x64), "U")

    @chex.variants(with_jit=True, without_jit=True)
    def test_unbiased_hsic_from_moments_about_a_reference(self):
        x = self.data(offset=3.0).astype(np.float64)  # a float64 pipeline: only the kernels' algebra is tested
        n = len(x)
        reference = x[:10].mean(0)
        q, u = (np.asarray(a, np.float64) for a in hsic.row_norm_moments(jnp.asarray(x - reference, jnp.float32), n,
                                                                       GROUPS))
        xc = x - x.mean(0)
        cross, delta = xc.T @ xc, x.mean(0) - reference
        (a, b), (c, d) = GROUPS

        def product_and_hsic(q01, u01, u10, c01, tr0, tr1, d0, d1):
            moved = hsic.centred_row_products(q01, u01, u10, c01, tr0, tr1, d0, d1, n)
            return moved, hsic.debiased_hsic(c01, moved, tr0, tr1, n)

        args = (q[0, 1], u[0, c:d], u[1, a:b], cross[a:b, c:d], np.trace(cross[a:b, a:b]),
                np.trace(cross[c:d, c:d]), delta[a:b], delta[c:d])
        moved, value = self.variant(product_and_hsic)(*(jnp.asarray(v, jnp.float32) for v in args))
        exact = np.sum((xc[:, a:b] ** 2).sum(1) * (xc[:, c:d] ** 2).sum(1))
        # Q and U were summed in float32 about a reference |offset| ~ 3 sd away from the mean (magnitude)
        spread = np.sum((np.abs(x - reference)[:, a:b] ** 2).sum(1) * (np.abs(x - reference)[:, c:d] ** 2).sum(1))
        assert_close(moved, exact, tolerance(n, magnitude=4.0), spread, "row products about the mean")
        gram_x, gram_y = xc[:, a:b] @ xc[:, a:b].T, xc[:, c:d] @ xc[:, c:d].T
        expected = _hsic(gram_x, gram_y, True) * n * (n - 3)  # the token-space estimator's normalisation
        scale = np.sum(cross[a:b, c:d] ** 2) + n / (n - 2) * spread
        assert_close(value, expected, tolerance(n, magnitude=4.0), scale, "unbiased HSIC")
