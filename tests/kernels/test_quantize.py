"""jneuron.kernels.quantize, jitted and not, against numpy: the codes are integers, so they must match exactly."""

import chex
import numpy as np

from jneuron.kernels import quantize
from tests.kernels.variants import KernelTest
from tests.tolerance import assert_close, tolerance


class QuantizeTest(KernelTest):
    def data(self, rows=50, neurons=4):
        x = self.rng.normal(size=(rows, neurons)).astype(np.float32)
        x[:, -1] = 0.5  # a dead neuron
        return x

    @chex.variants(with_jit=True, without_jit=True)
    def test_threshold_per_neuron_and_shared(self):
        x = self.data()
        cut = np.array([0.0, 0.5, -0.5, 0.5], np.float32)
        np.testing.assert_array_equal(self.variant(quantize.threshold)(x, cut), (x > cut).astype(np.int32))
        np.testing.assert_array_equal(self.variant(quantize.threshold)(x, 0.25), (x > 0.25).astype(np.int32))

    @chex.variants(with_jit=True, without_jit=True)
    def test_uniform_bins_clip_and_dead_neurons_take_bin_zero(self):
        x = self.data()
        low, high = x.min(0), x.max(0)
        codes = np.asarray(self.variant(lambda x, lo, hi: quantize.uniform(x, lo, hi, 5))(x, low, high))
        width = np.where(high > low, high - low, 1)
        expected = np.clip(np.floor((x - low) * (5 / width)), 0, 4).astype(np.int32)
        expected[:, -1] = 0
        np.testing.assert_array_equal(codes, expected)
        assert codes[x[:, 0] == high[0], 0].tolist() == [4]  # the top edge belongs to the last bin
        outside = self.variant(lambda x: quantize.uniform(x, -0.1, 0.1, 3))(np.array([[-9.0], [9.0]], np.float32))
        np.testing.assert_array_equal(outside, [[0], [2]])

    @chex.variants(with_jit=True, without_jit=True)
    def test_digitize_counts_edges_below(self):
        x = self.data(neurons=3)
        edges = np.sort(self.rng.normal(size=(3, 4)).astype(np.float32), axis=1)
        expected = np.stack([np.searchsorted(edges[j], x[:, j], side="left") for j in range(3)], axis=1)
        np.testing.assert_array_equal(self.variant(quantize.digitize)(x, edges), expected)
        via_apply = self.variant(lambda x, e: quantize.apply(x, "edges", (e,), 5))(x, edges)
        np.testing.assert_array_equal(via_apply, expected)

    @chex.variants(with_jit=True, without_jit=True)
    def test_minmax_and_histogram_skip_padding(self):
        x = self.data(rows=40)
        padded = np.vstack([x, np.full((6, 4), 1e6, np.float32)])
        low, high = self.variant(quantize.minmax)(padded, 40)
        np.testing.assert_array_equal(low, x.min(0))
        np.testing.assert_array_equal(high, x.max(0))
        counts = np.asarray(self.variant(lambda *a: quantize.histogram(*a, 8))(padded, 40, low, high))
        codes = np.asarray(quantize.uniform(x, low, high, 8))
        expected = np.stack([np.bincount(codes[:, j], minlength=8) for j in range(4)])
        np.testing.assert_array_equal(counts, expected)
        assert counts.sum(1).tolist() == [40] * 4

    @chex.variants(with_jit=True, without_jit=True)
    def test_quantile_edges_are_exact_to_one_fine_bin(self):
        x = self.rng.normal(size=(4000, 3)).astype(np.float32)
        low, high = x.min(0), x.max(0)
        resolution = 256
        counts = quantize.histogram(x, len(x), low, high, resolution)
        edges = np.asarray(self.variant(lambda *a: quantize.quantile_edges(*a, 4))(counts, low, high))
        expected = np.quantile(x.astype(np.float64), [0.25, 0.5, 0.75], axis=0).T
        # the interpolation inside one fine bin is off by at most that bin's width (and float32 roundings of it)
        fine = (high.astype(np.float64) - low) / resolution
        assert_close(edges, expected, 1.0, fine[:, None] * (1 + tolerance(resolution)), "quantile edges")
        assert np.all(np.diff(edges, axis=1) >= 0)
