"""Probeless ranking against NeuroX's formula, ablation tables against numpy, label files."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jneuron as jn
from jneuron.errors import JNeuronError
from jneuron.kernels import probe as kp
from jneuron.probing.ablation import selection_masks
from jneuron.probing.probe import batch_rows
from tests.flax_models import near_ties
from tests.tolerance import assert_close, tolerance

PLANTED = (2, 5, 9)
SETTINGS = dict(epochs=8, batch_size=32, learning_rate=1e-2)


def planted(seed=0, tokens=600, neurons=12):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, tokens)
    x = rng.normal(size=(tokens, neurons))
    for c, j in enumerate(PLANTED):
        x[y == c, j] += 2.5
    return x.astype(np.float32), y


def mean_errors(x, y, classes, first_chunk: int) -> np.ndarray:
    """``(classes, neurons)`` bound on probeless's class means: float32 sums over chunks of ``x - shift``
    (``shift`` the first chunk's mean, rounded to float32; the subtraction rounds relative to ``|x - shift|``
    too, exact within a factor 2 of the shift), ``tolerance(tokens) mean |x - shift|``, then float64."""
    x = np.asarray(x, np.float64)
    shift = x[:first_chunk].mean(0).astype(np.float32).astype(np.float64)
    return np.stack([tolerance(len(x)) * np.abs(x[y == c] - shift).mean(0)
                     + tolerance(1, np.float64) * np.abs(x[y == c].mean(0)) for c in classes])


def reference_probeless(x, y):
    """NeuroX probeless: class means, overall sum over pairs |mu - mu'|, per tag sum over others (float64)."""
    classes = sorted(set(y.tolist()))
    means = {c: x[y == c].astype(np.float64).mean(0) for c in classes}
    overall = sum(np.abs(means[a] - means[b]) for a, b in itertools.combinations(classes, 2))
    per_tag = {c: sum(np.abs(means[c] - means[o]) for o in classes if o != c) for c in classes}
    return overall, per_tag


@given(st.integers(0, 10_000), st.integers(2, 7), st.sampled_from([0.0, 1e3]))
def test_probeless_matches_neurox_formula(seed, classes, offset):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, 300)
    y[:classes] = np.arange(classes)
    x = (rng.normal(size=(300, 9)) + offset).astype(np.float32)
    overall, per_tag = reference_probeless(x, y)
    ours = jn.probeless(x, y, chunk_tokens=64)
    # |mu_a - mu_b| moves by at most the two means' errors (plus a float64 rounding of the difference)
    error = mean_errors(x, y, range(classes), 64)
    means = np.abs(np.stack([x[y == c].astype(np.float64).mean(0) for c in range(classes)]))
    pair = error[:, None] + error[None, :] + tolerance(1, np.float64) * (means[:, None] + means[None, :])
    assert_close(ours.overall.scores, overall, 1.0, np.triu(pair.transpose(2, 0, 1), 1).sum(axis=(1, 2)), "overall")
    for c in range(classes):
        assert_close(ours.per_class[c].scores, per_tag[c], 1.0, np.delete(pair[c], c, axis=0).sum(0), f"class {c}")


def test_probeless_streams_chunks_and_string_labels():
    x, y = planted()
    names = np.array(["DT", "NN", "VB"])[y]
    whole = jn.probeless(x, names)
    chunks = ((x[i:i + 97], names[i:i + 97]) for i in range(0, 600, 97))
    streamed = jn.probeless(chunks)
    assert streamed.classes.tolist() == ["DT", "NN", "VB"] and streamed.counts.sum() == 600
    # two float32 passes with different chunks (and shifts: the first 97 rows' mean, or the first chunk's)
    error = np.maximum(mean_errors(x, y, range(3), 97), mean_errors(x, y, range(3), 600))
    assert_close(streamed.means, whole.means, 2.0, error, "streamed class means")
    assert whole.per_class["NN"].order[0] == PLANTED[1]
    with pytest.raises(JNeuronError, match="at least 2 classes"):
        jn.probeless(x, np.zeros(600, int))
    bad = x.copy()
    bad[321, 4] = np.inf
    with pytest.raises(JNeuronError, match="row 322, neuron 4"):
        jn.probeless(bad, y, chunk_tokens=100)
    with pytest.raises(JNeuronError, match="expected 600 labels"):
        jn.probeless(x, y[:10])
    with pytest.raises(JNeuronError, match="no tokens"):
        jn.probeless(iter([]))


def test_masked_training_equals_training_on_the_kept_columns():
    x, y = planted()
    keep = np.array([1, 2, 5, 9])
    mask = np.zeros((1, 12), np.float32)
    mask[0, keep] = 1
    rows, valid = batch_rows(600, 2, 32, seed=0)
    l1, l2 = np.zeros(1, np.float32), np.full(1, 1e-3, np.float32)
    args = dict(classes=3, learning_rate=1e-2)
    w_mask, b_mask = kp.train(jnp.asarray(x), jnp.asarray(y), mask, l1, l2, rows, valid, **args)
    w_cols, b_cols = kp.train(jnp.asarray(x[:, keep]), jnp.asarray(y), np.ones((1, 4), np.float32), l1, l2, rows,
                              valid, **args)
    # an optimizer trajectory, not one rounding: the masked product sums 12 terms (8 of them exact zeros) where
    # the other sums 4, in another order, and 38 Adam steps pass each step's relative gradient error on at
    # about its size (m / sqrt(v) normalizes): ~40 x 1e-6, with room
    np.testing.assert_allclose(np.asarray(w_mask)[0][:, keep], np.asarray(w_cols)[0], rtol=1e-4, atol=1e-6)
    assert not np.any(np.delete(np.asarray(w_mask)[0], keep, axis=1))
    np.testing.assert_allclose(b_mask, b_cols, rtol=1e-4, atol=1e-6)


def test_zero_out_table_matches_numpy_and_planted_top_beats_bottom():
    x, y = planted()
    probe = jn.train_probe(x, y, l1=1e-3, l2=1e-3, **SETTINGS)
    ordering = jn.neuron_ordering(probe)
    table = jn.zero_out_ablation(probe, x, y, [0.25, 0.5], ordering=ordering, seed=1)
    _, counts, masks = selection_masks(ordering, [0.25, 0.5], seed=1)
    w, b = np.asarray(probe.weight, np.float64), np.asarray(probe.bias, np.float64)
    logits = [(x * m) @ w.T + b for m in masks]
    expected = [np.mean(np.argmax(z, 1) == y) for z in logits]
    # float32 logits are off by tolerance(12) * (|x m| |w| + |b|): a row whose top two logits are within twice
    # that may go either way; then one float32 rounding of the fraction
    scales = [(np.abs(x * m) @ np.abs(w).T + np.abs(b)).max(1) for m in masks]
    allowed = [near_ties(z, 2 * tolerance(12) * scale).mean() + tolerance(1) for z, scale in zip(logits, scales)]
    got = [table.all, *table.top, *table.bottom, *table.random]
    assert np.all(np.abs(np.array(got) - expected) <= allowed), (got, expected, allowed)
    # statistical: the 3 planted neurons carry the classes (~0.95); 3 unplanted ones are near chance (1/3)
    assert table.counts.tolist() == [3, 6] and table.top[0] > 0.85 > table.bottom[0]
    removed = jn.zero_out_ablation(probe, x, y, [0.25], ordering=ordering, mode="remove")
    assert removed.top[0] < removed.bottom[0]
    assert set(table.to_dict()) == {"mode", "all", "percentages", "counts", "top", "bottom", "random"}


def test_retrain_table_top_beats_bottom():
    x, y = planted()
    xt, yt = planted(seed=5)
    probe = jn.train_probe(x, y, l1=1e-3, l2=1e-3, **SETTINGS)
    table = jn.retrain_ablation(x, y, xt, yt, jn.neuron_ordering(probe), [0.25], l1=1e-3, l2=1e-3, **SETTINGS)
    assert table.mode == "retrain" and table.all > 0.85 and table.top[0] > 0.85 > table.bottom[0]
    with pytest.raises(JNeuronError, match="percentages"):
        jn.retrain_ablation(x, y, xt, yt, jn.neuron_ordering(probe), [0.0])


def test_label_files_align_and_mismatches_name_line_and_token(tmp_path):
    (tmp_path / "tok.txt").write_text("the cat sat\nit ran\n\nso there\n")
    (tmp_path / "lab.txt").write_text("DT NN VBD\nPRP VBD\n\nRB RB\n")
    data = jn.load_labels(tmp_path / "tok.txt", tmp_path / "lab.txt")
    assert data.flat().tolist() == ["DT", "NN", "VBD", "PRP", "VBD", "RB", "RB"]
    assert data.tokens_per_sentence().tolist() == [3, 2, 0, 2]
    data.check(np.zeros((7, 4)))
    data.check([np.zeros((3, 4)), np.zeros((2, 4)), np.zeros((0, 4)), np.zeros((2, 4))])
    with pytest.raises(JNeuronError, match=r"line 4, token 2 'there'"):
        data.check(np.zeros((6, 4)))
    with pytest.raises(JNeuronError, match="2 rows left over"):
        data.check(np.zeros((9, 4)))
    with pytest.raises(JNeuronError, match=r"line 2 has 2 tokens but its activations have 1 row;.*token 2 'ran'"):
        data.check([np.zeros((3, 4)), np.zeros((1, 4)), np.zeros((0, 4)), np.zeros((2, 4))])
    (tmp_path / "short.txt").write_text("DT NN VBD\nPRP\n\nRB RB\n")
    with pytest.raises(JNeuronError, match=r"line 2 has 2 tokens.*1 label; at position 2, token 'ran' has no label"):
        jn.load_labels(tmp_path / "tok.txt", tmp_path / "short.txt")
    (tmp_path / "fewer.txt").write_text("DT NN VBD\nPRP VBD\n")
    with pytest.raises(JNeuronError, match="2 lines, but .* has 4"):
        jn.load_labels(tmp_path / "tok.txt", tmp_path / "fewer.txt")
    with pytest.raises(JNeuronError, match="no such file"):
        jn.load_labels(tmp_path / "missing.txt", tmp_path / "lab.txt")
