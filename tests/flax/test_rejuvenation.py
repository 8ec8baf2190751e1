"""Neural Rejuvenation: dead neurons, exact utilization, L1 on BatchNorm scales, function-keeping rescaling,
revived neurons carrying gradient, width reallocation under the parameter budget, the mixed S/R layer."""

import functools
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jneuron.cli.main import main
from jneuron.errors import JNeuronError
from jneuron.flax import (
    BNMLP,
    SRLinear,
    bn_scale_l1,
    dead_neurons,
    rejuvenate,
    utilization,
)
from jneuron.flax.rejuvenation import reallocated_widths
from jneuron.models import MLP
from tests.tolerance import assert_close, tolerance


def _set_scales(model: BNMLP, scales) -> BNMLP:
    for block, scale in zip(model.blocks, scales):
        block.norm.scale.set_value(jnp.asarray(scale, jnp.float32))
    return model


def _mode(model: BNMLP, running_average: bool) -> BNMLP:
    for block in model.blocks:
        block.norm.use_running_average = running_average
    return model


def _eval(model: BNMLP, running_average: bool = True):
    """The model as a compiled function of its input (running statistics, or the batch's; no state updates)."""
    return lambda x: _apply(*nnx.split(_mode(model, running_average)), x)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x):
    return nnx.merge(graphdef, state, copy=True)(x)


def _randomize(model: BNMLP, rng: np.random.Generator) -> BNMLP:
    """Random shifts and running statistics, so the checks are not helped by defaults."""
    for block in model.blocks:
        width = block.norm.scale[...].shape[0]
        block.norm.bias.set_value(jnp.asarray(rng.normal(size=width), jnp.float32))
        block.norm.mean.set_value(jnp.asarray(rng.normal(size=width), jnp.float32))
        block.norm.var.set_value(jnp.asarray(rng.uniform(0.5, 2.0, size=width), jnp.float32))
    return model


def _bn_error_scale(model: BNMLP, x, running_average: bool = True) -> tuple[int, np.ndarray]:
    """``(terms, scale)`` of a BNMLP's logits: float64 running error analysis of a float32 pass.

    Per block: ``z = x W`` rounds relative to ``|x| |W|`` and carries the incoming error through ``|W|``;
    BatchNorm ``(z - mu) g / s + beta`` passes an error of ``z`` on ``|g| / s`` times, adds its own
    roundings (relative to ``|z| + |mu|`` before the scaling, and to its output), and in training mode the
    batch's ``mu`` and ``s`` carry the batch mean of those errors too (``d s <= mean(|z - mu| d z) / s``,
    entering as ``|g| |z - mu| d s / s^2``); ReLU passes it on. ``terms``: the longest fan-in plus the batch
    (the batch statistics' sums), or just the fan-in with running statistics.
    """
    h = np.asarray(x, np.float64)
    e = np.zeros_like(h)
    fan_in = 0
    for block in model.blocks:
        w = np.asarray(block.linear.kernel[...], np.float64)
        fan_in = max(fan_in, w.shape[0])
        norm = block.norm
        g, beta = (np.asarray(v[...], np.float64) for v in (norm.scale, norm.bias))
        z = h @ w
        e_z = (np.abs(h) + e) @ np.abs(w)
        if running_average:
            mu, var = np.asarray(norm.mean[...], np.float64), np.asarray(norm.var[...], np.float64)
            d_mu = d_s = 0.0
        else:
            mu, var = z.mean(0), z.var(0)
        s = np.sqrt(var + norm.epsilon)
        if not running_average:
            d_mu = (e_z + np.abs(z)).mean(0)
            d_s = (np.abs(z - mu) * (e_z + d_mu)).mean(0) / s + np.abs(s)
        y = (z - mu) * g / s + beta
        e = np.abs(g) / s * (e_z + np.abs(z) + np.abs(mu) + d_mu) + np.abs(g) * np.abs(z - mu) * d_s / s**2
        e = e + np.abs(beta) + np.abs(y)
        h = np.maximum(y, 0)
    wh, bh = (np.asarray(v[...], np.float64) for v in (model.head.kernel, model.head.bias))
    fan_in = max(fan_in, wh.shape[0])
    out = h @ wh + bh
    scale = (np.abs(h) + e) @ np.abs(wh) + np.abs(bh) + np.abs(out)
    return fan_in + (0 if running_average else len(h)), scale


def test_dead_neurons_are_relative_to_the_layer_max():
    model = _set_scales(BNMLP(4, (5, 3), 2, rngs=nnx.Rngs(0)),
                        [[2.0, -0.019, 0.021, 0.0, -2.0], [1e-3, 1e-3, 1e-5]])
    dead = dead_neurons(model)
    assert dead["blocks/0/norm"].tolist() == [False, True, False, True, False]
    assert dead["blocks/1/norm"].tolist() == [False, False, True]
    assert dead_neurons(model, threshold=0.5)["blocks/1/norm"].tolist() == [False, False, True]


def _brute_force_utilization(model: BNMLP, threshold: float = 0.01) -> float:
    """Weight by weight: live when the neuron it reads and the neuron it feeds are both live."""
    live = [np.ones(model.blocks[0].linear.kernel.get_value().shape[0], bool)]
    for block in model.blocks:
        scale = np.abs(np.asarray(block.norm.scale[...]))
        live.append(scale >= threshold * scale.max())
    live.append(np.ones(model.head.kernel.get_value().shape[1], bool))
    alive = total = 0
    for a, b in zip(live[:-1], live[1:]):
        for i, j in itertools.product(range(len(a)), range(len(b))):
            total += 1
            alive += int(a[i] and b[j])
    return alive / total


def test_utilization_is_exact_on_a_hand_built_model():
    model = _set_scales(BNMLP(5, (4, 3), 2, rngs=nnx.Rngs(0)), [[0.0, 1.0, 1.0, 1.0], [1.0, 0.001, 0.0]])
    # live weights 5*3 + 3*1 + 1*2 = 20 of 5*4 + 4*3 + 3*2 = 38
    assert utilization(model) == 20 / 38
    assert utilization(BNMLP(5, (4, 3), 2, rngs=nnx.Rngs(0))) == 1.0


@settings(max_examples=10)
@given(st.lists(st.lists(st.sampled_from([0.0, 1e-4, 0.3, 1.0, -2.0]), min_size=1, max_size=6),
                min_size=1, max_size=3))
def test_utilization_matches_brute_force(scales):
    widths = [len(s) for s in scales]
    model = _set_scales(nnx.eval_shape(lambda: BNMLP(3, widths, 2, rngs=nnx.Rngs(0))), scales)
    # a ratio of weight counts: one float64 division each way
    assert_close(utilization(model), _brute_force_utilization(model), tolerance(1, np.float64), what="utilization")


def test_bn_scale_l1_adds_the_subgradient_to_scales_only():
    model = _set_scales(BNMLP(3, (4,), 2, rngs=nnx.Rngs(0)), [[0.5, -0.2, 0.0, 3.0]])
    params = nnx.state(model, nnx.Param)
    transform = bn_scale_l1(model, strength=0.1)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = transform.update(grads, transform.init(params), params)
    # 1 + 0.1 sign(gamma) in float32: one rounding of each
    assert_close(updates["blocks"][0]["norm"]["scale"][...], [1.1, 0.9, 1.0, 1.1], tolerance(1), 1.1, "scale update")
    for other in (updates["blocks"][0]["norm"]["bias"], updates["blocks"][0]["linear"]["kernel"],
                  updates["head"]["kernel"]):
        np.testing.assert_array_equal(other[...], 1.0)


def test_l1_training_shrinks_scales():
    model = BNMLP(4, (6,), 2, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer = optax.chain(bn_scale_l1(model, strength=1.0), optax.sgd(0.05))
    state = optimizer.init(params)
    for _ in range(10):  # zero data gradient: only the L1 pull acts
        updates, state = optimizer.update(jax.tree.map(jnp.zeros_like, params), state, params)
        params = optax.apply_updates(params, updates)
    scale = nnx.merge(graphdef, params, rest).blocks[0].norm.scale[...]
    # ten float32 steps of 1 - 0.05 sign: a rounding of each, on values of size <= 1
    assert_close(scale, np.full(6, 0.5), tolerance(10), what="shrunk scales")


def test_rescaling_keeps_the_function(rng):
    model = _randomize(BNMLP(6, (7, 5), 3, rngs=nnx.Rngs(1)), rng)
    _set_scales(model, [rng.choice([0.05, -0.1, 0.3, 1.5], size=7), rng.choice([0.02, -0.2, 0.8], size=5)])
    x = jnp.asarray(rng.normal(size=(32, 6)), jnp.float32)
    before_eval, before_train = _eval(model)(x), _eval(model, False)(x)
    fresh = rejuvenate(model, jax.random.key(0), threshold=0.0, target=0.5)
    for running, before in ((True, before_eval), (False, before_train)):
        # the same function with other parameters: two float32 passes, each within its own scale
        (terms, a), (_, b) = _bn_error_scale(model, x, running), _bn_error_scale(fresh, x, running)
        assert_close(_eval(fresh, running)(x), before, tolerance(terms), a + b,
                     f"rescaled model, running statistics: {running}")
    scales = np.abs(np.concatenate([np.asarray(b.norm.scale[...]) for b in fresh.blocks]))
    assert scales.min() >= 0.5 * (1 - tolerance(1))  # raised to the target, up to a float32 rounding
    # not rounding: the next layer's weights must really be rescaled (by factors of at least 0.5 / 0.3)
    assert float(jnp.abs(fresh.blocks[1].linear.kernel[...] - model.blocks[1].linear.kernel[...]).max()) > 0.01


def _loss_grads(model: BNMLP, x, y):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        logits = nnx.merge(graphdef, params, rest, copy=True)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return jax.jit(jax.grad(loss))(params)


def test_revived_neurons_carry_gradient_again(rng):
    model = _randomize(BNMLP(6, (8, 5), 3, rngs=nnx.Rngs(2)), rng)
    scales = np.ones(8, np.float32)
    scales[[1, 4]] = 0.0
    _set_scales(model, [scales, np.ones(5)])
    x = jnp.asarray(rng.normal(size=(32, 6)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, size=32), jnp.int32)
    before = np.asarray(_loss_grads(_mode(model, False), x, y)["blocks"][0]["linear"]["kernel"][...])
    np.testing.assert_array_equal(before[:, [1, 4]], 0.0)  # dead: no gradient reaches their weights
    fresh = rejuvenate(model, jax.random.key(3))
    assert not dead_neurons(fresh)["blocks/0/norm"].any() and utilization(fresh) == 1.0
    assert_close(np.asarray(fresh.blocks[0].norm.scale[...])[[1, 4]], [0.5, 0.5], tolerance(1), 0.5, "revived scales")
    np.testing.assert_array_equal(np.asarray(fresh.blocks[0].norm.bias[...])[[1, 4]], 0.0)
    after = np.asarray(_loss_grads(_mode(fresh, False), x, y)["blocks"][0]["linear"]["kernel"][...])
    # not rounding: a revived neuron's weights must get a material gradient (1e-4; He-initialized, ~1e-2)
    assert np.abs(after[:, [1, 4]]).min(axis=0).max() > 0 and np.all(np.abs(after[:, [1, 4]]).sum(axis=0) > 1e-4)
    # He init of the revived incoming weights; live neurons keep theirs
    kernel = np.asarray(fresh.blocks[0].linear.kernel[...])
    np.testing.assert_array_equal(kernel[:, [0, 2, 3, 5, 6, 7]], np.asarray(model.blocks[0].linear.kernel[...])[
        :, [0, 2, 3, 5, 6, 7]])
    # not rounding: freshly drawn weights, nowhere near the old ones
    assert not np.allclose(kernel[:, [1, 4]], np.asarray(model.blocks[0].linear.kernel[...])[:, [1, 4]])


def _param_count(model) -> int:
    return sum(int(np.size(p)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_reallocation_fits_the_budget_and_keeps_survivors(rng):
    model = _randomize(BNMLP(6, (12, 10), 3, rngs=nnx.Rngs(4)), rng)
    first = np.ones(12, np.float32)
    first[6:] = 0.0  # half of layer 0 dead
    second = rng.choice([0.2, 1.0], size=10).astype(np.float32)
    second[0] = 0.0
    _set_scales(model, [first, second])
    for block in model.blocks:  # dead neurons output exactly zero
        block.norm.bias.set_value(jnp.where(block.norm.scale[...] == 0, 0.0, block.norm.bias[...]))
    fresh = rejuvenate(model, jax.random.key(5), reallocate=True)
    widths = [b.norm.scale[...].shape[0] for b in fresh.blocks]
    assert _param_count(fresh) <= _param_count(model)
    assert widths == reallocated_widths([6, 9], 6, 3, _param_count(model))
    assert widths[1] > widths[0] and sum(widths) > 15  # proportional to the live counts (6, 9), grown
    assert utilization(fresh) == 1.0
    # silence the new neurons' outgoing weights: the survivors alone compute the old function
    live = [np.arange(6), np.flatnonzero(second != 0)]
    for layer, kept in zip([b.linear for b in fresh.blocks[1:]] + [fresh.head], live):
        kernel = np.asarray(layer.kernel[...]).copy()
        kernel[len(kept):] = 0.0
        layer.kernel.set_value(jnp.asarray(kernel))
    x = jnp.asarray(rng.normal(size=(16, 6)), jnp.float32)
    (terms, a), (_, b) = _bn_error_scale(model, x), _bn_error_scale(fresh, x)
    assert_close(_eval(fresh)(x), _eval(model)(x), tolerance(terms), a + b, "survivors alone")


def test_reallocated_widths_use_the_budget():
    widths = reallocated_widths([10, 5], 8, 4, budget=1000)
    bigger = [w + 1 for w in widths]
    count = lambda ws: sum(a * b + 2 * b for a, b in zip((8, *ws), ws)) + ws[-1] * 4 + 4  # noqa: E731
    assert count(widths) <= 1000 < count(bigger)
    assert widths[0] >= 2 * widths[1] - 1


def test_sr_layer_cross_attention():
    layer = SRLinear(3, 2, 4, 5, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    i_s, i_r = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(6, 2)).astype(np.float32)
    o_s, o_r = layer(jnp.asarray(i_s), jnp.asarray(i_r))
    ss, rs, sr, rr = (np.asarray(p[...], np.float64) for p in (layer.ss, layer.rs, layer.sr, layer.rr))
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    own_s, own_r = i_s @ ss, i_r @ rr
    # float32 against float64: own = x W (fan-in 3 or 2) moves the output by (1 + |cross| / 2) times its error
    # (sigmoid' <= 1/4, times 2), cross by 2 sigmoid <= 2 times; then a few roundings of the output
    for got, own, cross, (a, b, w_own, w_cross) in ((o_s, own_s, i_r @ rs, (i_s, i_r, ss, rs)),
                                                    (o_r, own_r, i_s @ sr, (i_r, i_s, rr, sr))):
        own_scale, cross_scale = np.abs(a) @ np.abs(w_own), np.abs(b) @ np.abs(w_cross)
        expected = own + 2 * sig(own) * cross
        scale = own_scale * (1 + np.abs(cross) / 2) + 2 * cross_scale + np.abs(expected)
        assert_close(got, expected, tolerance(3), scale, "S/R output")
    zero_s, _ = layer(jnp.asarray(i_s), jnp.zeros((6, 2)))
    assert_close(zero_s, own_s, tolerance(3), np.abs(i_s) @ np.abs(ss), "no cross input")  # 2 sig * 0 = 0 exactly


def test_bad_models_and_arguments_are_named():
    with pytest.raises(JNeuronError, match="no BatchNorm"):
        dead_neurons(MLP(3, (4,), 2, rngs=nnx.Rngs(0)))
    with pytest.raises(JNeuronError, match="not a chain model"):
        utilization(MLP(3, (4,), 2, rngs=nnx.Rngs(0)))
    with pytest.raises(JNeuronError, match="threshold"):
        dead_neurons(BNMLP(3, (4,), 2, rngs=nnx.Rngs(0)), threshold=1.5)
    with pytest.raises(JNeuronError, match="target"):
        rejuvenate(BNMLP(3, (4,), 2, rngs=nnx.Rngs(0)), jax.random.key(0), target=-1.0)


def test_study_command_writes_json_and_png(tmp_path, capsys):
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes its int32 step count with floats
        code = main(["study-rejuvenation", "--out", str(tmp_path), "--hidden", "8", "--epochs", "1",
                     "--epochs-after", "1", "--l1", "0.5"])
    assert code == 0
    result = json.loads((tmp_path / "rejuvenation.json").read_text())
    phases = [h["phase"] for h in result["history"]]
    assert phases == ["sparse", "rejuvenated", "after"]
    assert result["history"][1]["utilization"] == 1.0
    assert all(0 <= h["accuracy"] <= 1 and 0 <= h["utilization"] <= 1 for h in result["history"])
    assert (tmp_path / "rejuvenation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["study-rejuvenation", "--out", str(tmp_path), "--epochs", "0"]) == 2
    assert "--epochs must be" in capsys.readouterr().err
