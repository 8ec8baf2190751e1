"""jneuron.kernels.maxcorr, jitted and not, against float64 numpy: correlation tiles from compensated
cross-products, best partners per column segment and per column (ties to the lower index), dead neurons."""

import chex
import jax.numpy as jnp
import numpy as np

from jneuron.kernels import compensated as comp
from jneuron.kernels import maxcorr as kmax
from tests.kernels.variants import KernelTest
from tests.tolerance import assert_close, tolerance

SEGMENTS = ((0, 3), (3, 7))


def tile_inputs(x, y):
    """A float32 compensated cross-product tile between ``x``'s and ``y``'s neurons and inverse root sums of
    squares (0 for a dead neuron), as the streaming pass hands them to the kernel."""
    xc, yc = (np.asarray(a, np.float64) - np.asarray(a, np.float64).mean(0) for a in (x, y))
    cross = xc.T @ yc
    hi = cross.astype(np.float32)
    pair = comp.Pair(jnp.asarray(hi), jnp.asarray((cross - hi).astype(np.float32)))

    def inv(a):
        ss = (a * a).sum(0)
        return jnp.asarray(np.where(ss > 0, 1 / np.sqrt(np.where(ss > 0, ss, 1)), 0), jnp.float32)

    return pair, inv(xc), inv(yc)


def reference_correlations(x, y):
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(np.asarray(x, np.float64), np.asarray(y, np.float64), rowvar=False)
    return np.nan_to_num(corr[: x.shape[1], x.shape[1]:], nan=0.0)


class MaxCorrTest(KernelTest):
    def layers(self, tokens=300):
        x = self.rng.normal(size=(tokens, 4))
        y = np.hstack([x[:, [2]] * -3 + 0.1 * self.rng.normal(size=(tokens, 1)), self.rng.normal(size=(tokens, 6))])
        y[:, 5] = y[:, 4]  # a tie between two units of the second segment
        y[:, 1] = 7.0  # dead
        return (x + 1e3).astype(np.float32), y.astype(np.float32)

    @chex.variants(with_jit=True, without_jit=True)
    def test_correlation_tile_and_dead_neurons(self):
        x, y = self.layers()
        corr = self.variant(kmax.correlation_tile)(*tile_inputs(x, y))
        # the tile's inputs are float64 values rounded to float32: a few roundings of a value in [-1, 1]
        assert_close(corr, reference_correlations(x, y), tolerance(1), 1.0, "correlations")
        np.testing.assert_array_equal(np.asarray(corr)[:, 1], 0.0)
        assert np.all(np.abs(np.asarray(corr)) <= 1.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_partners_per_segment_and_column_with_ties_to_the_lower_index(self):
        x, y = self.layers()
        rows, cols = self.variant(lambda *a: kmax.reduce_tile.__wrapped__(*a, SEGMENTS))(*tile_inputs(x, y))
        corr = reference_correlations(x, y)
        for s, (start, stop) in enumerate(SEGMENTS):
            block = corr[:, start:stop]
            best = np.abs(block).max(1)
            # the chosen unit is the lowest index whose |rho| is the best within rounding
            chosen = np.abs(block[np.arange(len(block)), np.asarray(rows.unit)[:, s]])
            assert_close(chosen, best, 2 * tolerance(1), 1.0, f"|rho| of the partner in segment {s}")
            assert_close(rows.rho[:, s], block[np.arange(len(block)), np.asarray(rows.unit)[:, s]], tolerance(1),
                         1.0, f"rho of the partner in segment {s}")
        ties = np.asarray(rows.unit)[:, 1]
        assert not np.any(ties == 5 - 3)  # units 4 and 5 of y are equal: the lower one (index 1 of segment 1) wins
        assert int(rows.unit[2, 0]) == 0 and float(rows.rho[2, 0]) < -0.99  # x2 ~ -3 y0
        np.testing.assert_array_equal(cols.unit, np.abs(corr).argmax(0))
        assert_close(cols.rho, corr[np.asarray(cols.unit), np.arange(corr.shape[1])], tolerance(1), 1.0, "column rho")
