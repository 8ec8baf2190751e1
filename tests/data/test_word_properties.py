"""Word properties and the control task: hand-labelled sentences, per-type consistency, the label
distribution of the control task, and prose sentences that contain no code."""

import numpy as np
import pytest

from jneuron.data import word_properties as wp
from jneuron.errors import JNeuronError


def test_labels_of_a_hand_labelled_sentence():
    words = ["In", "1999", ",", "NASA", "and", "the", "iPhone", "don't", "exist", "yet", ";",
             "it", "is", "odd", "for", "me", "to", "say", "so", "!"]
    labels = wp.word_labels([words, ["Yes", "."]])
    # 1-based positions: 1 | 2-3 | 4-7 | 8-15 | 16+
    assert labels["position"].tolist() == ["1"] + ["2-3"] * 2 + ["4-7"] * 4 + ["8-15"] * 8 + ["16+"] * 5 + ["1", "2-3"]
    assert labels["shape"].tolist() == [
        "Capitalized", "digit", "punct", "UPPER", "lower", "lower", "mixed", "lower", "lower", "lower", "punct",
        "lower", "lower", "lower", "lower", "lower", "lower", "lower", "lower", "punct", "Capitalized", "punct"]
    assert labels["function"].tolist() == [
        "function", "", "", "content", "function", "function", "content", "content", "content", "function", "",
        "function", "function", "content", "function", "function", "function", "content", "function", "",
        "content", ""]
    assert labels["final"].tolist() == [
        "", "", "internal", "", "", "", "", "", "", "", "internal", "", "", "", "", "", "", "", "", "final",
        "", "final"]


def test_control_labels_are_one_draw_per_type_from_the_label_distribution():
    rng = np.random.default_rng(3)
    types = np.array([f"w{i}" for i in range(6000)])
    words = types[rng.integers(0, len(types), size=30000)]
    labels = rng.choice(np.array(["a", "b", "c", ""]), p=[0.6, 0.3, 0.05, 0.05], size=len(words))
    control = wp.control_labels(words, labels, seed=7)
    assert (control == "").tolist() == (labels == "").tolist()  # blanks stay blank, nothing else is blank
    used = labels != ""
    for word in np.unique(words[used])[:500]:
        assert len(set(control[used & (words == word)].tolist())) == 1, word  # one label per type
    # each type's label is drawn from the empirical label distribution: check the shares over types
    first = {w: c for w, c in zip(words[used][::-1], control[used][::-1])}
    drawn = np.array(list(first.values()))
    share = {c: np.mean(labels[used] == c) for c in "abc"}
    for c, p in share.items():
        spread = np.sqrt(p * (1 - p) / len(drawn))
        assert abs(np.mean(drawn == c) - p) < 5 * spread, (c, np.mean(drawn == c), p)
    np.testing.assert_array_equal(control, wp.control_labels(words, labels, seed=7))  # seeded
    assert not np.array_equal(control, wp.control_labels(words, labels, seed=8))


def test_control_labels_need_one_label_per_word():
    with pytest.raises(JNeuronError, match=r"\(3,\) words but \(2,\) labels"):
        wp.control_labels(["a", "b", "c"], ["x", "y"])
    assert wp.control_labels(["a"], [""]).tolist() == [""]


def test_prose_sentences_hold_no_code_and_are_stable():
    sentences = wp.python_prose_sentences()
    assert sentences == wp.python_prose_sentences()
    for words in sentences:
        text = " ".join(words)
        assert not wp._CODE.search(text), text
        assert words[0][0].isupper() and words[-1] in (".", "!", "?"), text
    assert sum(map(len, sentences)) > 8000
