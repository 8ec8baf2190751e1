"""Neuron sets and orderings from probe weights, against NeuroX's rules reimplemented here in numpy."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jneuron as jn
from jneuron.errors import JNeuronError
from tests.tolerance import assert_close, tolerance


def reference_top(abs_w, percentage, descending=True):
    """NeuroX get_top_neurons / get_bottom_neurons, written from its description (float64)."""
    per_class = {}
    for c, row in enumerate(abs_w):
        order = np.argsort(-row if descending else row, kind="stable")
        cumulative = np.cumsum(row[order])
        crossing = np.flatnonzero(cumulative >= row.sum() * percentage)
        per_class[c] = order[: crossing[0] + 1] if len(crossing) else order
    union = set()
    for chosen in per_class.values():
        union |= set(chosen.tolist())
    return np.array(sorted(union)), per_class


def reference_steps(abs_w, stride):
    """NeuroX get_neuron_ordering: the step at which each neuron first joins the union, and the cutoffs."""
    step = np.full(abs_w.shape[1], stride + 1)
    cutoffs = []
    for s in range(stride + 1):
        union, _ = reference_top(abs_w, s / stride)
        new = union[step[union] > s]
        step[new] = s
        cutoffs.append(int(np.sum(step <= s)))
    return step, np.array(cutoffs)


def reference_granular(abs_w, granularity, stride):
    """NeuroX get_neuron_ordering_granular's cutoffs."""
    tops = [reference_top(abs_w, p / stride)[0] for p in range(stride + 1)]
    sliding, considered, cutoffs = 0, set(), []
    for i in range(0, abs_w.shape[1] + 1, granularity):
        while len(tops[sliding]) < i:
            sliding += 1
        new = set(tops[sliding].tolist()) - considered
        if new:
            considered |= new
            cutoffs.append(len(considered))
    return np.array(cutoffs)


def weights(seed, classes, neurons):
    return np.abs(np.random.default_rng(seed).standard_normal((classes, neurons))).astype(np.float32)


def test_hand_case_from_the_issue():
    w = np.array([[5.0, 1, 1], [1, 10, 1]])
    selection = jn.top_neurons(w, 0.5)
    assert selection.union.tolist() == [0, 1]
    assert {c: v.tolist() for c, v in selection.per_class.items()} == {0: [0], 1: [1]}
    assert selection.counts == {0: 1, 1: 1}
    # the crossing neuron is included: 5 of 7 does not reach 80%, 5+1 does
    assert jn.top_neurons(w, 0.8).per_class[0].tolist() == [0, 1]
    # p = 0 keeps one neuron per class, p = 1 keeps them all
    assert jn.top_neurons(w, 0.0).union.tolist() == [0, 1]
    assert jn.top_neurons(w, 1.0).union.tolist() == [0, 1, 2]
    assert jn.bottom_neurons(w, 0.1).per_class[1].tolist() == [0, 2]  # 1 < 1.2, 1 + 1 crosses


def test_probe_classes_name_the_sets(rng):
    x = rng.normal(size=(200, 4)).astype(np.float32)
    labels = np.where(x[:, 1] > 0, "pos", "neg")
    probe = jn.train_probe(x, labels, epochs=2, learning_rate=1e-2)
    assert set(jn.top_neurons(probe, 0.3).per_class) == {"neg", "pos"}


@given(st.integers(0, 10_000), st.integers(1, 6), st.integers(2, 60),
       st.sampled_from([0.0, 0.05, 0.3, 0.5, 0.77, 1.0]))
def test_top_and_bottom_match_neurox_rule(seed, classes, neurons, percentage):
    w = weights(seed, classes, neurons)
    for ours, descending in ((jn.top_neurons(w, percentage), True), (jn.bottom_neurons(w, percentage), False)):
        union, per_class = reference_top(w.astype(np.float64), percentage, descending)
        assert ours.union.tolist() == union.tolist()
        for c in range(classes):
            assert sorted(ours.per_class[c].tolist()) == sorted(per_class[c].tolist())
            assert ours.per_class[c].tolist() == per_class[c].tolist()  # strongest first, ties by index


@given(st.integers(0, 10_000), st.integers(1, 5), st.integers(2, 80), st.sampled_from([3, 10, 100]))
def test_ordering_matches_neurox_steps_and_cutoffs(seed, classes, neurons, stride):
    w = weights(seed, classes, neurons)
    step, cuts = reference_steps(w.astype(np.float64), stride)
    ranking = jn.neuron_ordering(w, stride=stride)
    assert ranking.details["step"].tolist() == step.tolist()
    assert jn.ordering_cutoffs(ranking, stride).tolist() == cuts.tolist()
    # the order visits steps in order (NeuroX's grouping); within a step by mass share, ties by index
    assert np.all(np.diff(ranking.details["step"][ranking.order]) >= 0)


@settings(max_examples=10)
@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(5, 120), st.sampled_from([1, 7, 50]))
def test_granular_matches_neurox_cutoffs(seed, classes, neurons, granularity):
    w = weights(seed, classes, neurons)
    ranking = jn.neuron_ordering_granular(w, granularity=granularity, stride=20)
    cuts, reference = jn.ordering_cutoffs(ranking), reference_granular(w.astype(np.float64), granularity, 20)
    assert cuts[: len(reference)].tolist() == reference.tolist()
    # NeuroX stops at the last multiple of the granularity and drops the rest; here they form a last chunk
    assert cuts[-1] == np.sum(ranking.details["step"] <= 20) and len(cuts) <= len(reference) + 1
    assert ranking.order.tolist() == jn.neuron_ordering(w, stride=20).order.tolist()


@given(st.integers(0, 10_000), st.floats(0.01, 100.0))
def test_ordering_invariant_to_scaling_a_class_and_permuting_neurons(seed, scale):
    w = weights(seed, 3, 40)
    base = jn.neuron_ordering(w, stride=50)
    scaled = w.copy()
    scaled[1] *= np.float32(scale)
    assert jn.neuron_ordering(scaled, stride=50).details["step"].tolist() == base.details["step"].tolist()
    perm = np.random.default_rng(seed).permutation(40)
    permuted = jn.neuron_ordering(w[:, perm], stride=50)
    assert permuted.details["step"].tolist() == base.details["step"][perm].tolist()
    # shares of a class's mass (scale 1): float64 cumulative sums over the 40 neurons, taken in the same sorted
    # order either way (ties aside)
    assert_close(permuted.scores, base.scores[perm], tolerance(40, np.float64), what="scores")


def test_ties_break_by_index_and_dead_neurons_come_last():
    w = np.array([[1.0, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    ranking = jn.neuron_ordering(w, stride=4)
    assert ranking.order.tolist() == [0, 1, 2, 3, 4]
    # 1/4 of 4: only the first; 2/4: 1 < 2 -> two; the zero neuron never joins (NeuroX leaves it out)
    assert ranking.details["step"].tolist() == [0, 2, 3, 4, 5]
    assert jn.ordering_cutoffs(ranking, 4).tolist() == [1, 1, 2, 3, 4]
    assert jn.top_neurons(w, 0.5).per_class[0].tolist() == [0, 1]


def test_threshold_random_and_overlap():
    w = np.array([[4.0, 2, 1, 3], [1, 1, 8, 1]])
    chosen = jn.threshold_neurons(w, 0.5)  # |w| > half the class's max
    assert {c: sorted(v.tolist()) for c, v in chosen.per_class.items()} == {0: [0, 3], 1: [2]}
    assert chosen.per_class[0].tolist() == [0, 3]
    a, b = jn.random_neurons(100, 0.2, seed=3), jn.random_neurons(100, 0.2, seed=3)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 20 and a.tolist() == sorted(a.tolist())
    assert a.tolist() != jn.random_neurons(100, 0.2, seed=4).tolist()
    table = chosen.overlap()
    assert table["names"] == [0, 1] and table["shared"].tolist() == [[2, 0], [0, 1]]
    assert table["jaccard"][0, 1] == 0.0
    across = jn.neuron_overlap({"pos": [1, 2, 3], "ner": [3, 4]})
    assert across["shared"][0, 1] == 1 and across["jaccard"][0, 1] == 0.25  # 1 / 4, correctly rounded: exact


def test_bad_weights_and_arguments():
    with pytest.raises(JNeuronError, match="NaN"):
        jn.top_neurons(np.array([[1.0, np.nan]]), 0.5)
    with pytest.raises(JNeuronError, match="classes, neurons"):
        jn.top_neurons(np.zeros((0, 3)), 0.5)
    with pytest.raises(JNeuronError, match=r"\[0, 1\]"):
        jn.top_neurons(np.ones((2, 3)), 1.5)
    with pytest.raises(JNeuronError, match="stride"):
        jn.neuron_ordering(np.ones((2, 3)), stride=0)
