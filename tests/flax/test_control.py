"""Control (mean + v * std, class means, positions) and subspace erasure, against float64 references."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jneuron import DeadNeuronWarning, JNeuronError
from jneuron import flax as jnf
from jneuron.flax import controls as ctl
from jneuron.models import MLP
from tests.flax_models import Encoder, dense_chain, forward_error_scale
from tests.tolerance import assert_close, tolerance

FAN_IN = 12  # the MLP's longest dot product: its 12 inputs (then 10 and 6)


def _logit_scale(model, x, replace=None):
    """The logits' running error scale (``tests.flax_models.forward_error_scale``)."""
    return forward_error_scale(dense_chain(model), x, replace)[1]


def _set(neurons, values):
    """A ``replace`` for layer 0: ``neurons`` output ``values`` exactly (float32 constants: no error)."""
    def replace(i, h, e):
        if i == 0:
            h, e = h.copy(), e.copy()
            h[:, neurons], e[:, neurons] = values, 0.0
        return h, e
    return replace


def _erased(q, center):
    """A ``replace`` for layer 0 projecting out the span of the orthonormal columns ``q`` around ``center``,
    as ``Erased`` computes it in float32: ``y - ((y - c) Q) Q^T``. Its error scale: the input's error through
    ``|I - Q Q^T|``, the subtraction (``|y|``), the two products over the neurons and the basis, and the
    rounding of ``c`` to float32."""
    projector = np.eye(q.shape[0]) - q @ q.T

    def replace(i, h, e):
        if i != 0:
            return h, e
        products = ((np.abs(h) + np.abs(center)) @ np.abs(q)) @ np.abs(q).T
        return center + (h - center) @ projector, e @ np.abs(projector) + np.abs(h) + products + np.abs(center)
    return replace


@pytest.fixture(scope="module")
def mlp():
    return MLP(12, (10, 6), 4, rngs=nnx.Rngs(7))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2)
    return (rng.normal(size=(90, 12)) + 0.3).astype(np.float32), rng.integers(0, 3, 90)


def test_neuron_stats_match_float64_reference(data):
    x, y = data
    model = MLP(12, (10,), 4, rngs=nnx.Rngs(1), activation=lambda h: h + 1e3)  # outputs offset by 1e3
    stats = ctl.neuron_stats(model, x, ["layers/0"], labels=y, batch_size=16)
    hidden = np.asarray(model.hidden(jnp.asarray(x))[0], np.float64)
    # the statistics see the float32 activations of batches of 16; those are the model's up to two float32
    # passes' rounding (fan-in 12, and the offset's: forward_error_scale counts |h|)
    acts = np.asarray(jnf.capture(model, x, ["layers/0"], batch_size=16)["layers/0"], np.float64)
    assert_close(acts, hidden, 2 * tolerance(FAN_IN), forward_error_scale(dense_chain(model)[:1], x)[1],
                 "captured activations")
    # of those, float64 statistics (Chan's merge centres each batch: the offset of 1e3 costs nothing)
    sd = acts.std(0)
    bound = tolerance(90, np.float64)
    assert_close(stats.mean["layers/0"], acts.mean(0), 1.0, bound * sd + tolerance(1, np.float64) * 1e3, "mean")
    assert_close(stats.std["layers/0"], sd, bound, sd, "std")
    expected = np.stack([acts[y == c].mean(0) for c in range(3)])
    # class sums of the raw values (not centred): relative to their size
    assert_close(stats.class_mean["layers/0"], expected, bound, np.abs(expected), "class means")
    assert stats.count["layers/0"] == 90 and stats.shapes["layers/0"] == (10,)


def test_control_sets_mean_plus_v_std(mlp, data):
    x, _ = data
    stats = ctl.neuron_stats(mlp, x, ["layers/0"])
    variant = ctl.control(mlp, {"layers/0": [2, 5]}, stats, v=1.5)
    got = jnf.capture(variant, x, ["layers/0"])["layers/0"]
    intact = jnf.capture(mlp, x, ["layers/0"])["layers/0"]
    target = stats.mean["layers/0"] + 1.5 * stats.std["layers/0"]
    # the layer outputs the value rounded to float32 (output * 0 + value * 1 is exact): one rounding
    scale = np.abs(stats.mean["layers/0"]) + 1.5 * stats.std["layers/0"]
    assert_close(got[:, [2, 5]], np.broadcast_to(target[[2, 5]], (90, 2)), tolerance(1), scale[[2, 5]], "control")
    others = [i for i in range(10) if i not in (2, 5)]
    np.testing.assert_array_equal(got[:, others], intact[:, others])


def test_class_conditional_control(mlp, data):
    x, y = data
    with pytest.warns(DeadNeuronWarning, match="neuron_stats: 1 constant neuron.*layers/1/2"):  # a dead ReLU
        stats = ctl.neuron_stats(mlp, x, ["layers/1"], labels=y)
    variant = ctl.control(mlp, {"layers/1": [0]}, stats, target=2, alpha=3.0)
    got = jnf.capture(variant, x, ["layers/1"])["layers/1"][:, 0]
    hidden = np.asarray(mlp.hidden(jnp.asarray(x))[1], np.float64)
    assert stats.dead["layers/1"].tolist() == np.flatnonzero(np.ptp(hidden, axis=0) == 0).tolist() == [2]
    assert stats.std["layers/1"][2] == 0.0
    # the statistics' activations and these are two float32 passes (fan-in 12 then 10); the class mean of
    # their error scale, times alpha; then one rounding to float32
    e = forward_error_scale(dense_chain(mlp)[:2], x)[1]
    assert_close(got, np.full(90, 3.0 * hidden[y == 2, 0].mean()), 2 * tolerance(FAN_IN),
                 3.0 * (e[y == 2, 0].mean() + np.abs(hidden[y == 2, 0].mean())), "class-conditional control")
    with pytest.raises(JNeuronError, match="class 7 is not among the labels"):
        ctl.control(mlp, {"layers/1": [0]}, stats, target=7)


def test_control_at_chosen_positions():
    model = Encoder(vocab=9, d=8, blocks=1, classes=3, rngs=nnx.Rngs(0))
    tokens = np.random.default_rng(0).integers(0, 9, size=(5, 4))
    layer = "encoder/layers/0/mlp/hidden"
    stats = ctl.neuron_stats(model, tokens, [layer])
    assert stats.shapes[layer] == (4, 16)
    variant = ctl.control(model, {layer: [3]}, stats, v=-2.0, positions=[2])
    got = jnf.capture(variant, tokens, [layer])
    intact = jnf.capture(model, tokens, [layer])[layer]
    at = got.positions[layer][:, 1] == 2
    target = stats.mean[layer][3] - 2.0 * stats.std[layer][3]
    # the value rounded to float32 once (see test_control_sets_mean_plus_v_std)
    assert_close(got[layer][at, 3], np.full(at.sum(), target), tolerance(1),
                 np.abs(stats.mean[layer][3]) + 2.0 * stats.std[layer][3], "control at position 2")
    np.testing.assert_array_equal(got[layer][~at], intact[~at])
    np.testing.assert_array_equal(np.delete(got[layer][at], 3, axis=1), np.delete(intact[at], 3, axis=1))
    # positions are independent of the reference data's length (4): position 4 of longer inputs is
    # controlled, and inputs shorter than the positions run unchanged
    longer = np.random.default_rng(1).integers(0, 9, size=(3, 6))
    late = jnf.capture(ctl.control(model, {layer: [3]}, stats, v=-2.0, positions=[4]), longer, [layer])
    plain = jnf.capture(model, longer, [layer])[layer]
    at = late.positions[layer][:, 1] == 4
    assert_close(late[layer][at, 3], np.full(at.sum(), target), tolerance(1),
                 np.abs(stats.mean[layer][3]) + 2.0 * stats.std[layer][3], "control at position 4")
    np.testing.assert_array_equal(late[layer][~at], plain[~at])
    short = jnf.capture(ctl.control(model, {layer: [3]}, stats, positions=[4]), tokens[:, :3], [layer])[layer]
    np.testing.assert_array_equal(short, jnf.capture(model, tokens[:, :3], [layer])[layer])
    with pytest.raises(JNeuronError, match=r"positions must be non-negative"):
        ctl.control(model, {layer: [3]}, stats, positions=[-1])


def test_control_sweep_equals_separate_controls(mlp, data):
    x, _ = data
    stats = ctl.neuron_stats(mlp, x, ["layers/0"])
    vs = [-3.0, 0.0, 4.0]
    effect = ctl.control_sweep(mlp, x, "layers/0", [1, 3, 4], stats, vs)
    for k, v in enumerate(vs):
        single = ctl.control(mlp, {"layers/0": [1, 3, 4]}, stats, v=v)(jnp.asarray(x))
        value = np.float32(ctl.control_values(stats, "layers/0", v=v)[[1, 3, 4]])
        assert_close(effect.outputs[k], single, 2 * tolerance(FAN_IN),
                     _logit_scale(mlp, x, _set([1, 3, 4], value)), f"sweep vs separate, v={v}")
    intact = np.asarray(mlp(jnp.asarray(x)))
    expected = np.sqrt(((effect.outputs - intact) ** 2).sum(-1)).mean(-1)
    # the sweep's intact pass and this one differ by two passes' rounding of each logit, which moves the mean
    # norm by at most the mean norm of that; then the float32 norms and mean (90 x 4 terms)
    moved = 2 * tolerance(FAN_IN) * np.sqrt((_logit_scale(mlp, x) ** 2).sum(-1)).mean()
    assert_close(effect.change, expected, 1.0, moved + tolerance(90 * 4) * expected, "change")
    assert effect.change[2] > 0 and effect.flipped.shape == (3,)


def test_erasing_axis_directions_is_ablation(mlp, data):
    x, _ = data
    axes = np.eye(10)[[1, 6]]
    zeroed = jnf.ablate(mlp, {"layers/0": np.where(np.isin(np.arange(10), [1, 6]), 0, 1)})
    # two float32 passes; the erased one's scale also carries the projection's products (over 10 neurons)
    scale = _logit_scale(mlp, x, _erased(axes.T, np.zeros(10)))
    assert_close(ctl.erase(mlp, {"layers/0": axes})(jnp.asarray(x)), zeroed(jnp.asarray(x)), 2 * tolerance(FAN_IN),
                 scale, "erased axes vs zero ablation")
    means = jnf.layer_means(mlp, x, ["layers/0"])
    mean_ablated = jnf.ablate(mlp, {"layers/0": np.where(np.isin(np.arange(10), [1, 6]), 0, 1)}, mode="mean",
                              values=means)
    scale = _logit_scale(mlp, x, _erased(axes.T, np.asarray(means["layers/0"], np.float64)))
    assert_close(ctl.erase(mlp, {"layers/0": axes}, center=means)(jnp.asarray(x)), mean_ablated(jnp.asarray(x)),
                 2 * tolerance(FAN_IN), scale, "erased axes around the means vs mean ablation")


def test_erased_output_has_no_component_in_the_subspace(mlp, data, rng):
    x, _ = data
    directions = rng.normal(size=(3, 10))
    directions = np.vstack([directions, directions[0] + directions[1]])  # rank-deficient: 4 rows, rank 3
    center = rng.normal(size=10)
    variant = ctl.erase(mlp, {"layers/0": directions}, center={"layers/0": center})
    got = np.asarray(jnf.capture(variant, x, ["layers/0"])["layers/0"], np.float64)
    intact = np.asarray(jnf.capture(mlp, x, ["layers/0"])["layers/0"], np.float64)
    q, _ = np.linalg.qr(directions[:3].T)
    # the erased output's rounding (the layer's own error is projected out with the rest): the subtraction,
    # the products over the 10 neurons and the 3 basis vectors, the float32 centre; fan-in 12 bounds them all
    _, own = _erased(q, center)(0, intact, np.zeros_like(intact))
    assert_close((got - center) @ q, np.zeros((90, 3)), tolerance(FAN_IN), own @ np.abs(q), "component in the span")
    orthogonal = np.eye(10) - q @ q.T
    # outside the span the erased and intact outputs agree up to two passes of the layer and the erasure's own
    layer = forward_error_scale(dense_chain(mlp)[:1], x)[1]
    assert_close(got @ orthogonal, intact @ orthogonal, tolerance(FAN_IN), (2 * layer + own) @ np.abs(orthogonal),
                 "component outside the span")
    with pytest.raises(JNeuronError, match="directions are all zero"):
        ctl.erase(mlp, {"layers/0": np.zeros((2, 10))})
    with pytest.raises(JNeuronError, match="directions have 5 neurons; the layer has 10"):
        ctl.erase(mlp, {"layers/0": np.ones((1, 5))})(jnp.asarray(x))


@pytest.mark.filterwarnings("ignore::jneuron.DeadNeuronWarning")  # layers/1 has a dead ReLU unit
def test_neuron_stats_resume_and_share_one_run_per_shape(mlp, data, tmp_path):
    """Interrupted mid-pass and rerun equals an uninterrupted run (layers of different widths share the pass)."""
    x, y = data
    layers = ["layers/0", "layers/1"]
    whole = ctl.neuron_stats(mlp, x, layers, labels=y, batch_size=5)  # 18 chunks; checkpoints every 8

    class Killed(Exception):
        pass

    def stop(rows, seen=[]):  # noqa: B006 (the list counts this run's chunks)
        seen.append(rows)
        if len(seen) == 10:
            raise Killed

    with pytest.raises(Killed):
        ctl.neuron_stats(mlp, x, layers, labels=y, batch_size=5, checkpoint=tmp_path, on_chunk=stop)
    read = []
    resumed = ctl.neuron_stats(mlp, x, layers, labels=y, batch_size=5, checkpoint=tmp_path, on_chunk=read.append)
    assert 0 < sum(read) < 90
    for layer in layers:
        np.testing.assert_array_equal(resumed.mean[layer], whole.mean[layer])
        np.testing.assert_array_equal(resumed.std[layer], whole.std[layer])
        np.testing.assert_array_equal(resumed.class_mean[layer], whole.class_mean[layer])
        np.testing.assert_array_equal(resumed.dead[layer], whole.dead[layer])
        assert resumed.count[layer] == 90 and resumed.shapes[layer] == whole.shapes[layer]
