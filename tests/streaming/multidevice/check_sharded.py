"""Sharded statistics equal unsharded ones: run on 8 forced CPU devices by ``tests/streaming/test_multidevice.py``.

These checks need ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` set before JAX starts, so they
live outside the default collection (``check_*.py``) and run in their own pytest process.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jneuron as jn
from jneuron.crossmodel.maxcorr import plan_passes
from jneuron.crossmodel.tilereduce import tile_reducer
from jneuron.errors import DeadNeuronWarning, JNeuronError
from jneuron.kernels import maxcorr as kmax
from jneuron.kernels import sharded as ksharded
from jneuron.kernels.compensated import Pair
from jneuron.streaming.passes import run_pass
from tests.reference import (
    assert_mean_close,
    assert_partners_close,
    cca_bound,
    cka_bound,
    exact_mean,
    floored_condition,
    kept_components,
    lasso_bound,
    rho_bound,
    svcca_bound,
)
from tests.tolerance import assert_close, covariance_scale, tolerance

MESHES = {
    "tokens3": lambda: jn.device_mesh(3),
    "tokens4_neurons2": lambda: jn.device_mesh(8, neuron_shards=2),
    "neurons8": lambda: jn.device_mesh(8, neuron_shards=8),
    "user_mesh": lambda: jax.make_mesh((2, 4), ("tokens", "neurons")),  # jax's default axis types
}


def test_eight_devices():
    assert jax.device_count() == 8


def _nasty(rng, tokens=1001, width=7):
    x = rng.normal(size=(tokens, width)) * 3 + 1e3
    x[:, 1] = 5.0  # dead
    x[:, 4] = 2 * x[:, 0] - 7  # rank deficient
    return x.astype(np.float32)


@pytest.mark.parametrize("name", ["tokens3", "tokens4_neurons2", "neurons8", "user_mesh"])
def test_comoments_sharded_equal_unsharded_and_float64(name):
    rng = np.random.default_rng(1)
    x = _nasty(rng)
    x64 = x.astype(np.float64)
    mu = exact_mean(x64)
    cross64 = (x64 - mu).T @ (x64 - mu)
    single = jn.comoments(x, chunk_tokens=100)
    sharded = jn.comoments(x, chunk_tokens=100, mesh=MESHES[name]())
    assert sharded.count == single.count == 1001
    bound = tolerance(1001)  # float32 sums over the tokens; exact centring, so the 1e3 offset costs nothing
    assert_mean_close(sharded.mean, x64, bound)
    assert_close(sharded.cross, cross64, bound, 1001 * covariance_scale(x64), "cross-products")  # dead: exactly 0
    assert_close(sharded.correlation(), single.correlation(), 2 * bound, what="correlation")  # two float32 runs
    assert list(sharded.dead) == list(single.dead) == [1]


@settings(max_examples=12)
@given(tokens=st.integers(2, 90), devices=st.sampled_from([3, 8]))
def test_uneven_token_counts(tokens, devices):
    x = np.random.default_rng(tokens).normal(size=(tokens, 3)).astype(np.float32) + 100
    got = jn.comoments(x, chunk_tokens=16, devices=devices)
    x64 = x.astype(np.float64)
    assert got.count == tokens
    assert_mean_close(got.mean, x64, tolerance(tokens))
    centred = x64 - exact_mean(x64)
    assert_close(got.cross, centred.T @ centred, tolerance(tokens), tokens * covariance_scale(x64), "cross-products")


def test_iterator_source_sharded():
    x = _nasty(np.random.default_rng(2), tokens=333)
    got = jn.comoments((x[i : i + 50] for i in range(0, 333, 50)), chunk_tokens=64, devices=8)
    assert_close(got.cross, jn.comoments(x).cross, 2 * tolerance(333), 333 * covariance_scale(x),
                 "cross-products")  # two float32 computations


def test_bad_value_reports_global_row():
    x = np.random.default_rng(3).normal(size=(300, 4)).astype(np.float32)
    x[217, 2] = np.nan
    x[250, 0] = np.inf
    with pytest.raises(JNeuronError, match="row 218, neuron 2"):
        jn.comoments(x, chunk_tokens=64, mesh=jn.device_mesh(8, neuron_shards=2))


def _models(rng, tokens=1003):
    shared = rng.normal(size=(tokens, 4))
    models = [shared @ rng.normal(size=(4, w)) + rng.normal(size=(tokens, w)) + 1e3 for w in (5, 9, 6)]
    models[2][:, 3] = 1.0  # dead
    models[1][:, 5] = models[0][:, 1]  # an exact partner (|rho| = 1 ties broken by index)
    return [m.astype(np.float32) for m in models]


@pytest.mark.parametrize(("name", "method"), [("tokens3", "maxcorr"), ("tokens4_neurons2", "maxcorr"),
                                              ("tokens4_neurons2", "mincorr"), ("neurons8", "maxcorr")])
def test_crossmodel_sharded_equal_unsharded(name, method):
    models = _models(np.random.default_rng(4))
    rank = getattr(jn, method)
    with pytest.warns(DeadNeuronWarning):
        single = rank(models, chunk_tokens=128)
    with pytest.warns(DeadNeuronWarning):
        sharded = rank(models, chunk_tokens=128, mesh=MESHES[name]())
    bound = tolerance(1003)  # correlations over the tokens; two float32 computations: twice that apart
    assert_close(sharded.scores, single.scores, 2 * bound, what="scores")
    for ranking in (sharded, single):  # partners tying within rounding may differ (the exact copy ties at 1)
        assert_partners_close(ranking.partner_unit, models, bound)
    same = sharded.partner_unit == single.partner_unit  # signed where the partners agree
    assert_close(np.where(same, sharded.partner_rho, np.abs(sharded.partner_rho)),
                 np.where(same, single.partner_rho, np.abs(single.partner_rho)), 2 * bound, what="partner rho")
    np.testing.assert_array_equal(sharded.dead, single.dead)
    # the same order up to scores tying within rounding: single's scores in sharded's order are sorted too
    assert_close(single.scores[sharded.order], single.scores[single.order], 2 * bound, what="order")


def test_crossmodel_several_passes_sharded():
    models = _models(np.random.default_rng(5))
    with pytest.warns(DeadNeuronWarning):
        single = jn.maxcorr(models, chunk_tokens=128)
    with pytest.warns(DeadNeuronWarning):
        # 2 passes (each a compiled program); more passes take the same path
        assert len(plan_passes((5, 9, 6), 2000)) == 2
        sharded = jn.maxcorr(models, chunk_tokens=128, memory_budget=2000, mesh=jn.device_mesh(8, neuron_shards=2))
    assert_partners_close(sharded.partner_unit, models, tolerance(1003))
    assert_close(sharded.scores, single.scores, 2 * tolerance(1003), what="scores")  # two float32 runs


def test_additive_reduction_combines_with_psum():
    """A statistic that simply adds (here: a histogram of rounded values and a count) shards too."""
    mesh = jn.device_mesh(8, neuron_shards=2)
    bins = 5

    def chunk(x, n_valid, row0, shift):
        rows = jnp.arange(x.shape[0]) < n_valid
        codes = jnp.clip((x[:, 0] + shift).astype(jnp.int32), 0, bins - 1)
        return {"count": rows.sum(), "hist": jnp.zeros(bins, jnp.int32).at[codes].add(rows.astype(jnp.int32))}

    empty = {"count": jnp.zeros((), jnp.int32), "hist": jnp.zeros(bins, jnp.int32)}
    reduction = ksharded.Reduction(lambda: empty, chunk)
    x = np.random.default_rng(6).uniform(0, bins, size=(203, 2)).astype(np.float32)
    shift = np.float32(-1.0)  # a parameter of the statistic, replicated on every device
    combined = run_pass(jn.as_source([x]), reduction, 61, mesh=mesh, args=(shift,)).state  # 61 rows: padded, uneven
    total = jax.tree.map(np.asarray, combined)
    assert total["count"].tolist() == [203, 203]  # one copy per neuron shard
    want = np.bincount(np.clip((x[:, 0] - 1).astype(int), 0, bins - 1), minlength=bins)
    np.testing.assert_array_equal(total["hist"][0], want)


def test_device_mesh_errors():
    with pytest.raises(JNeuronError, match="neuron_shards=3"):
        jn.device_mesh(8, neuron_shards=3)
    with pytest.raises(JNeuronError, match="sees 8 device"):
        jn.device_mesh(9)
    with pytest.raises(JNeuronError, match="expected a 'tokens' axis"):
        jn.comoments(np.ones((4, 2)), mesh=jax.make_mesh((8,), ("data",)))


@pytest.mark.parametrize("kernel", ["jax", "pallas"])
def test_tile_reduction_split_over_neurons(kernel):
    """Rows split over 4 neuron shards (uneven: 37 rows), each band reduced by the chosen kernel."""
    rng = np.random.default_rng(8)
    cross = Pair(jnp.asarray(rng.normal(size=(37, 50)), jnp.float32), jnp.zeros((37, 50), jnp.float32))
    inv_rows = jnp.asarray(rng.uniform(0.1, 1, size=37), jnp.float32).at[5].set(0)
    inv_cols = jnp.asarray(rng.uniform(0.1, 1, size=50), jnp.float32).at[7].set(0)
    segments = ((0, 20), (20, 50))
    want = kmax.reduce_tile(cross, inv_rows, inv_cols, segments)
    got = tile_reducer((37, 50), segments, jn.device_mesh(8, neuron_shards=4), kernel=kernel)(cross, inv_rows, inv_cols)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_float64_when_x64_is_on():
    x = np.random.default_rng(9).normal(size=(501, 5)) * 3 + 1e6
    centred = x - exact_mean(x)
    with jax.enable_x64(True):
        got = jn.comoments(x, chunk_tokens=64, mesh=jn.device_mesh(8, neuron_shards=2))
    bound = tolerance(501, np.float64)  # float64 sums; the 1e6 offset costs nothing (magnitude 0)
    assert_close(got.cross, centred.T @ centred, bound, 501 * covariance_scale(x), "cross-products")
    assert_mean_close(got.mean, x, bound)


@pytest.mark.parametrize("name", ["tokens3", "tokens4_neurons2"])
@pytest.mark.parametrize("quantize", ["threshold", "uniform"])
def test_information_sharded_equal_unsharded(name, quantize):
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 4, 1003)
    x = (rng.normal(size=(1003, 6)) + labels[:, None] * [1, 0, 2, 0, 0, 1] + 1e3).astype(np.float32)
    options = dict(quantize=quantize, threshold=1e3, bins=3, value_range=(997.0, 1006.0), chunk_tokens=128)
    one = jn.neuron_information(x, labels, **options)
    sharded = jn.neuron_information(x, labels, mesh=MESHES[name](), **options)
    np.testing.assert_array_equal(sharded.counts, one.counts)
    # class means: float32 sums over a class's tokens about a shift (near the mean), two computations;
    # each class's spread about the overall mean is the scale, plus one float64 rounding of the mean
    classes = np.unique(labels)
    spread = np.stack([np.sqrt(((x[labels == c] - x.mean(0)) ** 2).mean(0)) for c in classes], axis=1)
    scale = 2 * tolerance(1003) * spread + 2 * tolerance(1, np.float64) * np.abs(one.class_means)
    assert_close(sharded.class_means, one.class_means, 1.0, scale, "class means")
    # the same integer counts on both sides: only the float sum over the count table's cells differs;
    # its terms p log(p / (p_i p_j)) add up in absolute value to at most 3 log(cells)
    cells = one.counts[0].size if np.ndim(one.counts) > 1 else np.size(one.counts)
    dtype = np.asarray(one.mutual_information).dtype
    assert_close(sharded.mutual_information, one.mutual_information, 2 * tolerance(cells, dtype), 3 * np.log(cells),
                 "mutual information")


def test_information_sharded_bad_value_names_the_global_row():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(500, 3)).astype(np.float32)
    x[321, 2] = np.nan
    with pytest.raises(JNeuronError, match="row 322, neuron"):
        jn.neuron_information(x, rng.integers(0, 2, 500), threshold=0.0, devices=4, chunk_tokens=64)


def _layers(rng, tokens=1001):
    """Two layers with planted shared directions, an offset, a dead unit and a duplicated one."""
    z = rng.normal(size=(tokens, 3))
    x = z @ rng.normal(size=(3, 8)) + 0.3 * rng.normal(size=(tokens, 8)) + 1e3
    y = z @ rng.normal(size=(3, 6)) + 0.5 * rng.normal(size=(tokens, 6)) - 50
    x[:, 2] = 7.0
    y[:, 4] = y[:, 0]
    return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.filterwarnings("ignore::jneuron.errors.DeadNeuronWarning")
@pytest.mark.parametrize("name", ["tokens3", "tokens4_neurons2", "user_mesh"])
def test_similarity_sharded_equal_unsharded(name):
    x, y = _layers(np.random.default_rng(13))
    mesh = MESHES[name]()
    # on one CPU device the products come from numpy's BLAS, on the mesh from XLA: two float32 computations,
    # each within its bound of the float64 answer
    for measure in (jn.cca, jn.svcca, jn.pwcca):
        one, sharded = measure(x, y, chunk_tokens=128), measure(x, y, chunk_tokens=128, mesh=mesh)
        got = sharded.cca if hasattr(sharded, "cca") else sharded
        want = one.cca if hasattr(one, "cca") else one
        bound = svcca_bound(x, y, want.kept_x, want.kept_y) if measure is jn.svcca else cca_bound(x, y)
        assert_close(got.rho, want.rho, 1.0, rho_bound(2 * bound, want.rho, 8), f"{measure.__name__} rho")
    for debiased in (False, True):  # the debiased CKA also observes every chunk (fourth moments)
        one = jn.cka(x, y, debiased, chunk_tokens=128).value
        assert_close(jn.cka(x, y, debiased, chunk_tokens=128, mesh=mesh).value, one, 2 * cka_bound(x, y, debiased),
                     what=f"cka (debiased={debiased})")
    if name == "tokens3":
        return  # the matrix's several tiles differ from the pair's only across neuron shards: meshes with them
    layers = {"a": x, "b": y, "c": x[:, ::-1] * 2}
    bound = max(svcca_bound(a, b, kept_components(a, 0.99), kept_components(b, 0.99))
                for a in layers.values() for b in layers.values())
    assert_close(jn.similarity_matrix(layers, metric="svcca", chunk_tokens=100, mesh=mesh).values,
                 jn.similarity_matrix(layers, metric="svcca", chunk_tokens=100).values,
                 float(rho_bound(2 * bound, 0.0, 8)), what="svcca matrix")


@pytest.mark.filterwarnings("ignore::jneuron.errors.DeadNeuronWarning")
def test_linreg_matching_lasso_sharded_equal_unsharded():
    x, y = _layers(np.random.default_rng(14))
    # one CPU device multiplies with the host BLAS, the mesh with XLA: both float32, rounded differently,
    # each within its bound of the float64 answer, so twice that apart. One uneven mesh (1001 tokens over 3
    # devices) for every analysis: they share its compiled passes
    one = jn.linreg_ranking([x, y], chunk_tokens=128)
    sharded = jn.linreg_ranking([x, y], chunk_tokens=128, devices=3)
    r2 = tolerance(1001, condition=floored_condition(x, y, rtol=1e-6))  # R^2: a fit, amplified by the whitening
    assert_close(sharded.scores, one.scores, 2 * r2, what="linreg scores")
    single_match, sharded_match = jn.match_neurons(x, y), jn.match_neurons(x, y, devices=3)
    k, bound = min(x.shape[1], y.shape[1]), tolerance(1001)
    # y units 0 and 4 are twins: a tie, so the assignments may differ, not their totals (k estimates each)
    assert_close(sharded_match.total, single_match.total, 2 * k * bound, what="matching total")
    assert_close(sharded_match.correlation, single_match.correlation, 2 * bound, what="correlation")
    lasso_one = jn.sparse_prediction(x, y, penalties=[0.1, 0.01])
    lasso_sharded = jn.sparse_prediction(x, y, penalties=[0.1, 0.01], devices=3)
    for i in range(2):  # each within the LASSO's bound of the exact optimum (where each solver stopped)
        kkt = float(lasso_one.kkt[i]) + float(lasso_sharded.kkt[i])
        assert_close(lasso_sharded.coef[i], lasso_one.coef[i], lasso_bound(x, lasso_one.coef[i], kkt),
                     what=f"lasso coefficients {i}")
    exact = jn.direction_ranking(x.astype(np.float64), y.astype(np.float64), method="cca").rho  # float64 in
    bound = rho_bound(cca_bound(x, y), exact, 8)
    assert_close(jn.direction_ranking(x, y, method="cca").rho, exact, 1.0, bound, "direction rho")
    assert_close(jn.direction_ranking(x, y, method="cca", devices=3).rho, exact, 1.0, bound, "sharded direction rho")


def test_sharded_checkpoint_resumes_to_the_same_result(tmp_path):
    from jneuron.streaming.passes import accumulate

    x = _nasty(np.random.default_rng(15), tokens=900)
    source, tiles = jn.as_source([x]), (jn.kernels.moments.Tile(0, 7, 0, 7),)
    mesh = jn.device_mesh(8, neuron_shards=2)
    whole = accumulate(source, tiles, 100, mesh=mesh)
    seen = []

    def stop_after_five(rows):
        seen.append(rows)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        accumulate(source, tiles, 100, mesh=mesh, checkpoint=tmp_path, checkpoint_every=2, on_chunk=stop_after_five)
    resumed = accumulate(source, tiles, 100, mesh=mesh, checkpoint=tmp_path, checkpoint_every=2, on_chunk=seen.append)
    assert sum(seen[5:]) == 900 - 4 * 100  # resumed after the 4 saved chunks
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(whole)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    again = accumulate(source, tiles, 100, mesh=mesh, checkpoint=tmp_path)  # finished: read back, no pass
    np.testing.assert_array_equal(np.asarray(again.cross[0].hi), np.asarray(whole.cross[0].hi))
    with pytest.raises(JNeuronError, match="observe"):
        accumulate(source, tiles, 100, mesh=mesh, checkpoint=tmp_path, observe=lambda chunk, rows: None)


def adam_bound(tokens, *, epochs, learning_rate, batch_size=32, **_):
    """Two Adam trainings whose batch gradients are float32 sums of ``batch_size`` terms rounded differently
    (tests/tolerance.py: relative error ``r = tolerance(batch_size)``). Adam's step ``learning_rate m / sqrt(v)`` moves
    by about ``2 r learning_rate`` when its gradients do (``m`` and ``sqrt(v)`` by ``r`` each), and there are ``epochs``
    passes of ``ceil(tokens / batch_size)`` steps; twice that for the two sides. (A coordinate whose gradient
    cancels to its rounding could be amplified more; these probes' gradients stay well above it.)"""
    steps = epochs * -(-tokens // batch_size)
    return 2 * steps * 2 * learning_rate * tolerance(batch_size)


@pytest.mark.parametrize("name", ["tokens3", "tokens4_neurons2"])
def test_probe_gradients_sharded_equal_unsharded(name):
    rng = np.random.default_rng(16)
    labels = rng.integers(0, 3, 803)  # 803 tokens: uneven over the shards, a short last batch
    x = (rng.normal(size=(803, 10)) + np.eye(3, 10, 2)[labels] * 1.5).astype(np.float32)
    options = dict(l1=1e-3, l2=1e-3, epochs=3, batch_size=32, learning_rate=1e-2)
    one = jn.train_probe(x, labels, **options)
    sharded = jn.train_probe(x, labels, mesh=MESHES[name](), **options)
    # Adam is scale-invariant, so a gradient summed once too often would show only through the penalty's share
    # (here it moves the weights by ~3e-3). Rounding: see adam_bound
    bound = adam_bound(803, **options)
    assert_close(sharded.weight, one.weight, bound, what="weights")
    assert_close(sharded.bias, one.bias, bound, what="bias")
    assert sharded.evaluate(x, labels)["accuracy"] == one.evaluate(x, labels)["accuracy"]  # counts of the same
    target = x[:, 4] * 2.0 + 1.0
    reg_one = jn.train_probe(x, target, task="regression", epochs=2, learning_rate=1e-2)
    reg_sharded = jn.train_probe(x, target, task="regression", epochs=2, learning_rate=1e-2, devices=8)
    assert_close(reg_sharded.weight, reg_one.weight, adam_bound(803, epochs=2, learning_rate=1e-2), what="regression weights")


def test_probe_grid_and_retraining_sharded():
    rng = np.random.default_rng(17)
    labels = rng.integers(0, 2, 600)
    x = (rng.normal(size=(600, 6)) + np.eye(2, 6)[labels]).astype(np.float32)
    grid_one = jn.train_probes(x, labels, l1=[0, 1e-3], l2=[0, 1e-3], epochs=2)
    grid_sharded = jn.train_probes(x, labels, l1=[0, 1e-3], l2=[0, 1e-3], epochs=2, devices=4)
    # accuracies are counts of correct predictions over the same tokens: equal (a flipped borderline
    # prediction would show as one token's share); 1e-9 only absorbs the float division
    np.testing.assert_allclose(grid_sharded.accuracy, grid_one.accuracy, atol=1e-9)
    for row_one, row_sharded in zip(grid_one.probes, grid_sharded.probes):
        for probe_one, probe_sharded in zip(row_one, row_sharded):
            assert_close(probe_sharded.weight, probe_one.weight, adam_bound(600, epochs=2, learning_rate=1e-3), what="weights")
    ordering = jn.neuron_ordering(grid_one.probe)
    table_one = jn.retrain_ablation(x, labels, x, labels, ordering, [0.5], epochs=2)
    table_sharded = jn.retrain_ablation(x, labels, x, labels, ordering, [0.5], epochs=2, devices=4)
    assert table_sharded.to_dict() == table_one.to_dict()


def test_shard_batches_keeps_every_row_once():
    from jneuron.probing.probe import batch_rows, shard_batches

    rows, valid = batch_rows(803, 2, 32, seed=3)
    local, ok, counts = shard_batches(np.asarray(rows), np.asarray(valid), 101, 8)
    global_rows = (local + 101 * np.arange(8)[None, :, None])[ok]
    assert sorted(global_rows.tolist()) == sorted(np.asarray(rows)[np.asarray(valid)].tolist())
    assert counts.tolist() == np.asarray(valid).sum(1).tolist()


def test_neuron_sharded_mesh_scales():
    """Four devices, two neuron shards: each shard's band features move with their columns when the data are
    scaled (values too large or too small for float32 products; see tests/streaming/test_extreme_values.py)."""
    from jneuron.streaming.passes import accumulate
    from tests.streaming.test_extreme_values import TILES, assert_stats, extreme

    x = extreme()
    for shards in (1, 2):
        stats = accumulate(jn.as_source([x]), TILES, 100, mesh=jn.device_mesh(4, neuron_shards=shards))
        assert stats.scale is not None
        assert_stats(stats, x, f"{shards} neuron shards")


@pytest.mark.parametrize("method", ["segment", "contract"])
def test_information_kernel_psum_over_four_token_shards(method):
    """The counting kernel inside shard_map over 4 token shards (each with 2 padding rows), combined by psum:
    the counts equal one device's exactly, the class sums to two float32 roundings."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jneuron.kernels import information as kinfo
    from jneuron.kernels import quantize as kquant

    mesh = jax.make_mesh((4,), ("tokens",), devices=jax.devices()[:4])
    rng = np.random.default_rng(0)
    x = rng.random((64, 5)).astype(np.float32)
    y = rng.integers(0, 3, 64).astype(np.int32)

    def tables(xs, ys):
        counts, sums = kinfo.chunk_tables(xs, kquant.threshold(xs, 0.5), ys, xs.shape[0] - 2, None, bins=2,
                                          classes=3, method=method)
        return jax.lax.psum(counts, "tokens"), jax.lax.psum(sums, "tokens")

    spec = NamedSharding(mesh, P("tokens"))
    run = jax.jit(jax.shard_map(tables, mesh=mesh, in_specs=(P("tokens"), P("tokens")), out_specs=(P(), P())))
    sharded = run(jax.device_put(x, spec), jax.device_put(y, spec))
    valid = (np.arange(64) % 16) < 14  # each shard's last 2 rows are its padding
    single = kinfo.chunk_tables(jnp.asarray(x[valid]), kquant.threshold(jnp.asarray(x[valid]), 0.5),
                                jnp.asarray(y[valid]), 56, None, bins=2, classes=3, method=method)
    np.testing.assert_array_equal(sharded[0], single[0])
    # two float32 sums of 56 non-negative values (4 shards of 14, then a psum): relative to the sums
    scale = np.stack([x[valid & (y == c)].astype(np.float64).sum(0) for c in range(3)], axis=1)
    assert np.all(np.abs(np.asarray(sharded[1]) - np.asarray(single[1])) <= 2 * tolerance(64) * scale)
