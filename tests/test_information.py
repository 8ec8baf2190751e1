"""Information measures and class selectivity against per-neuron float64 numpy loops, plus their identities."""

import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jneuron as jn
from jneuron.kernels import information as kinfo
from jneuron.kernels import quantize as kquant
from tests.tolerance import assert_close, tolerance


def measure_slack(bins: int, classes: int, dtype=np.float64) -> float:
    """Rounding of an entropy-type sum over the ``bins x classes`` cells: each term ``p log p`` (or a log of a
    ratio of counts) rounds relative to ``p |log p|``, whose sum over the joint and the two marginals is at
    most ``3 log2(cells)`` bits: the natural scale of H, I and D."""
    return tolerance(bins * classes, dtype) * 3 * math.log2(max(bins * classes, 2))


def class_mean_error(x: np.ndarray, labels: np.ndarray, classes: int, first_chunk: int | None = None,
                     dtype=np.float32) -> np.ndarray:
    """``(neurons, classes)`` bound on the error of class means from class sums in ``dtype``.

    Each chunk's sums are dot products in ``dtype`` (merged across chunks compensated), so over ``n`` tokens
    they are off by at most ``tolerance(n, dtype) sum |x - shift|``: the shift is the first chunk's mean where some
    neuron's mean is large against its spread (``jn.information.OFFSET_RATIO``), else 0; ``x - shift`` is
    exact where ``x`` lies within a factor 2 of the shift (Sterbenz) and 0 - 0 otherwise. Then a division and
    the shift added back in float64.
    """
    x = np.asarray(x, np.float64)
    first = x[:first_chunk or len(x)]
    offset = np.abs(first.mean(0)) > jn.information.OFFSET_RATIO * first.std(0)
    shift = first.mean(0) if offset.any() else np.zeros(x.shape[1])
    error = np.full((x.shape[1], classes), np.nan)
    for c in range(classes):
        rows = x[labels == c]
        if len(rows):
            error[:, c] = (tolerance(len(x), dtype) * np.abs(rows - shift).mean(0)
                           + tolerance(1, np.float64) * np.abs(rows.mean(0)))
    return error


def class_means(x: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """``(neurons, classes)`` float64 class means, NaN for absent classes."""
    x = np.asarray(x, np.float64)
    return np.stack([x[labels == c].mean(0) if np.any(labels == c) else np.full(x.shape[1], np.nan)
                     for c in range(classes)], axis=1)


def selectivity_bound(means: np.ndarray, error: np.ndarray, dtype=np.float64, eps: float = 1e-7) -> np.ndarray:
    """How far ``(a - r) / (a + r + eps)`` (``a`` the top class mean, ``r`` the others' mean) moves when each
    class mean may be off by ``error``: ``2 (|r| da + |a| dr) / (a + r + eps)^2``, plus its own few roundings
    in ``dtype`` relative to ``(|a| + |r|) / |a + r + eps|`` (the cancellation in the numerator)."""
    present = ~np.isnan(means[0])
    m, err = means[:, present], np.nanmax(error[:, present], axis=1)
    top = m.max(axis=1)
    rest = (m.sum(axis=1) - top) / (m.shape[1] - 1)
    denominator = top + rest + eps
    moved = 2 * (np.abs(rest) * err + np.abs(top) * err) / denominator**2
    return moved + tolerance(m.shape[1], dtype) * (np.abs(top) + np.abs(rest)) / np.abs(denominator)


def reference(codes: np.ndarray, labels: np.ndarray, classes: int, bins: int) -> dict:
    """Per-neuron loops in float64: counts, H, I, KL selectivity (bits)."""
    tokens, neurons = codes.shape
    out = {k: np.zeros(neurons) for k in ("entropy", "mutual_information", "kl_selectivity")}
    out["counts"] = np.zeros((neurons, bins, classes), np.int64)
    p_y = np.array([np.sum(labels == c) for c in range(classes)], float) / tokens
    for j in range(neurons):
        n = np.zeros((bins, classes))
        for t in range(tokens):
            n[codes[t, j], labels[t]] += 1
        out["counts"][j] = n
        p = n / tokens
        p_t = p.sum(axis=1)
        out["entropy"][j] = -sum(q * math.log2(q) for q in p_t if q > 0)
        out["mutual_information"][j] = sum(p[b, c] * math.log2(p[b, c] / (p_t[b] * p_y[c]))
                                           for b in range(bins) for c in range(classes) if p[b, c] > 0)
        kls = []
        for c in range(classes):
            if p_y[c] == 0:
                continue
            cond = n[:, c] / n[:, c].sum()
            kls.append(sum(cond[b] * math.log2(cond[b] / p_t[b]) for b in range(bins) if cond[b] > 0))
        out["kl_selectivity"][j] = max(kls)
    return out


def reference_selectivity(x: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    x = x.astype(np.float64)
    result = []
    for j in range(x.shape[1]):
        means = [x[labels == c, j].mean() for c in np.unique(labels)]
        top = int(np.argmax(means))
        rest = np.mean([m for i, m in enumerate(means) if i != top])
        result.append((means[top] - rest) / (means[top] + rest + eps))
    return np.array(result)


def planted(rng, tokens=600, classes=4):
    labels = rng.integers(0, classes, tokens)
    x = rng.random((tokens, 7)).astype(np.float32)
    x[:, 0] = (labels == 1) * 0.8 + 0.1  # detects class 1
    x[:, 1] = 0.5  # constant, exactly at the threshold (0.5 is "off")
    x[:, 2] = 0.0  # dead
    x[:, 3] = np.where(rng.random(tokens) < 0.9, x[:, 0], 1 - x[:, 0])  # noisy copy of unit 0
    return x, labels


def check_against_reference(info, codes, labels, classes, bins):
    ref = reference(codes, labels, classes, bins)
    np.testing.assert_array_equal(info.counts, ref["counts"])
    for name in ("entropy", "mutual_information", "kl_selectivity"):  # float64 on the host, from exact counts
        assert_close(getattr(info, name), ref[name], measure_slack(bins, classes), what=name)


@pytest.mark.parametrize("devices", [None, 2])  # None: unsharded; 2: tokens over the 2 devices of every test process
def test_threshold_matches_reference_on_random_and_planted(rng, devices):
    x, labels = planted(rng)
    with pytest.warns(jn.DeadNeuronWarning, match="2 constant neuron.*model0/1, model0/2"):
        info = jn.neuron_information(x, labels, devices=devices)
    check_against_reference(info, (x > 0.5).astype(int), labels, 4, 2)
    means = class_means(x, labels, 4)
    assert_close(info.selectivity, reference_selectivity(x, labels), 1.0,
                 selectivity_bound(means, class_mean_error(x, labels, 4)), "selectivity")
    assert info.unit == "bits" and info.entropy[1] == 0 and info.mutual_information[2] == 0
    assert info.selectivity[2] == 0.0  # dead unit: eps keeps 0/0 away
    assert set(info.dead.tolist()) == {1, 2}
    assert info.ranking("mutual_information").order[:2].tolist() == [0, 3]


def test_uniform_and_quantile_bins_match_reference(rng):
    x = rng.normal(size=(500, 5)).astype(np.float32) * np.array([1, 3, 0.1, 10, 1], np.float32) + 1e3
    labels = rng.integers(0, 3, 500)
    low, high = x.min(axis=0).astype(np.float64), x.max(axis=0).astype(np.float64)
    info = jn.neuron_information(x, labels, quantize="uniform", bins=4)
    codes = np.asarray(kquant.uniform(jnp.asarray(x), jnp.asarray(low, jnp.float32),
                                      jnp.asarray(high, jnp.float32), 4))
    check_against_reference(info, codes, labels, 3, 4)
    assert set(np.unique(codes)) == {0, 1, 2, 3}

    given_range = jn.neuron_information(x, labels, quantize="uniform", bins=3, value_range=(999.0, 1001.0))
    ref_codes = np.clip(np.floor((x.astype(np.float64) - 999.0) / 2.0 * 3), 0, 2).astype(int)
    check_against_reference(given_range, ref_codes, labels, 3, 3)

    quant = jn.neuron_information(x, labels, quantize="quantile", bins=4)
    edges = np.asarray(quant.quantization["edges"])
    codes = (x[:, :, None] > edges[None].astype(np.float32)).sum(-1)
    check_against_reference(quant, codes, labels, 3, 4)
    per_bin = quant.counts.sum(axis=2)
    assert np.all(np.abs(per_bin - 125) <= 6), per_bin  # equal-count bins, up to one fine bin of the range
    exact = np.quantile(x.astype(np.float64), [0.25, 0.5, 0.75], axis=0).T
    assert np.all(np.abs(edges - exact) <= (high - low)[:, None] / 1024 * 2)


@pytest.mark.filterwarnings("ignore::jneuron.DeadNeuronWarning")  # planted constant neurons
def test_identities_on_planted_label_copy_and_constant(rng):
    labels = rng.integers(0, 5, 1000)
    x = np.stack([labels / 4, np.full(1000, 0.3), rng.random(1000)], axis=1)
    info = jn.neuron_information(x, labels, quantize="uniform", bins=5, value_range=(0.0, 1.0))
    h_y = -sum(p * math.log2(p) for p in np.bincount(labels) / 1000)
    slack = measure_slack(5, 5)
    assert_close(info.label_entropy, h_y, slack, what="label entropy")
    assert_close(info.mutual_information[0], h_y, slack, what="I of a label copy")  # copies the label
    assert info.entropy[1] == 0 and info.mutual_information[1] == 0 and info.kl_selectivity[1] == 0
    nats = jn.neuron_information(x, labels, quantize="uniform", bins=5, value_range=(0.0, 1.0), unit="nats")
    assert_close(nats.mutual_information, info.mutual_information * math.log(2), 2 * slack, what="nats")


@given(st.integers(0, 2**31 - 1), st.integers(2, 6), st.integers(2, 5), st.integers(2, 60))
def test_information_identities(seed, classes, bins, tokens):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, tokens)
    labels[:2] = [0, 1]  # two classes at least
    counts = np.zeros((6, bins, classes), np.int64)
    codes = rng.integers(0, bins, (tokens, 6))
    codes[:, 5] = codes[0, 5]  # a constant neuron
    for j in range(6):
        np.add.at(counts[j], (codes[:, j], labels), 1)
    c = counts.astype(np.float64)
    mi, h = kinfo.mutual_information(c), kinfo.entropy(c)
    p_y = c[0].sum(axis=0) / tokens
    kl = kinfo.kl_per_class(c)
    slack = 2 * measure_slack(bins, classes)  # each side is a float64 sum over the cells
    assert_close(mi, kl @ p_y, slack, what="I = sum_y p(y) D(P(T|y) || P(T))")
    assert np.all(mi >= -slack) and np.all(mi <= np.minimum(h, kinfo.label_entropy(c)) + slack)
    assert h[5] == 0 and abs(mi[5]) <= slack
    assert np.all(kinfo.kl_selectivity(c) >= mi - slack)  # the max is at least the p(y)-weighted mean
    relabelled = c[:, rng.permutation(bins)][:, :, rng.permutation(classes)]  # renaming bins or classes
    for fn in (kinfo.mutual_information, kinfo.entropy, kinfo.kl_selectivity):
        assert_close(fn(relabelled), fn(c), slack, what=f"{fn.__name__} relabelled")


@pytest.mark.filterwarnings("ignore::jneuron.DeadNeuronWarning")  # planted constant neurons
def test_chunked_equals_whole_and_iterators(rng):
    x, labels = planted(rng, tokens=1003, classes=5)
    whole = jn.neuron_information(x, labels, quantize="quantile", bins=3)
    chunked = jn.neuron_information(x, labels, quantize="quantile", bins=3, chunk_tokens=97)
    pieces = [(x[i:i + 250], labels[i:i + 250]) for i in range(0, 1003, 250)]
    streamed = jn.neuron_information(lambda: iter(pieces), classes=5, quantize="quantile", bins=3, chunk_tokens=97)
    once = jn.neuron_information(iter(pieces), classes=5, threshold=0.5)
    listed = jn.neuron_information(pieces, classes=5, quantize="quantile", bins=3, chunk_tokens=97)
    np.testing.assert_array_equal(listed.counts, whole.counts)
    contracted = jn.neuron_information(x, labels, quantize="quantile", bins=3, counting="contract")
    np.testing.assert_array_equal(contracted.quantization["edges"], whole.quantization["edges"])
    for other in (chunked, streamed, contracted):
        np.testing.assert_array_equal(other.counts, whole.counts)
    np.testing.assert_array_equal(once.counts, jn.neuron_information(x, labels).counts)
    means = class_means(x, labels, 5)
    error = class_mean_error(x, labels, 5)
    for other in (chunked, streamed, contracted):  # two float32 passes each
        assert_close(other.class_means, whole.class_means, 2.0, error, "class means")
        assert_close(other.selectivity, whole.selectivity, 2.0, selectivity_bound(means, error), "selectivity")


def test_selectivity_with_offset_is_accurate(rng):
    labels = rng.integers(0, 3, 4000)
    x = (1e3 + rng.random((4000, 3)) + 0.01 * (labels[:, None] == np.arange(3))).astype(np.float32)
    info = jn.neuron_information(x, labels, threshold=1000.5, chunk_tokens=512)
    ref = reference_selectivity(x, labels)
    # the sums run over x - shift (shift ~ 1000.5): their rounding is relative to |x - shift| <= 0.51, not to
    # 1000; without the shift the class means would be off by ~1e-4 and the selectivity (~5e-6) by ~1e-7
    error = class_mean_error(x, labels, 3, first_chunk=512)
    means = class_means(x, labels, 3)
    assert_close(info.selectivity, ref, 1.0, selectivity_bound(means, error), "selectivity")
    assert_close(info.class_means, means, 1.0, error, "class means")


def test_layers_models_identity_and_json(rng, tmp_path):
    labels = rng.integers(0, 3, 200)
    acts = {"net": {"layers/0": rng.random((200, 4)), "layers/1": rng.random((200, 2))},
            "other": {"layers/0": rng.random((200, 3))}}
    info = jn.neuron_information(acts, labels)
    assert len(info.neurons) == 9 and info.neurons.label(5) == "net/layers/1/1"
    assert info.neurons.label(6) == "other/layers/0/0"
    flat = np.hstack([acts["net"]["layers/0"], acts["net"]["layers/1"], acts["other"]["layers/0"]])
    np.testing.assert_array_equal(info.counts, jn.neuron_information(flat, labels).counts)
    data = json.loads(info.to_json(tmp_path / "info.json").read_text())
    assert data["neurons"][5]["label"] == "net/layers/1/1"
    assert data["neurons"][5]["mutual_information"] == info.mutual_information[5]  # JSON keeps a float64 exactly
    ranking = info.ranking("selectivity")
    assert ranking.method == "selectivity" and ranking.top(1)[0]["index"] == int(np.argmax(info.selectivity))
    assert set(info.rankings()) == set(jn.information.MEASURES)


@pytest.mark.filterwarnings("ignore::jneuron.DeadNeuronWarning")  # planted constant neurons
def test_absent_classes_and_tiny_samples():
    x = np.array([[0.9, 0.1], [0.2, 0.1], [0.8, 0.1]], np.float32)
    labels = np.array([3, 0, 3])
    info = jn.neuron_information(x, labels, classes=6)
    check_against_reference(info, (x > 0.5).astype(int), labels, 6, 2)
    error = class_mean_error(x, labels, 6)
    assert np.isnan(info.class_means[0, 1])
    assert_close(info.class_means[0, 3], 0.85, 1.0, error[0, 3] + tolerance(1) * 0.85, "mean of 0.9f and 0.8f")
    means = class_means(x, labels, 6)
    assert_close(info.selectivity, reference_selectivity(x, labels), 1.0, selectivity_bound(means, error),
                 "selectivity")


def test_kernels_jit_and_psum_over_shards(rng):
    x = jnp.asarray(rng.random((64, 5)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, 3, 64))
    shift = jnp.zeros(5)

    def tables(xs, ys):
        codes = kquant.threshold(xs, 0.5)
        counts, sums = kinfo.chunk_tables(xs, codes, ys, xs.shape[0], shift, bins=2, classes=3)
        segment = kinfo.chunk_tables(xs, codes, ys, xs.shape[0] - 3, shift, bins=2, classes=3, method="segment")
        padded = kinfo.chunk_tables(xs, codes, ys, xs.shape[0] - 3, shift, bins=2, classes=3)
        return counts, sums, kinfo.joint_counts(codes, ys, xs.shape[0], bins=2, classes=3), segment, padded

    def shard(xs, ys):
        return jax.tree.map(lambda a: jax.lax.psum(a, "d"), tables(xs, ys))

    whole = jax.jit(tables)(x, labels)
    sharded = jax.jit(jax.vmap(shard, axis_name="d"))(x.reshape(4, 16, 5), labels.reshape(4, 16))
    ref = reference(np.asarray(x > 0.5).astype(int), np.asarray(labels), 3, 2)["counts"]
    np.testing.assert_array_equal(whole[0], ref)
    np.testing.assert_array_equal(whole[2], ref)
    np.testing.assert_array_equal(sharded[0][0], ref)
    assert whole[0].dtype == jnp.int32 and whole[3][0].dtype == jnp.int32
    np.testing.assert_array_equal(whole[3][0], whole[4][0])  # segment sums == contraction, padding ignored
    # float32 sums of non-negative values over at most 64 tokens (psum: 4 shards of 16, then 4): relative
    # to sum |x| = the sum itself
    abs_sums = np.stack([np.abs(np.asarray(x, np.float64))[np.asarray(labels) == c].sum(axis=0) for c in range(3)],
                        axis=1)
    valid = np.arange(64) < 61
    abs_valid = np.stack([np.abs(np.asarray(x, np.float64))[valid & (np.asarray(labels) == c)].sum(axis=0)
                          for c in range(3)], axis=1)
    assert_close(whole[3][1], whole[4][1], 2 * tolerance(64), abs_valid, "segment vs contraction sums")
    np.testing.assert_array_equal(sharded[3][0][0], sharded[4][0][0])
    sums = np.stack([np.asarray(x, np.float64)[np.asarray(labels) == c].sum(axis=0) for c in range(3)], axis=1)
    assert_close(whole[1], sums, tolerance(64), abs_sums, "class sums")
    assert_close(sharded[1][0], sums, tolerance(64), abs_sums, "class sums, psum over 4 shards")


def test_bad_input_errors(rng):
    x = rng.random((50, 3)).astype(np.float32)
    labels = rng.integers(0, 2, 50)
    bad = x.copy()
    bad[17, 2] = np.nan
    with pytest.raises(jn.JNeuronError, match="row 18, neuron model0/2"):
        jn.neuron_information(bad, labels, chunk_tokens=8)
    bad[17, 2] = np.inf
    with pytest.raises(jn.JNeuronError, match="row 18, neuron model0/2"):
        jn.neuron_information(bad, labels, quantize="quantile", bins=3)
    with pytest.raises(jn.JNeuronError, match="expected 50 labels"):
        jn.neuron_information(x, labels[:49])
    with pytest.raises(jn.JNeuronError, match="at least 2 classes"):
        jn.neuron_information(x, np.zeros(50, int), classes=3)
    with pytest.raises(jn.JNeuronError, match="negative class"):
        jn.neuron_information(x, labels - 1)
    with pytest.raises(jn.JNeuronError, match="integer classes"):
        jn.neuron_information(x, labels.astype(float))
    with pytest.raises(jn.JNeuronError, match=r"label 5 at row 31 \(counted from 1\) is out of range"):
        jn.neuron_information(x, np.where(np.arange(50) == 30, 5, labels), classes=3)
    with pytest.raises(jn.JNeuronError, match="plain iterator"):
        jn.neuron_information(iter([(x, labels)]), classes=2, quantize="quantile", bins=3)
    with pytest.raises(jn.JNeuronError, match="labels are required"):
        jn.neuron_information(x)
    with pytest.raises(jn.JNeuronError, match="unknown quantize"):
        jn.neuron_information(x, labels, quantize="kmeans")


@pytest.mark.filterwarnings("ignore::jneuron.DeadNeuronWarning")  # planted constant neurons
def test_counts_flush_to_host_and_float64_input(rng):
    x, labels = planted(rng, tokens=700)
    whole = jn.neuron_information(x, labels, chunk_tokens=128)
    np.testing.assert_array_equal(jn.neuron_information(x, labels, chunk_tokens=300).counts, whole.counts)
    with jax.enable_x64(True):
        wide = jn.neuron_information(x.astype(np.float64) + 1e6, labels, threshold=1e6 + 0.5, chunk_tokens=128)
    np.testing.assert_array_equal(wide.counts, whole.counts)
    exact = np.stack([x.astype(np.float64)[labels == c].mean(axis=0) for c in range(4)], axis=1)
    # float64 end to end: sums of x - shift in float64, and 1e6 added back (a float32 pass would be off by ~0.1)
    wide_error = class_mean_error(x.astype(np.float64) + 1e6, labels, 4, first_chunk=128, dtype=np.float64)
    assert_close(wide.class_means - 1e6, exact, 1.0, wide_error + tolerance(1, np.float64) * 1e6, "float64 means")
    assert_close(whole.class_means, exact, 1.0, class_mean_error(x, labels, 4), "float32 sums")


def test_measure_kernels_on_device_match_host(rng):
    counts = rng.integers(0, 50, (6, 3, 4)).astype(np.float64)
    counts[2] = 0
    counts[2, 1] = 7  # one bin only
    fns = (kinfo.entropy, kinfo.mutual_information, kinfo.kl_selectivity, kinfo.label_entropy)
    device = jax.jit(lambda c: tuple(f(c) for f in fns))(jnp.asarray(counts, jnp.float32))
    for fn, got in zip(fns, device):  # float32 on the device (counts below 2**24 are exact)
        assert_close(got, fn(counts), measure_slack(3, 4, np.float32), what=fn.__name__)
    means = rng.random((6, 4))
    # the device's means are the float32 roundings of the host's; then its own float32 arithmetic
    error = tolerance(1) * np.abs(means)
    assert_close(jax.jit(kinfo.class_selectivity)(jnp.asarray(means, jnp.float32), jnp.ones(4)),
                 kinfo.class_selectivity(means, np.ones(4)), 1.0, selectivity_bound(means, error, np.float32),
                 "class selectivity")


def test_signed_activations_are_flagged(rng):
    """A 0.5 cut on signed values warns (and says how class selectivity behaves there); a 0 cut only notes the
    selectivity; non-negative values raise nothing."""
    labels = rng.integers(0, 3, 400)
    signed = rng.normal(size=(400, 4)).astype(np.float32)
    with pytest.warns(jn.QuantizationWarning, match=r"4 of 4 neurons take negative values.*cut is at 0.5.*unbounded"):
        info = jn.neuron_information(signed, labels)
    assert len(info.warnings) == 2 and info.to_dict()["warnings"] == list(info.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        at_zero = jn.neuron_information(signed, labels, threshold=0.0)
        positive = jn.neuron_information(np.abs(signed), labels)
    assert len(at_zero.warnings) == 1 and "unbounded" in at_zero.warnings[0]
    assert positive.warnings == ()
