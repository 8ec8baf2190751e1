"""jneuron.kernels.information, jitted and not, against numpy: exact joint counts (both counting methods),
class sums, the information measures from float32 counts against float64 definitions, the selectivity
index, and the first non-finite value of a stream."""

import math

import chex
import jax.numpy as jnp
import numpy as np

from jneuron.kernels import information as kinfo
from jneuron.kernels import quantize
from tests.kernels.variants import KernelTest
from tests.tolerance import assert_close, tolerance

BINS, CLASSES = 4, 3


def reference_counts(codes, labels):
    counts = np.zeros((codes.shape[1], BINS, CLASSES), np.int64)
    for j in range(codes.shape[1]):
        np.add.at(counts[j], (codes[:, j], labels), 1)
    return counts


def reference_measures(counts):
    """Entropy, mutual information and KL selectivity in bits, term by term in float64."""
    p = counts / counts.sum(axis=(1, 2), keepdims=True)
    p_bin, p_class = p.sum(2), p.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(p_bin > 0, p_bin * np.log2(p_bin), 0), axis=1)
        mi = np.nansum(np.where(p > 0, p * np.log2(p / (p_bin[:, :, None] * p_class[:, None, :])), 0), axis=(1, 2))
        given = p / p_class[:, None, :]
        kl = np.nansum(np.where(given > 0, given * np.log2(given / p_bin[:, :, None]), 0), axis=1)
    present = counts[0].sum(0) > 0
    return entropy, mi, np.where(present[None, :], kl, -np.inf).max(1)


class InformationTest(KernelTest):
    def labelled(self, tokens=300, neurons=5):
        labels = self.rng.integers(0, CLASSES - 1, size=tokens)  # the last class never occurs
        x = self.rng.normal(size=(tokens, neurons)) + labels[:, None] * [1.0, 0.0, 0.5, 2.0, 0.0]
        x[:, 4] = 1.0  # a dead neuron
        return (x + 100).astype(np.float32), labels.astype(np.int32)

    @chex.variants(with_jit=True, without_jit=True)
    def test_chunk_tables_count_exactly_and_skip_padding(self):
        x, labels = self.labelled()
        codes = np.asarray(quantize.uniform(x, x.min(0), x.max(0), BINS))
        pad = 7
        # finite padding: the contraction multiplies padding rows by 0, so NaN there would leak (0 * NaN)
        xp = np.vstack([x, np.full((pad, 5), 1e6, np.float32)])
        cp, lp = np.vstack([codes, np.zeros((pad, 5), np.int32)]), np.concatenate([labels, np.zeros(pad, np.int32)])
        shift = x.mean(0)
        centred = x.astype(np.float64) - shift
        expected_sums = np.stack([centred[labels == c].sum(0) for c in range(CLASSES)], axis=1)
        for method in ("contract", "segment"):
            counts, sums = self.variant(lambda *a, m=method: kinfo.chunk_tables(
                *a, bins=BINS, classes=CLASSES, method=m))(xp, cp, lp, len(x), shift)
            np.testing.assert_array_equal(counts, reference_counts(codes, labels), err_msg=method)
            magnitude = np.stack([np.abs(centred[labels == c]).sum(0) for c in range(CLASSES)], axis=1)
            assert_close(sums, expected_sums, tolerance(len(x)), magnitude, f"class sums ({method})")
        one_bit = self.variant(lambda c, l: kinfo.joint_counts(c, l, len(x), bins=2, classes=CLASSES))(
            cp[:, :2] > 1, lp)
        np.testing.assert_array_equal(one_bit[:, 1, :], reference_counts((codes[:, :2] > 1).astype(int), labels)[:, 1])

    @chex.variants(with_jit=True, without_jit=True)
    def test_measures_from_float32_counts(self):
        x, labels = self.labelled(tokens=2000)
        counts = reference_counts(np.asarray(quantize.uniform(x, x.min(0), x.max(0), BINS)), labels)
        measures = self.variant(lambda c: (kinfo.entropy(c), kinfo.mutual_information(c), kinfo.kl_selectivity(c),
                                           kinfo.label_entropy(c)))
        entropy, mi, kl, label_entropy = measures(jnp.asarray(counts, jnp.float32))
        expected = reference_measures(counts.astype(np.float64))
        # each is a sum of BINS * CLASSES terms p log2(ratio), |log2 ratio| <= log2(tokens)
        scale = math.log2(len(x)) + 1
        for actual, want, what in zip((entropy, mi, kl), expected, ("entropy", "mutual information", "KL")):
            assert_close(actual, want, tolerance(BINS * CLASSES), scale, what)
        shares = np.bincount(labels, minlength=CLASSES) / len(labels)
        want = -sum(p * math.log2(p) for p in shares if p > 0)
        assert_close(label_entropy, want, tolerance(CLASSES), scale, "label entropy")
        assert float(mi[4]) == 0.0 and float(entropy[4]) == 0.0  # the dead neuron

    @chex.variants(with_jit=True, without_jit=True)
    def test_class_selectivity_over_occurring_classes(self):
        means = np.abs(self.rng.normal(size=(6, CLASSES))).astype(np.float32)
        means[5] = 0.0  # dead: 0, not 0/0
        class_counts = np.array([10, 4, 0])
        actual = self.variant(kinfo.class_selectivity)(means, class_counts)
        m = means.astype(np.float64)[:, :2]
        top, rest = m.max(1), m.min(1)  # two occurring classes: the other one is the rest
        expected = (top - rest) / (top + rest + kinfo.SELECTIVITY_EPS)
        assert_close(actual, expected, tolerance(CLASSES), 1.0, "selectivity")
        assert float(actual[5]) == 0.0

    @chex.variants(with_jit=True, without_jit=True)
    def test_stream_of_chunks_locates_the_first_bad_value(self):
        x, labels = self.labelled(tokens=90)
        x[50, 2] = np.inf
        params = (jnp.asarray(x.min(0)), jnp.asarray(np.nanmax(np.where(np.isfinite(x), x, 0), 0)))

        def statistics(x, labels, row0):
            return kinfo.chunk_statistics(x, labels, len(x), row0, None, params, mode="uniform", bins=BINS,
                                          classes=CLASSES)

        chunk = self.variant(statistics)
        merge = self.variant(kinfo.merge)
        tables = kinfo.init(5, BINS, CLASSES)
        for start in range(0, 90, 30):
            tables = merge(tables, chunk(x[start:start + 30], labels[start:start + 30], jnp.asarray(start)))
        assert (int(tables.bad_row), int(tables.bad_col)) == (50, 2)
        assert int(np.asarray(tables.counts).sum()) == 90 * 5  # every valid token in one bin of every neuron
