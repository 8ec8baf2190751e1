"""jneuron.kernels.cca on float32 JAX covariance blocks, jitted and not, against float64 references on the
data themselves (pivoted QR and SVD; Gram-matrix CKA; least squares)."""

import chex
import jax.numpy as jnp
import numpy as np

from jneuron.kernels import cca as kcca
from tests.kernels.variants import KernelTest
from tests.reference import cca_bound, cka_bound, pca_condition, pwcca_bound, rho_bound
from tests.similarity.test_measures import ref_cca, ref_cka, ref_pwcca, ref_svcca
from tests.tolerance import assert_close, tolerance

DX, DY, TOKENS = 6, 4, 500
RTOL = 1e-6  # the whitening floor jneuron uses for float32 co-moments


def blocks(x, y):
    """The covariance blocks ``cxx, cyy, cxy`` rounded once to float32 JAX arrays (what the pass hands over)."""
    c = np.cov(np.hstack([x, y]).astype(np.float64), rowvar=False)
    dx = x.shape[1]
    return tuple(jnp.asarray(b, jnp.float32) for b in (c[:dx, :dx], c[dx:, dx:], c[:dx, dx:]))


class CCATest(KernelTest):
    def pair(self, offset=0.0):
        z = self.rng.normal(size=(TOKENS, 3))
        x = z @ self.rng.normal(size=(3, DX)) + self.rng.normal(size=(TOKENS, DX)) + offset
        y = np.tanh(z @ self.rng.normal(size=(3, DY))) + 0.5 * self.rng.normal(size=(TOKENS, DY)) - offset
        return x.astype(np.float32), y.astype(np.float32)

    def rho_close(self, actual, x, y, expected, what):
        # the float32 co-moments amplified by the whitening, and eigh of the squared correlations in float32
        bound = rho_bound(cca_bound(x, y), expected, max(DX, DY), np.float32)
        assert_close(actual, expected, 1.0, bound, what)

    @chex.variants(with_jit=True, without_jit=True)
    def test_cca_correlations_and_directions(self):
        x, y = self.pair(offset=1e3)
        result = self.variant(lambda *b: kcca.cca(*b, RTOL))(*blocks(x, y))
        expected = ref_cca(x, y)
        self.rho_close(result.rho, x, y, expected, "canonical correlations")
        assert (int(result.kept_x), int(result.kept_y), int(result.valid)) == (DX, DY, DY)
        # the directions give unit-variance variates whose pairwise correlations are the rho
        xc, yc = (np.asarray(a, np.float64) - np.asarray(a, np.float64).mean(0) for a in (x, y))
        u, v = xc @ np.asarray(result.a, np.float64), yc @ np.asarray(result.b, np.float64)
        variates = np.corrcoef(u.T, v.T)[:DY, DY:].diagonal()
        self.rho_close(variates, x, y, expected, "correlations of the canonical variates")
        assert_close(u.std(0, ddof=1), np.ones(DY), cca_bound(x, y), what="variance of the x variates")
        fast = self.variant(lambda *b: kcca.correlations(kcca.prepare(b[0], RTOL), kcca.prepare(b[1], RTOL), b[2]))
        self.rho_close(fast(*blocks(x, y)), x, y, expected, "correlations without directions")

    @chex.variants(with_jit=True, without_jit=True)
    def test_dead_and_duplicated_neurons_are_floored(self):
        x, y = self.pair()
        x[:, 2] = 5.0  # dead
        x[:, 4] = x[:, 0]  # duplicated
        result = self.variant(lambda *b: kcca.cca(*b, RTOL))(*blocks(x, y))
        assert int(result.kept_x) == DX - 2 and np.all(np.isfinite(np.asarray(result.rho)))
        np.testing.assert_array_equal(np.asarray(result.a)[2], 0.0)  # the dead neuron has no weight
        live = np.delete(x, [2, 4], axis=1)
        self.rho_close(result.rho, live, y, ref_cca(live, y), "canonical correlations of the live neurons")

    @chex.variants(with_jit=True, without_jit=True)
    def test_svcca_with_a_count_of_components(self):
        x, y = self.pair()
        result = self.variant(lambda *b: kcca.svcca(*b, RTOL, keep=3))(*blocks(x, y))
        expected = ref_svcca(x, y, 3)
        assert (int(result.kept_x), int(result.kept_y), int(result.valid)) == (3, 3, 3)
        condition = max(pca_condition(x, 3), pca_condition(y, 3))
        bound = rho_bound(tolerance(TOKENS, condition=condition), expected, max(DX, DY), np.float32)
        assert_close(result.rho[:3], expected, 1.0, bound, "SVCCA correlations")
        np.testing.assert_array_equal(np.asarray(result.rho)[3:], 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_pwcca_weights(self):
        x, y = self.pair(offset=1e3)

        def pwcca(cxx, cyy, cxy):
            r = kcca.cca(cxx, cyy, cxy, RTOL)
            return jnp.sum(kcca.projection_weights(cxx, r.a) * r.rho)

        assert_close(self.variant(pwcca)(*blocks(x, y)), ref_pwcca(x, y), pwcca_bound(x, y), what="PWCCA")

    @chex.variants(with_jit=True, without_jit=True)
    def test_linear_cka_and_a_constant_side(self):
        x, y = self.pair(offset=1e3)
        cka = self.variant(kcca.linear_cka)
        assert_close(cka(*blocks(x, y)), ref_cka(x, y), cka_bound(x, y), what="linear CKA")
        assert float(cka(*blocks(x, np.ones_like(y)))) == 0.0

    @chex.variants(with_jit=True, without_jit=True)
    def test_explained_variance_is_the_least_squares_r2(self):
        x, y = self.pair()
        y[:, 1] = -2.0  # a constant target explains nothing
        cxx, cyy, cxy = blocks(x, y)
        r2 = self.variant(lambda cxx, cxy, var: kcca.explained_variance(kcca.prepare(cxx, RTOL), cxy, var))(
            cxx, cxy, jnp.diagonal(cyy))
        design = np.hstack([np.ones((TOKENS, 1)), x.astype(np.float64)])
        fitted = design @ np.linalg.lstsq(design, y.astype(np.float64), rcond=None)[0]
        residual = ((y - fitted) ** 2).sum(0)
        total = ((y - y.astype(np.float64).mean(0)) ** 2).sum(0)
        expected = np.where(total > 0, 1 - residual / np.where(total > 0, total, 1), 0)
        assert_close(r2, expected, cca_bound(x, y), what="R^2")
