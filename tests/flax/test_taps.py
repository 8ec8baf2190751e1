"""Taps, module inputs, nested paths, validity, pytree inputs and interventions (patching, steering,
run-with-cache) on a small transformer-like NNX model whose MLP uses ``gelu`` as a function and a tap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jneuron import flax as jnf
from jneuron.errors import JNeuronError
from jneuron.flax import ablation, controls
from jneuron.flax.capturing import run_with_cache
from jneuron.flax.taps import Tap
from tests.tolerance import assert_close, tolerance

D, HIDDEN, VOCAB = 6, 10, 11


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(D, HIDDEN, rngs=rngs, precision="highest")
        self.post = Tap()
        self.fc2 = nnx.Linear(HIDDEN, D, rngs=rngs, precision="highest")

    def __call__(self, x):
        return x + self.fc2(self.post(jax.nn.gelu(self.fc1(x))))


class Block(nnx.Module):
    """Mixes positions by a masked mean (so padding must not leak), then the MLP."""

    def __init__(self, rngs):
        self.mix = nnx.Linear(D, D, rngs=rngs, precision="highest")
        self.mlp = MLP(rngs)

    def __call__(self, x, mask):
        weights = mask[..., None].astype(x.dtype)
        context = (x * weights).sum(1, keepdims=True) / weights.sum(1, keepdims=True)
        return self.mlp(x + self.mix(context))


class Tiny(nnx.Module):
    def __init__(self, rngs, mixing=True):
        self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
        self.blocks = nnx.List([Block(rngs), Block(rngs)])
        self.head = nnx.Linear(D, 3, rngs=rngs, precision="highest")
        self.mixing = mixing

    def __call__(self, ids, mask=None):
        mask = jnp.ones(ids.shape, jnp.int32) if mask is None else mask
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, mask) if self.mixing else block.mlp(x)
        return self.head(x)


@pytest.fixture(scope="module")
def model():
    return Tiny(nnx.Rngs(0))


def sentences():
    rng = np.random.default_rng(0)
    return [rng.integers(1, VOCAB, size=n) for n in (5, 2, 7, 3)]


def padded(rows, length=8):
    ids = np.zeros((len(rows), length), np.int32)
    for k, row in enumerate(rows):
        ids[k, : len(row)] = row
    return ids, (ids > 0).astype(np.int32)


BOUND = tolerance(HIDDEN, np.float32, condition=8)  # float32 layers, fan-in <= 10, two blocks


def by_hand_post(model, ids, mask):
    x = model.embed(jnp.asarray(ids))
    block = model.blocks[0]
    w = mask[..., None].astype(np.float32)
    h = x + block.mix((x * w).sum(1, keepdims=True) / w.sum(1, keepdims=True))
    return np.asarray(jax.nn.gelu(block.mlp.fc1(h)))


def test_capture_at_a_tap_equals_the_value_by_hand(model):
    ids, mask = padded(sentences())
    got = jnf.capture(model, (ids, mask), ["blocks/0/mlp/post"])["blocks/0/mlp/post"]
    assert_close(got, by_hand_post(model, ids, mask).reshape(-1, HIDDEN), BOUND, what="tap")


def test_module_input_is_addressable(model):
    ids, mask = padded(sentences())
    cap = jnf.capture(model, (ids, mask), ["blocks/1:input", "blocks/0"])
    np.testing.assert_array_equal(cap["blocks/1:input"], cap["blocks/0"])
    # zeroing block 1's input is zeroing block 0's output, seen from block 1 on
    zeroed_input = jnf.ablate(model, {"blocks/1:input": np.zeros(D)})
    zeroed_output = jnf.ablate(model, {"blocks/0": np.zeros(D)})
    np.testing.assert_array_equal(np.asarray(zeroed_input(ids, mask)), np.asarray(zeroed_output(ids, mask)))


@pytest.mark.parametrize("order", [["blocks/0", "blocks/0/mlp/post"], ["blocks/0/mlp/post", "blocks/0"]])
def test_a_block_and_a_tap_inside_it_are_captured_together_in_any_order(model, order):
    ids, mask = padded(sentences())
    both = jnf.capture(model, (ids, mask), order)
    for layer in order:
        np.testing.assert_array_equal(both[layer], jnf.capture(model, (ids, mask), [layer])[layer])


def test_ablate_at_a_tap_and_sweep_a_nested_pair(model):
    ids, mask = padded(sentences())
    keep = np.ones(HIDDEN, np.float32)
    keep[[1, 4]] = 0
    variant = jnf.ablate(model, {"blocks/0/mlp/post": keep})
    # by hand: the first block's MLP with neurons 1 and 4 removed
    x = model.embed(jnp.asarray(ids))
    block = model.blocks[0]
    w = mask[..., None].astype(np.float32)
    h = x + block.mix((x * w).sum(1, keepdims=True) / w.sum(1, keepdims=True))
    expected = h + block.mlp.fc2(jax.nn.gelu(block.mlp.fc1(h)) * keep[None, None])
    got = jnf.capture(variant, (ids, mask), ["blocks/0"])["blocks/0"]
    assert_close(got, np.asarray(expected).reshape(-1, D), BOUND, what="ablated tap")
    nested = jnf.ablate(model, {"blocks/0/mlp/post": keep, "blocks/0": np.ones(D)})
    assert set(ablation.masked_layers(nested)) == {"blocks/0/mlp/post", "blocks/0"}
    masks = np.stack([keep, np.ones(HIDDEN, np.float32)])
    swept = jnf.sweep(nested, lambda m, a, b: m(a, b), jnp.asarray(ids), jnp.asarray(mask),
                      masks={"blocks/0/mlp/post": masks}, batch_size=None)
    np.testing.assert_allclose(np.asarray(swept[0]), np.asarray(variant(ids, mask)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(swept[1]), np.asarray(model(ids, mask)), rtol=0, atol=1e-6)


def test_padded_capture_with_valid_equals_unpadded_row_for_row(model):
    rows = sentences()
    ids, mask = padded(rows)
    batch = {"ids": ids, "mask": mask}
    for valid in (mask > 0, lambda b: b["mask"] > 0):
        got = jnf.capture(model, batch, ["blocks/1/mlp/post", "blocks/0"], valid=valid, batch_size=3)
        for layer in ("blocks/1/mlp/post", "blocks/0"):
            alone = np.concatenate([jnf.capture(model, (row[None], np.ones((1, len(row)), np.int32)), [layer])[layer]
                                    for row in rows])
            assert got[layer].shape == alone.shape == (sum(map(len, rows)), alone.shape[1])
            assert_close(got[layer], alone, BOUND, np.abs(alone) + 1, f"{layer} valid rows")
        where = got.positions["blocks/0"]
        np.testing.assert_array_equal(where, np.argwhere(mask > 0))


def test_layer_means_and_neuron_stats_ignore_padding(model):
    rows = sentences()
    ids, mask = padded(rows)
    layer = "blocks/0/mlp/post"
    alone = np.concatenate([by_hand_post(model, row[None], np.ones((1, len(row)), np.int32))[0] for row in rows])
    alone = alone.astype(np.float64)
    means = jnf.layer_means(model, (ids, mask), [layer], valid=mask > 0)[layer]
    assert_close(means, alone.mean(0), BOUND, np.abs(alone).mean(0) + 1, "valid means")
    plain = jnf.layer_means(model, (ids, mask), [layer])[layer]
    assert np.abs(plain - alone.mean(0)).max() > 100 * BOUND  # padding does move the unmasked answer
    stats = controls.neuron_stats(model, (ids, mask), [layer], valid=mask > 0, batch_size=2)
    assert stats.count[layer] == len(alone)
    assert_close(stats.mean[layer], alone.mean(0), BOUND, np.abs(alone).mean(0) + 1, "valid stats mean")
    assert_close(stats.std[layer], alone.std(0), 4 * BOUND, alone.std(0) + np.abs(alone).mean(0), "valid stats std")
    assert stats.shapes[layer] == (8, HIDDEN)
    with pytest.raises(JNeuronError, match="valid must have one row per sample"):
        jnf.capture(model, (ids, mask), [layer], valid=np.ones((3, 8), bool))
    with pytest.raises(JNeuronError, match="valid must be boolean"):
        jnf.capture(model, (ids, mask), [layer], valid=mask)


def test_capture_inside_jit_returns_the_same_values(model):
    ids, mask = padded(sentences())
    out, cache = jax.jit(lambda m, a, b: run_with_cache(m, (a, b), ["blocks/0/mlp/post", "head"]))(model, ids, mask)
    assert isinstance(cache["head"], jax.Array) and cache["head"].shape == (4, 8, 3)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(cache["head"]))
    plain = jnf.capture(model, (ids, mask), ["blocks/0/mlp/post"])["blocks/0/mlp/post"]
    np.testing.assert_allclose(np.asarray(cache["blocks/0/mlp/post"]).reshape(-1, HIDDEN), plain, rtol=0, atol=1e-6)


def test_patching_one_position_reproduces_the_other_run_downstream():
    local = Tiny(nnx.Rngs(1), mixing=False)  # position-local: every position only sees itself
    rng = np.random.default_rng(3)
    a, b = rng.integers(1, VOCAB, size=(2, 5)), rng.integers(1, VOCAB, size=(2, 5))
    out_a, cache = run_with_cache(local, a, ["blocks/0/mlp/post"])
    where = np.zeros((2, 5), bool)
    where[1, 3] = True
    patched = jnf.patch(local, {"blocks/0/mlp/post": cache["blocks/0/mlp/post"]}, positions=where)
    got, plain_b = np.asarray(patched(b)), np.asarray(local(b))
    assert_close(got[1, 3], np.asarray(out_a)[1, 3], BOUND, np.abs(np.asarray(out_a)[1, 3]) + 1, "patched position")
    # elsewhere run B, to rounding (the patched program fuses differently)
    assert_close(got[~where], plain_b[~where], BOUND, np.abs(plain_b[~where]) + 1, "unpatched positions")
    # K patches at once: values (K, batch, positions, d)
    values = jnp.stack([cache["blocks/0/mlp/post"], run_with_cache(local, b, ["blocks/0/mlp/post"])[1]["blocks/0/mlp/post"]])
    swept = jnf.sweep(patched, lambda m, x: m(x), jnp.asarray(b), values={"blocks/0/mlp/post": values}, batch_size=None)
    assert_close(np.asarray(swept[0]), got, BOUND, np.abs(got) + 1, "swept patch")  # vmapped: other rounding
    assert_close(np.asarray(swept[1]), plain_b, BOUND, np.abs(plain_b) + 1, "patched with its own activation")
    with pytest.raises(JNeuronError, match="positions must be a boolean array"):
        jnf.patch(local, {"blocks/0/mlp/post": cache["blocks/0/mlp/post"]}, positions=where.astype(int))


def test_steering_adds_the_vector_and_sweeps_strengths(model):
    ids, mask = padded(sentences())
    vector = np.linspace(-1, 1, D).astype(np.float32)
    steered = jnf.steer(model, {"blocks/0": vector}, scale=2.0)
    intact = jnf.capture(model, (ids, mask), ["blocks/0"])["blocks/0"]
    got = jnf.capture(steered, (ids, mask), ["blocks/0"])["blocks/0"]
    assert_close(got, intact + 2.0 * vector, tolerance(1), np.abs(intact) + 2, "steered")
    strengths = np.array([0.0, 2.0], np.float32)[:, None] * vector
    swept = jnf.sweep(steered, lambda m, a, b: m(a, b), jnp.asarray(ids), jnp.asarray(mask),
                      shifts={"blocks/0": strengths}, batch_size=None)
    for k, expected in enumerate((np.asarray(model(ids, mask)), np.asarray(steered(ids, mask)))):
        # vmapped and plain programs round differently (float32, fan-in <= 10)
        assert_close(np.asarray(swept[k]), expected, BOUND, np.abs(expected) + 1, f"strength {k}")


def test_ablation_curve_takes_dict_batches_and_a_metric_that_sees_the_batch(model):
    ids, mask = padded(sentences())
    labels = (ids % 3).astype(np.int32)

    def token_accuracy(outputs, labels, batch):
        hit = (jnp.argmax(outputs, -1) == labels) & (batch["mask"] > 0)
        return hit.sum() / (batch["mask"] > 0).sum()

    curve = jnf.ablation_curve(model, {"ids": ids, "mask": mask}, labels, np.arange(HIDDEN),
                               ["blocks/0/mlp/post"], [0, HIDDEN], metric=token_accuracy, mode="mean",
                               valid=lambda b: b["mask"] > 0)
    out = np.asarray(model(ids, mask))
    expected = ((out.argmax(-1) == labels) & (mask > 0)).sum() / (mask > 0).sum()
    assert curve.values[0] == pytest.approx(expected, abs=1e-6) and curve.baseline == pytest.approx(expected, abs=1e-6)
    # the built-in metric with valid=: accuracy over valid positions only, for every k
    builtin = jnf.ablation_curve(model, {"ids": ids, "mask": mask}, labels, np.arange(HIDDEN),
                                 ["blocks/0/mlp/post"], [0, HIDDEN], metric="accuracy", valid=mask > 0)
    removed = jnf.ablate(model, {"blocks/0/mlp/post": np.zeros(HIDDEN)})
    out = np.asarray(removed(ids, mask))
    without = ((out.argmax(-1) == labels) & (mask > 0)).sum() / (mask > 0).sum()
    np.testing.assert_allclose(builtin.values, [expected, without], rtol=0, atol=1e-6)


def test_conductance_from_token_ids_in_embedding_space(model):
    ids, mask = padded(sentences()[:3], length=7)
    first_class = lambda out: out[:, 0, 0]
    common = dict(target=first_class, embed="embed", method="gausslegendre", steps=24)
    inner = jnf.conductance(model, (ids, mask), "blocks/0/mlp/post", valid=lambda b: b[1] > 0, **common)
    whole = jnf.conductance(model, (ids, mask), "blocks/1", **common)
    # F(x) - F(baseline) by hand: the model with the embedding output replaced by the zero baseline
    zero_embed = jnf.ablate(model, {"embed": np.zeros(D)})
    delta = np.asarray(model(ids, mask))[:, 0, 0] - np.asarray(zero_embed(ids, mask))[:, 0, 0]
    scale = np.abs(delta) + 1
    assert_close(inner.delta, delta, BOUND, scale, "delta")
    # every path runs through block 1's output: no bypass; the path integral converged (24 nodes, smooth)
    assert_close(whole.bypass, np.zeros(3), 10 * BOUND, scale, "bypass of the last block")
    assert_close(whole.quadrature_gap, np.zeros(3), 10 * BOUND, scale, "quadrature gap")
    # the MLP neurons sit inside a residual block: a large part flows around them, and it is reported so
    assert np.all(np.abs(inner.bypass) > 1e3 * BOUND * scale)
    assert_close(inner.quadrature_gap, np.zeros(3), 10 * BOUND, scale, "quadrature gap (inner)")
    # per-neuron totals over valid positions, by hand
    values = inner.values.reshape(3, 7, HIDDEN)
    by_hand = np.stack([values[n][mask[n] > 0].sum(0) for n in range(3)])
    np.testing.assert_allclose(inner.totals(), by_hand, rtol=1e-12, atol=0)
    ranking = inner.ranking()
    assert len(ranking.scores) == HIDDEN
    np.testing.assert_allclose(ranking.scores, np.abs(by_hand).mean(0), rtol=1e-12, atol=0)
    with pytest.raises(JNeuronError, match="embed="):
        jnf.conductance(model, (ids, mask), "blocks/0/mlp/post", target=first_class)


def test_a_model_source_runs_the_model_once_for_every_pass(model, monkeypatch):
    import jneuron as jn
    from jneuron.flax import capturing

    rng = np.random.default_rng(5)
    rows = [rng.integers(1, VOCAB, size=n) for n in rng.integers(2, 8, size=40)]
    ids, mask = padded(rows)
    layers = ["blocks/0/mlp/post", "blocks/1/mlp/post", "blocks/0", "blocks/1"]
    calls = []
    forward = capturing._forward
    monkeypatch.setattr(capturing, "_forward", lambda *a: calls.append(1) or forward(*a))
    source = jnf.capture_source(model, (ids, mask), layers, batch_size=8, valid=mask > 0)
    ranking = jn.maxcorr(source, chunk_tokens=16, memory_budget=2048)  # several tiles: several passes
    batches = -(-len(rows) // 8)
    assert len(calls) <= 1 + batches  # the peek at the first chunk, then one complete pass
    captured = jnf.capture(model, (ids, mask), layers, valid=mask > 0)
    expected = jn.maxcorr({layer: captured[layer] for layer in layers}, chunk_tokens=16)
    np.testing.assert_allclose(ranking.scores, expected.scores, rtol=0, atol=1e-6)
    calls.clear()
    matrix = jn.similarity_matrix(jnf.capture_source(model, (ids, mask), layers, batch_size=8, valid=mask > 0),
                                  metric="cka")
    assert len(calls) <= 1 + batches
    direct = jn.similarity_matrix({layer: captured[layer] for layer in layers}, metric="cka")
    assert matrix.tokens == direct.tokens == int(mask.sum())
    np.testing.assert_allclose(matrix.values, direct.values, rtol=0, atol=1e-6)
    spilled = jnf.capture_source(model, (ids, mask), layers, batch_size=8, valid=mask > 0, cache="disk")
    np.testing.assert_allclose(jn.maxcorr(spilled, chunk_tokens=16, memory_budget=2048).scores, expected.scores, rtol=0, atol=1e-6)
    rerun = jnf.capture_source(model, (ids, mask), layers, batch_size=8, cache=None)
    with pytest.warns(UserWarning, match="runs the model again"):
        jn.maxcorr(rerun, chunk_tokens=16, memory_budget=2048)


def test_control_sweep_averages_over_valid_positions(model):
    ids, mask = padded(sentences())
    layer = "blocks/0/mlp/post"
    stats = controls.neuron_stats(model, (ids, mask), [layer], valid=mask > 0)
    vs = [-2.0, 3.0]
    sweep = controls.control_sweep(model, (ids, mask), layer, [0, 5], stats, vs, valid=lambda b: b[1] > 0,
                                   batch_size=None)
    intact = np.asarray(model(ids, mask))
    valid = mask > 0
    for k, v in enumerate(vs):
        out = np.asarray(controls.control(model, {layer: [0, 5]}, stats, v=v)(ids, mask))
        change = np.sqrt(((out - intact) ** 2).sum(-1))[valid].mean()
        flipped = (out.argmax(-1) != intact.argmax(-1))[valid].mean()
        assert_close(sweep.change[k], change, BOUND, np.abs(out).max() + 1, f"change at v={v}")
        assert sweep.flipped[k] == pytest.approx(flipped, abs=1e-12)


def test_a_position_mask_of_another_length_is_refused_outside_control(model):
    ids, mask = padded(sentences())
    variant = jnf.ablate(model, {"blocks/0/mlp/post": np.ones((5, HIDDEN), np.float32)})  # inputs have 8
    with pytest.raises(JNeuronError, match="does not fit the layer's output"):
        variant(ids, mask)
