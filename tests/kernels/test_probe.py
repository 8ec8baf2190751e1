"""jneuron.kernels.probe, jitted and not, against float64 numpy: the elastic-net penalty, the written-out
gradient of the masked, padded loss, the metrics, per-class sums, and training that keeps masked neurons at
exactly zero."""

import chex
import jax.numpy as jnp
import numpy as np

from jneuron.kernels import probe
from tests.kernels.variants import KernelTest
from tests.tolerance import assert_close, tolerance

SETTINGS, CLASSES, NEURONS, TOKENS = 2, 3, 5, 64


def reference_gradient(weight, bias, x, y, valid, masks, l1, l2):
    """d/d(weight, bias) of the batch-mean cross-entropy plus NeuroX's penalty, per setting, in float64, and
    ``|d loss / d output|`` per token (the magnitude of the terms the gradient sums)."""
    w = weight * masks[:, None, :]
    out = np.einsum("scn,tn->sct", w, x) + bias[:, :, None]
    out -= out.max(1, keepdims=True)
    p = np.exp(out) / np.exp(out).sum(1, keepdims=True)
    d_out = (p - np.eye(CLASSES)[y].T[None]) * valid[None, None, :]
    count = valid.sum()
    d_weight = np.einsum("sct,tn->scn", d_out, x) / count
    norm = np.sqrt((w * w).sum(axis=(1, 2)))[:, None, None]
    d_weight += l1[:, None, None] * np.sign(w) + l2[:, None, None] * np.where(norm > 0, w / np.where(norm > 0, norm, 1), 0)
    return d_weight * masks[:, None, :], d_out.sum(2) / count, np.abs(d_out)


class ProbeTest(KernelTest):
    def batch(self):
        x = self.rng.normal(size=(TOKENS, NEURONS)).astype(np.float32)
        y = self.rng.integers(0, CLASSES, size=TOKENS).astype(np.int32)
        valid = (np.arange(TOKENS) < TOKENS - 9).astype(np.float32)  # a padded short batch
        weight = self.rng.normal(size=(SETTINGS, CLASSES, NEURONS)).astype(np.float32)
        weight[1] = 0.0  # the zero start: subgradients 0, not NaN
        bias = self.rng.normal(size=(SETTINGS, CLASSES)).astype(np.float32)
        masks = np.ones((SETTINGS, NEURONS), np.float32)
        masks[0, 3] = 0.0
        return x, y, valid, weight, bias, masks

    @chex.variants(with_jit=True, without_jit=True)
    def test_penalty_and_its_zero_subgradient(self):
        w = self.rng.normal(size=(SETTINGS, CLASSES, NEURONS)).astype(np.float32)
        w[1] = 0.0
        l1, l2 = np.array([0.1, 0.2], np.float32), np.array([0.01, 0.3], np.float32)
        value = self.variant(lambda w, a, b: probe.penalty(w, a, b))(w, l1, l2)
        w64 = w.astype(np.float64)
        expected = l1 * np.abs(w64).sum(axis=(1, 2)) + l2 * np.sqrt((w64**2).sum(axis=(1, 2)))
        assert_close(value, expected, tolerance(CLASSES * NEURONS), l1 * np.abs(w64).sum((1, 2)) + l2 + 1e-30,
                     "penalty")
        squared = self.variant(lambda w, a, b: probe.penalty(w, a, b, squared=True))(w, l1, l2)
        assert_close(squared, l1 * np.abs(w64).sum((1, 2)) + l2 * (w64**2).sum((1, 2)), tolerance(CLASSES * NEURONS),
                     l1 * np.abs(w64).sum((1, 2)) + l2 * (w64**2).sum((1, 2)) + 1e-30, "squared penalty")
        grad = self.variant(lambda w, a, b: probe.penalty_gradient(w, None, a, b))(w, l1, l2)
        np.testing.assert_array_equal(np.asarray(grad)[1], 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradient_of_the_masked_padded_loss(self):
        x, y, valid, weight, bias, masks = self.batch()
        l1, l2 = np.array([0.05, 0.0], np.float32), np.array([0.01, 0.1], np.float32)
        d_weight, d_bias = self.variant(lambda *a: probe.gradient(*a, squared=False, regression=False))(
            (weight, bias), x, y, valid, masks, l1, l2)
        want_w, want_b, d_abs = reference_gradient(*(a.astype(np.float64) for a in (weight, bias, x)), y,
                                                       valid.astype(np.float64), masks.astype(np.float64), l1, l2)
        count = valid.sum()
        # sums over the valid tokens of terms |d_out| |x| (the softmax rounded to a few eps), over the count
        scale_w = np.einsum("sct,tn->scn", d_abs, np.abs(x.astype(np.float64))) / count + (l1 + l2)[:, None, None]
        assert_close(d_weight, want_w, tolerance(TOKENS), scale_w, "weight gradient")
        assert_close(d_bias, want_b, tolerance(TOKENS), d_abs.sum(2) / count, "bias gradient")
        np.testing.assert_array_equal(np.asarray(d_weight)[0, :, 3], 0.0)  # the masked neuron

    @chex.variants(with_jit=True, without_jit=True)
    def test_confusion_and_squared_error(self):
        x, y, _, weight, bias, masks = self.batch()
        counts = np.asarray(self.variant(lambda *a: probe.confusion(*a, CLASSES))((weight, bias), x, y, masks))
        out = np.einsum("scn,tn->tsc", weight.astype(np.float64) * masks[:, None, :], x) + bias[None]
        predicted = out.argmax(2)
        for s in range(SETTINGS):
            gold = np.bincount(y, minlength=CLASSES)
            hit = np.bincount(y[predicted[:, s] == y], minlength=CLASSES)
            said = np.bincount(predicted[:, s], minlength=CLASSES)
            np.testing.assert_array_equal(counts[s], np.stack([gold, hit, said]))
        target = (x[:, 0] * 2 + 1).astype(np.float32)
        w1, b1 = weight[:, :1], bias[:, :1]
        errors = self.variant(probe.squared_error)((w1, b1), x, target, masks)
        residual = np.einsum("sn,tn->ts", w1[:, 0].astype(np.float64) * masks, x) + b1[:, 0] - target[:, None]
        expected = np.stack([(residual**2).sum(0), np.full(SETTINGS, ((target - target.mean()) ** 2).sum())], axis=1)
        assert_close(errors, expected, tolerance(TOKENS), expected, "squared errors")

    @chex.variants(with_jit=True, without_jit=True)
    def test_training_keeps_masked_neurons_at_zero_and_learns_the_rest(self):
        x = self.rng.normal(size=(TOKENS, NEURONS)).astype(np.float32)
        y = (x[:, 1] > 0).astype(np.int32)
        masks = np.ones((SETTINGS, NEURONS), np.float32)
        masks[1, 1] = 0.0  # the informative neuron hidden from the second probe
        rows = np.tile(np.arange(TOKENS).reshape(8, 8), (15, 1))
        weight, bias = self.variant(lambda *a: probe.train(*a, classes=2, learning_rate=0.05))(
            jnp.asarray(x), jnp.asarray(y), masks, np.zeros(SETTINGS, np.float32), np.zeros(SETTINGS, np.float32),
            rows, np.ones(rows.shape, np.float32))  # the data as JAX arrays (indexed by traced batch rows)
        np.testing.assert_array_equal(np.asarray(weight)[1, :, 1], 0.0)
        counts = np.asarray(probe.confusion((weight, bias), x, y, masks, 2))
        assert counts[0, 1].sum() >= 0.95 * TOKENS  # the probe that sees the neuron learns it
        assert counts[1, 1].sum() < counts[0, 1].sum()
