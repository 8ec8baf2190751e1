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
from jneuron.probe import batch_rows
from jneuron.probe_ablation import selection_masks

PLANTED = (2, 5, 9)
SETTINGS = dict(epochs=8, batch_size=32, lr=1e-2)


def planted(seed=0, tokens=600, neurons=12):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, tokens)
    x = rng.normal(size=(tokens, neurons))
    for c, j in enumerate(PLANTED):
        x[y == c, j] += 2.5
    return x.astype(np.float32), y


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
    np.testing.assert_allclose(ours.overall.scores, overall, rtol=1e-4, atol=2e-5 * (1 + offset / 1e2))
    for c in range(classes):
        np.testing.assert_allclose(ours.per_class[c].scores, per_tag[c], rtol=1e-4, atol=2e-5 * (1 + offset / 1e2))


def test_probeless_streams_chunks_and_string_labels():
    x, y = planted()
    names = np.array(["DT", "NN", "VB"])[y]
    whole = jn.probeless(x, names)
    chunks = ((x[i:i + 97], names[i:i + 97]) for i in range(0, 600, 97))
    streamed = jn.probeless(chunks)
    assert streamed.classes.tolist() == ["DT", "NN", "VB"] and streamed.counts.sum() == 600
    np.testing.assert_allclose(streamed.means, whole.means, rtol=1e-6, atol=1e-6)
    assert whole.per_class["NN"].order[0] == PLANTED[1]
    with pytest.raises(JNeuronError, match="at least 2 classes"):
        jn.probeless(x, np.zeros(600, int))
    bad = x.copy()
    bad[321, 4] = np.inf
    with pytest.raises(JNeuronError, match="row 321, neuron 4"):
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
    np.testing.assert_allclose(np.asarray(w_mask)[0][:, keep], np.asarray(w_cols)[0], rtol=1e-4, atol=1e-6)
    assert not np.any(np.delete(np.asarray(w_mask)[0], keep, axis=1))
    np.testing.assert_allclose(b_mask, b_cols, rtol=1e-4, atol=1e-6)


def test_zero_out_table_matches_numpy_and_planted_top_beats_bottom():
    x, y = planted()
    probe = jn.train_probe(x, y, l1=1e-3, l2=1e-3, **SETTINGS)
    ordering = jn.neuron_ordering(probe)
    table = jn.zero_out_ablation(probe, x, y, [0.25, 0.5], ordering=ordering, seed=1)
    _, counts, masks = selection_masks(ordering, [0.25, 0.5], seed=1)
    expected = [np.mean(np.argmax((x * m) @ probe.weight.T + probe.bias, 1) == y) for m in masks]
    got = [table.all, *table.top, *table.bottom, *table.random]
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert table.counts.tolist() == [3, 6] and table.top[0] > 0.85 > table.bottom[0]
    removed = jn.zero_out_ablation(probe, x, y, [0.25], ordering=ordering, keep=False)
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
    with pytest.raises(JNeuronError, match=r"line 2 has 2 tokens but its activations have 1 rows.*token 2 'ran'"):
        data.check([np.zeros((3, 4)), np.zeros((1, 4)), np.zeros((0, 4)), np.zeros((2, 4))])
    (tmp_path / "short.txt").write_text("DT NN VBD\nPRP\n\nRB RB\n")
    with pytest.raises(JNeuronError, match=r"line 2 has 2 tokens.*1 labels; at position 2, token 'ran' has no label"):
        jn.load_labels(tmp_path / "tok.txt", tmp_path / "short.txt")
    (tmp_path / "fewer.txt").write_text("DT NN VBD\nPRP VBD\n")
    with pytest.raises(JNeuronError, match="2 lines, but .* has 4"):
        jn.load_labels(tmp_path / "tok.txt", tmp_path / "fewer.txt")
    with pytest.raises(JNeuronError, match="no such file"):
        jn.load_labels(tmp_path / "missing.txt", tmp_path / "lab.txt")
