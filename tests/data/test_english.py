"""The pydoc_data English corpus: tokens, vocabulary cap, sentence split, next-token windows."""

import numpy as np
import pytest

from jneuron.data.english import PUNCTUATION, load_english, prose_sentences, tokenize
from jneuron.errors import JNeuronError


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize('See "len()": it\u2019s *Built-in*; OK!') == [
        "see", "len", "(", ")", ":", "it's", "built", "in", ";", "ok", "!"]


def test_prose_is_real_english_without_code():
    sentences = prose_sentences()
    words = [t for s in sentences for t in s]
    assert 25_000 < len(words) < 60_000
    assert all(len(s) >= 3 for s in sentences)
    assert words.count("the") > 1_000  # running prose, not grammar rules
    assert "::=" not in " ".join(words) and "=" not in words


def test_corpus_vocabulary_split_and_determinism():
    corpus = load_english(vocab_size=300, heldout=0.2, seed=3)
    assert len(corpus.vocab) == 300 and corpus.vocab[0] == "<unk>" and len(set(corpus.vocab)) == 300
    train = [tuple(s) for s in corpus.train]
    held = [tuple(s) for s in corpus.heldout]
    total = len(train) + len(held)
    assert abs(len(held) - 0.2 * total) <= 1
    assert max(np.concatenate(corpus.train)) == 299 and (np.concatenate(corpus.train) == 0).any()
    again = load_english(vocab_size=300, heldout=0.2, seed=3)
    assert again.vocab == corpus.vocab and all(np.array_equal(a, b) for a, b in zip(again.heldout, corpus.heldout))
    other = load_english(vocab_size=300, heldout=0.2, seed=4)
    assert [tuple(s) for s in other.heldout] != held


def test_vocabulary_is_ranked_by_training_frequency():
    corpus = load_english(vocab_size=50, seed=0)
    ids = np.concatenate(corpus.train)
    counts = np.bincount(ids, minlength=50)[1:]
    assert (np.diff(counts) <= 0).all()  # descending frequency after <unk>
    assert set(PUNCTUATION) & set(corpus.vocab)


def test_windows_continue_the_text():
    corpus = load_english(vocab_size=100, seed=0)
    inputs, targets = corpus.windows("heldout", 7)
    stream = np.concatenate(corpus.heldout)
    assert inputs.shape == targets.shape and inputs.shape[1] == 7
    assert np.array_equal(inputs.reshape(-1), stream[: inputs.size])
    assert np.array_equal(targets.reshape(-1), stream[1 : inputs.size + 1])


@pytest.mark.parametrize("kwargs, message", [({"vocab_size": 1}, "vocab_size"), ({"heldout": 1.0}, "heldout")])
def test_bad_arguments(kwargs, message):
    with pytest.raises(JNeuronError, match=message):
        load_english(**kwargs)


def test_bad_window_and_split():
    corpus = load_english(vocab_size=100, seed=0)
    with pytest.raises(JNeuronError, match="window length"):
        corpus.windows("train", 0)
    with pytest.raises(JNeuronError, match="shorter than one window"):
        corpus.windows("heldout", 10**7)
    with pytest.raises(JNeuronError, match="split must be"):
        corpus.windows("test", 5)
