"""jneuron.kernels.moments, jitted and not, against float64 numpy: chunk co-moments, Chan's merge, padding,
the first non-finite value, the two-stage update (centre, then merge products), and the exact minima and
maxima (through padding, merges, power-of-two scaling and float64)."""

import chex
import jax.numpy as jnp
import numpy as np

from jneuron.kernels import moments
from jneuron.kernels.moments import Tile
from tests.kernels.variants import KernelTest
from tests.reference import assert_cov_close, assert_mean_close, x64
from tests.tolerance import assert_close, tolerance

FULL = (Tile(0, 5, 0, 5),)
BLOCKS = (Tile(0, 2, 2, 5), Tile(2, 5, 2, 5))


class MomentsTest(KernelTest):
    def data(self, rows=60, offset=1e3):
        return (self.rng.normal(size=(rows, 5)) * [1, 2, 0.5, 3, 1] + offset).astype(np.float32)

    @chex.variants(with_jit=True, without_jit=True)
    def test_chunk_stats_ignore_padding_rows(self):
        x = self.data()
        padded = np.vstack([x, np.full((4, 5), 7e3, np.float32)])
        stats = self.variant(lambda x, n: moments.chunk_stats(x, n, FULL))(padded, len(x))
        assert int(stats.count) == len(x)
        assert_mean_close(moments.mean64(stats), x, tolerance(len(x)))
        assert_cov_close(moments.cross_value64(stats, 0), x, ddof=None)
        off_diagonal = moments.cross_value64(stats, 0) * (1 - np.eye(5))
        assert_cov_close(np.diag(moments.m2_64(stats)) + off_diagonal, x, ddof=None)  # the sums of squares

    @chex.variants(with_jit=True, without_jit=True)
    def test_merge_of_chunks_equals_the_whole(self):
        x = self.data(rows=97, offset=1e4)
        chunk = self.variant(lambda x, n: moments.chunk_stats(x, n, BLOCKS))
        merge = self.variant(lambda a, b: moments.merge(a, b, BLOCKS))
        stats = moments.init(5, BLOCKS)
        for part in np.array_split(x, [13, 50, 51]):  # uneven chunks, one of a single row
            stats = merge(stats, chunk(part, len(part)))
        assert int(stats.count) == len(x)
        assert_mean_close(moments.mean64(stats), x, tolerance(len(x)))
        cross = np.cov(x.astype(np.float64), rowvar=False, ddof=0) * len(x)
        for index, t in enumerate(BLOCKS):
            expected_x = x[:, t.r0:t.r1], x[:, t.c0:t.c1]
            sd_rows, sd_cols = (part.astype(np.float64).std(0) for part in expected_x)
            assert_close(moments.cross_value64(stats, index), cross[t.r0:t.r1, t.c0:t.c1], tolerance(len(x)),
                         len(x) * np.outer(sd_rows, sd_cols), f"cross-product tile {index}")

    @chex.variants(with_jit=True, without_jit=True)
    def test_first_non_finite_value_is_located_and_padding_is_not(self):
        x = self.data(rows=20)
        x[7, 3], x[12, 1] = np.nan, np.inf
        padded = np.vstack([x, np.full((3, 5), np.nan, np.float32)])
        chunk = self.variant(lambda x, n: moments.chunk_stats(x, n, FULL))
        first = chunk(padded, len(x))
        assert (int(first.bad_row), int(first.bad_col)) == (7, 3)
        clean = chunk(np.vstack([self.data(rows=20), padded[20:]]), 20)  # NaN rows sit in the padding only
        assert int(clean.bad_row) == moments.NO_BAD_ROW
        merged = self.variant(lambda a, b: moments.merge(a, b, FULL))(clean, first)
        assert (int(merged.bad_row), int(merged.bad_col)) == (20 + 7, 3)  # rows counted across chunks

    @chex.variants(with_jit=True, without_jit=True)
    def test_centre_then_merge_products_equals_update(self):
        x = self.data(rows=80, offset=-5e3)
        stats = moments.init(5, FULL)
        for part in np.array_split(x, 3):
            chunk, centred = self.variant(lambda x, n: moments.centred_chunk(x, n))(part, len(part))
            product = jnp.matmul(centred.T, centred, precision="highest")
            stats = moments.merge_products(stats, chunk, (product,), FULL, jnp.zeros(5, jnp.float32))
        assert int(stats.count) == len(x)
        assert_mean_close(moments.mean64(stats), x, tolerance(len(x)))
        assert_cov_close(moments.cross_value64(stats, 0), x, ddof=None)

    def assert_range(self, stats, x, scaled: bool = False, exponents=0):
        """``low`` and ``high`` are exactly the columns' minima and maxima (times ``2**exponents``): a
        minimum rounds nothing, so no tolerance."""
        low, high = moments.range64(stats, scaled=scaled)
        x = np.asarray(x, np.float64)
        np.testing.assert_array_equal(low, np.ldexp(x.min(0), exponents))
        np.testing.assert_array_equal(high, np.ldexp(x.max(0), exponents))

    @chex.variants(with_jit=True, without_jit=True)
    def test_minimum_and_maximum_skip_padding_and_merge_exactly(self):
        x = self.data(rows=97, offset=1e4)
        chunk = self.variant(lambda x, n: moments.chunk_stats(x, n, BLOCKS))
        merge = self.variant(lambda a, b: moments.merge(a, b, BLOCKS))
        stats = moments.init(5, BLOCKS)
        assert np.all(np.asarray(stats.low) == np.inf) and np.all(np.asarray(stats.high) == -np.inf)  # none read
        for part in np.array_split(x, [13, 50, 51]):  # uneven chunks, one of a single row
            padding = np.tile(np.float32([[-1e6], [1e6]]), (2, 5))  # would be the minimum and maximum if read
            stats = merge(stats, chunk(np.vstack([part, padding]), len(part)))
        assert stats.low.dtype == stats.high.dtype == np.float32
        self.assert_range(stats, x)

    @chex.variants(with_jit=True, without_jit=True)
    def test_minimum_and_maximum_of_the_finite_values(self):
        x = self.data(rows=20)
        x[7, 3], x[12, 1] = np.nan, -np.inf  # an error for the pass; the range holds what is finite
        stats = self.variant(lambda x, n: moments.chunk_stats(x, n, FULL))(x, len(x))
        finite = np.where(np.isfinite(x), x, np.nan).astype(np.float64)
        np.testing.assert_array_equal(moments.range64(stats)[0], np.nanmin(finite, 0))
        np.testing.assert_array_equal(moments.range64(stats)[1], np.nanmax(finite, 0))

    @chex.variants(with_jit=True, without_jit=True)
    def test_minimum_and_maximum_move_with_the_scaling_exactly(self):
        rescale = self.variant(lambda stats, shift: moments.rescale(stats, shift, FULL))
        for factor in (1e-30, 1e20):
            x = (self.data(rows=90) * np.float32(factor)).astype(np.float32)
            first = moments.choose_exponents(np.zeros(5, np.int32), np.zeros(5), np.abs(x[:30]).max(0))
            stats = moments.rescaled(moments.init(5, FULL), first, FULL)
            stats = moments.update(stats, x[:30], 30, FULL)
            later = first - 3  # as if a larger value came: the running statistics move to the new exponents
            stats = rescale(stats, later - first)._replace(scale=moments.make_scale(later, FULL))
            for part in np.array_split(x[30:], 2):
                stats = moments.update(stats, part, len(part), FULL)
            self.assert_range(stats, x)  # unscaled in host float64
            self.assert_range(stats, x, scaled=True, exponents=later)  # held as the scaled data's

    @chex.variants(with_jit=True, without_jit=True)
    def test_minimum_and_maximum_of_float64_data(self):
        x = self.rng.normal(size=(50, 5)) * 1e-3 + 1e8  # float32 would round these together
        with x64():
            chunk = self.variant(lambda x, n: moments.chunk_stats(x, n, FULL, jnp.float64))
            merge = self.variant(lambda a, b: moments.merge(a, b, FULL))
            stats = merge(chunk(x[:20], 20), chunk(x[20:], 30))
            assert stats.low.dtype == np.float64
            self.assert_range(stats, x)
