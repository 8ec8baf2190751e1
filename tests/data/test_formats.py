"""Activation file formats: round trips, NeuroX layouts, selectors, and clear errors on bad files."""

import collections
import json

import h5py
import numpy as np
import pytest

import jneuron as jn
from jneuron.data.files import combine, open_activations
from jneuron.errors import JNeuronError


def neurox_sentences(rng, lengths=(3, 5, 1, 4), layers=3, width=4):
    words = [[f"w{s}_{k}" for k in range(n)] for s, n in enumerate(lengths)]
    acts = [rng.normal(size=(layers, n, width)).astype(np.float32) for n in lengths]
    return words, acts


def write_neurox_hdf5(path, words, acts):
    """As NeuroX's HDF5ActivationsWriter: one dataset per sentence, sentence_to_index JSON at index 0."""
    index = {}
    with h5py.File(path, "w") as f:
        for s, (sentence, a) in enumerate(zip(words, acts)):
            f.create_dataset(str(s), a.shape, dtype="float32", data=a)
            text, final, counter = " ".join(sentence), " ".join(sentence), 1
            while final in index:
                counter += 1
                final = f"{text} (Occurrence {counter})"
            index[final] = str(s)
        ds = f.create_dataset("sentence_to_index", (1,), dtype=h5py.special_dtype(vlen=str))
        ds[0] = json.dumps(index)


def write_neurox_json(path, words, acts):
    """As NeuroX's JSONActivationsWriter: one line per sentence, values rounded to 8 places."""
    with open(path, "w", encoding="utf-8") as f:
        for s, (sentence, a) in enumerate(zip(words, acts)):
            features = []
            for k, word in enumerate(sentence):
                layers = [collections.OrderedDict(index=l, values=[round(float(x), 8) for x in a[l, k]])
                          for l in range(a.shape[0])]
                features.append(collections.OrderedDict(token=word, layers=layers))
            f.write(json.dumps(collections.OrderedDict(linex_index=s, features=features)) + "\n")


def neurox_matrix(acts):
    """NeuroX's loader layout: per sentence (words, layers * width), layer-major; sentences stacked."""
    return np.concatenate([a.transpose(1, 0, 2).reshape(a.shape[1], -1) for a in acts])


def test_npy_round_trip_is_memory_mapped(tmp_path, rng):
    x = rng.normal(size=(50, 7)).astype(np.float32)
    np.save(tmp_path / "enc.npy", x)
    src = open_activations(tmp_path / "enc.npy")
    assert src.names == ("enc",) and src.widths == (7,) and src.tokens == 50
    assert isinstance(src.columns[0].read(0, 5), np.memmap)
    np.testing.assert_array_equal(np.concatenate(list(src.chunks(16))), x)
    assert [c.shape[0] for c in src.chunks(16)] == [16, 16, 16, 2]


def test_npz_round_trip_with_layers(tmp_path, rng):
    arrays = {"m/a": rng.normal(size=(20, 3)), "m/b": rng.normal(size=(20, 2)), "n": rng.normal(size=(20, 4))}
    np.savez(tmp_path / "x.npz", **arrays)
    src = open_activations(tmp_path / "x.npz")
    assert src.layers == {"m": (("a", 3), ("b", 2)), "n": (("", 4),)}
    assert src.dtype == np.float64
    np.testing.assert_array_equal(src.read(0, 20), np.hstack([arrays["m/a"], arrays["m/b"], arrays["n"]]))
    np.testing.assert_array_equal(open_activations(f"{tmp_path}/x.npz#m/b").read(3, 5), arrays["m/b"][3:5])


def test_store_round_trip_appends_and_keeps_metadata(tmp_path, rng):
    x = rng.normal(size=(1000, 6)).astype(np.float32)
    y = rng.normal(size=(1000, 3)).astype(np.float16)
    path = tmp_path / "acts.zarr"
    with jn.StoreWriter(path, tokenization="words", chunk_tokens=128) as w:
        for k in range(0, 1000, 300):
            w.append("enc", "layers/0", x[k:k + 300])
            w.append("enc", "layers/1", y[k:k + 300])
            w.append_text([f"t{i}" for i in range(k, min(k + 300, 1000))], np.arange(k, min(k + 300, 1000)) // 10)
    with jn.StoreWriter(path, mode="a") as w:  # append to an existing store
        w.append("dec", "out", x[:, :2])
    src = jn.open_activations(path)
    assert src.layers == {"enc": (("layers/0", 6), ("layers/1", 3)), "dec": (("out", 2),)}
    np.testing.assert_array_equal(src.read(0, 1000), np.hstack([x, y.astype(np.float32), x[:, :2]]))
    import zarr

    attrs = zarr.open_group(path, mode="r")["enc.layers_1"].attrs.asdict()
    assert attrs == {"model": "enc", "layer": "layers/1", "width": 3, "dtype": "float16", "tokenization": "words"}
    assert zarr.open_group(path, mode="r")["enc.layers_0"].chunks == (128, 6)
    text = src.text()
    assert text.tokens[:2] == ("t0", "t1") and len(text.tokens) == 1000 and text.sentence[999] == 99
    assert src.select("enc/layers/1").columns[0].dtype == np.float16


def test_store_from_source_is_atomic_and_identical(tmp_path, rng):
    x = rng.normal(size=(300, 5)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    path = jn.write_store(jn.open_activations(tmp_path / "a.npy"), tmp_path / "a.zarr", chunk_tokens=64)
    np.testing.assert_array_equal(jn.open_activations(path).read(0, 300), x)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("writer,suffix", [(write_neurox_hdf5, "hdf5"), (write_neurox_json, "json")])
def test_neurox_files_read_with_tokens_aligned(tmp_path, rng, writer, suffix):
    words, acts = neurox_sentences(rng, lengths=(3, 5, 3, 4))
    words[2] = list(words[0])  # a repeated sentence: NeuroX writes an "(Occurrence 2)" key
    writer(tmp_path / f"acts.{suffix}", words, acts)
    (tmp_path / "tokens.txt").write_text("\n".join(" ".join(w) for w in words) + "\n")
    labels = [[f"L{len(w) % 3}" for w in s] for s in words]
    (tmp_path / "labels.txt").write_text("\n".join(" ".join(s) for s in labels) + "\n")
    src = jn.open_activations(tmp_path / f"acts.{suffix}", tokens=tmp_path / "tokens.txt", labels=tmp_path / "labels.txt")
    assert src.names == ("acts",) and src.layers["acts"] == tuple((str(l), 4) for l in range(3))
    expected = neurox_matrix(acts)
    atol = 1e-8 if suffix == "json" else 0  # NeuroX's JSON keeps 8 decimal places (half a unit: 5e-9); HDF5 is exact
    np.testing.assert_allclose(src.read(0, src.tokens), expected, rtol=0, atol=atol)
    np.testing.assert_allclose(np.concatenate(list(src.chunks(4))), expected, rtol=0, atol=atol)
    text = src.text()
    flat = [w for s in words for w in s]
    assert text.tokens == tuple(flat) and text.labels == tuple(l for s in labels for l in s)
    assert text.sentence.tolist() == [s for s, w in enumerate(words) for _ in w]
    layer1 = jn.open_activations(f"{tmp_path}/acts.{suffix}#1")
    np.testing.assert_allclose(layer1.read(2, 9), expected[2:9, 4:8], rtol=0, atol=atol)


def test_neurox_hdf5_without_token_file_uses_its_sentences(tmp_path, rng):
    words, acts = neurox_sentences(rng)
    write_neurox_hdf5(tmp_path / "a.hdf5", words, acts)
    assert jn.open_activations(tmp_path / "a.hdf5").text().tokens == tuple(w for s in words for w in s)


def test_neurox_mismatched_token_file_is_a_clear_error(tmp_path, rng):
    words, acts = neurox_sentences(rng)
    write_neurox_hdf5(tmp_path / "a.hdf5", words, acts)
    words[1] = words[1][:-1]
    (tmp_path / "tokens.txt").write_text("\n".join(" ".join(w) for w in words))
    with pytest.raises(JNeuronError, match=r"tokens.txt: line 2 \(sentence 2\) has 4 tokens but the activations have 5 rows"):
        jn.open_activations(tmp_path / "a.hdf5", tokens=tmp_path / "tokens.txt")


def test_selectors_and_unknown_layers(tmp_path, rng):
    with jn.StoreWriter(tmp_path / "s.zarr") as w:
        for m in ("a", "b", "c"):
            w.append(m, "l0", rng.normal(size=(10, 2)))
            w.append(m, "l1", rng.normal(size=(10, 3)))
    src = jn.open_activations(f"{tmp_path}/s.zarr#c,a/l1")
    assert src.names == ("c", "a") and src.layers == {"c": (("l0", 2), ("l1", 3)), "a": (("l1", 3),)}
    with pytest.raises(JNeuronError, match="no model or layer 'a/l9'"):
        jn.open_activations(tmp_path / "s.zarr", select="a/l9")
    with pytest.raises(JNeuronError, match="no such file or store"):
        jn.open_activations(tmp_path / "missing.zarr")


def test_combine_checks_tokens_and_names(tmp_path, rng):
    np.save(tmp_path / "a.npy", rng.normal(size=(10, 2)))
    np.save(tmp_path / "b.npy", rng.normal(size=(11, 2)))
    with pytest.raises(JNeuronError, match="mismatched token counts"):
        combine([jn.open_activations(tmp_path / "a.npy"), jn.open_activations(tmp_path / "b.npy")])
    with pytest.raises(JNeuronError, match="appear in more than one input"):
        combine([jn.open_activations(tmp_path / "a.npy"), jn.open_activations(tmp_path / "a.npy")])


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_corrupt_and_truncated_files_are_clear_errors(tmp_path, rng):
    x = rng.normal(size=(400, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    _truncate(tmp_path / "a.npy")
    with pytest.raises(JNeuronError, match="a.npy: not a readable .npy file"):
        jn.open_activations(tmp_path / "a.npy")
    np.savez(tmp_path / "b.npz", m=x)
    _truncate(tmp_path / "b.npz")
    with pytest.raises(JNeuronError, match="b.npz: not a readable .npz file"):
        jn.open_activations(tmp_path / "b.npz")
    words, acts = neurox_sentences(rng)
    write_neurox_hdf5(tmp_path / "c.hdf5", words, acts)
    _truncate(tmp_path / "c.hdf5")
    with pytest.raises(JNeuronError, match="c.hdf5: not a readable HDF5 file"):
        jn.open_activations(tmp_path / "c.hdf5")
    write_neurox_json(tmp_path / "d.json", words, acts)
    _truncate(tmp_path / "d.json", 0.7)
    with pytest.raises(JNeuronError, match=r"d.json, line \d+: not a NeuroX activation line"):
        jn.open_activations(tmp_path / "d.json")


def test_corrupt_store_chunk_is_a_clear_error_naming_the_layer(tmp_path, rng):
    with jn.StoreWriter(tmp_path / "s.zarr", chunk_tokens=64) as w:
        w.append("m", "l", rng.normal(size=(256, 4)).astype(np.float32))
    chunk = tmp_path / "s.zarr" / "m.l" / "c" / "2" / "0"
    chunk.write_bytes(b"garbage" * 3)
    src = jn.open_activations(tmp_path / "s.zarr")
    with pytest.raises(JNeuronError, match=r"cannot read tokens 128:192 of 'm/l' \(corrupt or truncated file\?\)"):
        list(src.chunks(64))
    (tmp_path / "s.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(JNeuronError, match="not a readable activation store"):
        jn.open_activations(tmp_path / "s.zarr")


def test_interrupted_store_write_is_detected(tmp_path, rng):
    with jn.StoreWriter(tmp_path / "s.zarr") as w:
        w.append("a", "", rng.normal(size=(30, 2)))
        w.append("b", "", rng.normal(size=(20, 2)))
    with pytest.raises(JNeuronError, match="mismatched token counts between arrays"):
        jn.open_activations(tmp_path / "s.zarr")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=15)
@given(tokens=st.integers(1, 300), widths=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       cuts=st.lists(st.integers(0, 300), max_size=4), store_chunk=st.integers(1, 64), read_chunk=st.integers(1, 100),
       dtype=st.sampled_from(["float32", "float16", "float64"]))
def test_store_round_trip_any_appends_and_chunking(tmp_path_factory, tokens, widths, cuts, store_chunk, read_chunk,
                                                   dtype):
    rng = np.random.default_rng(tokens)
    layers = [rng.normal(size=(tokens, w)).astype(dtype) for w in widths]
    path = tmp_path_factory.mktemp("s") / "s.zarr"
    edges = sorted({0, tokens, *[c for c in cuts if c < tokens]})
    with jn.StoreWriter(path, chunk_tokens=store_chunk) as w:
        for lo, hi in zip(edges[:-1], edges[1:]):  # appended in arbitrary pieces
            for k, x in enumerate(layers):
                w.append("m", f"l{k}", x[lo:hi])
    src = jn.open_activations(path)
    assert src.tokens == tokens and src.layers == {"m": tuple((f"l{k}", w) for k, w in enumerate(widths))}
    assert src.dtype == (np.float64 if dtype == "float64" else np.float32)
    expected = np.hstack([x.astype(src.dtype) for x in layers])
    np.testing.assert_array_equal(np.concatenate(list(src.chunks(read_chunk))), expected)
    np.testing.assert_array_equal(np.concatenate(list(src.chunks(read_chunk, start=tokens // 2))),
                                  expected[tokens // 2:])


def test_repeated_sentences_without_occurrence_keys_are_explained(tmp_path, rng):
    """A writer that keys sentences by their text alone keeps a repeated sentence once: the error says so."""
    words = [["a", "b"], ["c"], ["a", "b"]]
    with h5py.File(tmp_path / "old.hdf5", "w") as f:
        index = {}
        for s, sentence in enumerate(words):
            f.create_dataset(str(s), (2, len(sentence), 3), dtype="float32", data=rng.normal(size=(2, len(sentence), 3)))
            index[" ".join(sentence)] = str(s)  # no " (Occurrence n)": the third sentence replaces the first
        ds = f.create_dataset("sentence_to_index", (1,), dtype=h5py.special_dtype(vlen=str))
        ds[0] = json.dumps(index)
    (tmp_path / "tokens.txt").write_text("a b\nc\na b\n")
    with pytest.raises(jn.JNeuronError, match=r"old.hdf5 holds 2 sentences for 3 lines: .*Occurrence n"):
        jn.open_activations(tmp_path / "old.hdf5", tokens=tmp_path / "tokens.txt")
