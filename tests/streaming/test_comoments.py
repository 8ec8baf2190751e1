import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jneuron as jn
from jneuron.kernels import moments as km
from tests.reference import assert_cov_close, assert_mean_close, x64
from tests.tolerance import assert_close, covariance_scale, tolerance


def reference_cov(x):
    return np.cov(np.asarray(x, np.float64), rowvar=False)


@pytest.mark.parametrize("offset", [0.0, 1e3, -5e3])
@pytest.mark.parametrize("chunks", [1, 7, 40])
def test_correlation_matches_float64_with_offsets_and_chunks(rng, offset, chunks):
    x = (rng.normal(size=(4000, 9)) * rng.uniform(0.1, 3, 9) + offset).astype(np.float32)
    stats = jn.comoments(np.array_split(x, chunks))
    ref = np.corrcoef(x.astype(np.float64), rowvar=False)
    assert stats.count == 4000
    bound = tolerance(4000)  # float32 products over 4,000 tokens; centring on each chunk's mean is exact
    assert_close(stats.correlation(), ref, bound, what="correlation")
    assert_cov_close(stats.covariance(), x)
    # the mean is the chunk's rough mean plus the (compensated) mean of the residuals about it: off by the
    # residuals' rounding, a share of the spread, never of the offset (magnitude 0: losing the offset fails)
    assert_mean_close(stats.mean, x, bound)


def test_chunked_equals_whole(rng):
    x = (rng.normal(size=(3001, 5)) + 1e3).astype(np.float32)
    whole = jn.comoments(x).correlation()
    bound = 2 * tolerance(3001)  # two float32 computations of the same correlations
    assert_close(jn.comoments(x, chunk_tokens=128).correlation(), whole, bound, what="chunked vs whole")
    assert_close(jn.comoments(iter(np.array_split(x, 13))).correlation(), whole, bound, what="13 chunks vs whole")


def test_generator_of_chunks_streams(rng):
    x = rng.normal(size=(1000, 4)).astype(np.float32)
    stats = jn.comoments(x[i : i + 100] for i in range(0, 1000, 100))
    assert_close(stats.correlation(), np.corrcoef(x.astype(np.float64), rowvar=False), tolerance(1000),
                 what="correlation")


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_precision_input_is_accumulated_in_float32(rng, dtype):
    x = rng.normal(size=(2000, 6)).astype(dtype)
    exact = np.corrcoef(x.astype(np.float64), rowvar=False)
    assert_close(jn.comoments(x).correlation(), exact, tolerance(2000), what="correlation")  # float32 arithmetic


def test_float64_input_with_x64_is_float64_accurate(rng):
    x = rng.normal(size=(500, 4)) + 1e6
    with x64():
        stats = jn.comoments(x)
    assert_cov_close(stats.covariance(), x, dtype=np.float64)


def test_dead_neuron_correlates_zero(rng):
    x = rng.normal(size=(300, 3)).astype(np.float32)
    x[:, 1] = 1e3
    stats = jn.comoments(x)
    corr = stats.correlation()
    assert stats.dead.tolist() == [1]
    assert np.all(corr[1] == 0) and np.all(corr[:, 1] == 0)
    assert np.isfinite(corr).all()


def test_merge_is_order_independent_and_matches_one_pass(rng):
    x = (rng.normal(size=(600, 4)) + 100).astype(np.float32)
    tiles = (km.Tile(0, 4, 0, 4),)
    parts = [km.chunk_stats(jnp.asarray(c), c.shape[0], tiles) for c in np.array_split(x, 3)]
    left = km.merge(km.merge(parts[0], parts[1], tiles), parts[2], tiles)
    right = km.merge(parts[0], km.merge(parts[1], parts[2], tiles), tiles)
    for a in (left, right):
        assert_cov_close(km.cross_value64(a, 0), x, ddof=None)
    assert int(left.count) == int(right.count) == 600


def test_update_works_with_and_without_jit(rng):
    x = rng.normal(size=(64, 3)).astype(np.float32)
    tiles = (km.Tile(0, 2, 1, 3),)
    jitted = km.update(km.init(3, tiles), x, 60, tiles)
    with jax.disable_jit():
        eager = km.update(km.init(3, tiles), x, 60, tiles)
    scale = (60 * covariance_scale(x[:60]))[0:2, 1:3]  # centred cross-products: n * sd_i * sd_j
    # jit may fuse and order the float32 sums differently from eager execution: two computations
    assert_close(km.cross_value64(jitted, 0), km.cross_value64(eager, 0), 2 * tolerance(60), scale, "jit vs eager")
    reference = np.cov(x[:60].astype(np.float64), rowvar=False, ddof=0) * 60
    assert_close(km.cross_value64(jitted, 0), reference[0:2, 1:3], tolerance(60), scale, "cross-products")


def test_padding_rows_are_ignored(rng):
    x = rng.normal(size=(50, 3)).astype(np.float32)
    padded = np.vstack([x, np.full((14, 3), np.nan, np.float32)])
    tiles = (km.Tile(0, 3, 0, 3),)
    stats = km.update(km.init(3, tiles), padded, 50, tiles)
    assert int(stats.bad_row) == km.NO_BAD_ROW
    assert_cov_close(km.cross_value64(stats, 0), x, ddof=None)


def test_nan_is_located(rng):
    x = rng.normal(size=(1000, 4)).astype(np.float32)
    x[613, 2] = np.inf
    with pytest.raises(jn.JNeuronError, match="row 614, neuron 2"):
        jn.comoments(x, chunk_tokens=100)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((3, 2, 2)), "expected a 2-D array"),
        (np.zeros((5, 0)), "has no neurons"),
        (np.zeros((4, 2), complex), "expected real numbers"),
        (iter([]), "empty"),
        (42, "expected an array or an iterable"),
    ],
)
def test_bad_input_errors(bad, message):
    with pytest.raises(jn.JNeuronError, match=message):
        jn.comoments(bad)


def test_chunks_of_different_widths_are_an_error(rng):
    chunks = [rng.normal(size=(10, 3)), rng.normal(size=(10, 4))]
    with pytest.raises(jn.JNeuronError, match="chunk 1.*expected 3 neurons, got 4"):
        jn.comoments(chunks)


def test_single_token_has_no_correlation():
    stats = jn.comoments(np.ones((1, 3), np.float32))
    with pytest.raises(jn.JNeuronError, match="at least 2 tokens"):
        stats.correlation()


@given(
    scale=st.lists(st.floats(0.01, 100), min_size=4, max_size=4),
    sign=st.lists(st.sampled_from([-1.0, 1.0]), min_size=4, max_size=4),
    shift=st.lists(st.floats(-1e3, 1e3), min_size=4, max_size=4),
)
def test_pearson_is_invariant_under_affine_maps(scale, sign, shift):
    # float64 input: in float32, rounding a*x + 1e3 would destroy the input itself, not our arithmetic
    x = np.random.default_rng(1).normal(size=(400, 4))
    a = np.asarray(scale) * np.asarray(sign)
    y = x * a + np.asarray(shift)
    with x64():
        base, moved = jn.comoments(x).correlation(), jn.comoments(y).correlation()
    # float64 arithmetic; rounding a * x + shift moved each value by eps * |shift| / (|a| sd) of its spread
    magnitude = float(np.max(np.abs(y.mean(0)) / y.std(0)))
    bound = tolerance(400, np.float64) + tolerance(400, np.float64, magnitude=magnitude)
    assert_close(moved, base * np.outer(np.sign(a), np.sign(a)), bound, what="correlation after affine maps")


def test_float32_offset_input_matches_its_float64_reference(rng):
    # the float32 path: offsets up to 1e3 cost no digits beyond the input's own rounding
    x = (rng.normal(size=(2000, 4)) * [0.01, 1, 10, 100] + [1e3, -1e3, 5, 0]).astype(np.float32)
    # magnitude 0 although column 0 sits 1e5 spreads from 0: centring is exact, so the offset costs nothing
    assert_close(jn.comoments(x, chunk_tokens=256).correlation(), np.corrcoef(x.astype(np.float64), rowvar=False),
                 tolerance(2000), what="correlation")


@pytest.mark.parametrize("rows", [64, 37])
def test_host_fold_equals_the_compiled_update(rng, rows):
    """The CPU path (centring and products by numpy) folds a chunk as kernels.moments.update does."""
    from jneuron.streaming.cpu_fold import HostFold

    tiles = (km.Tile(0, 3, 3, 8), km.Tile(3, 6, 6, 8))
    x = (rng.normal(size=(64, 8)) * 2 + 1e3).astype(np.float32)
    x[rows:] = 0
    first = (rng.normal(size=(64, 8)) + 999.5).astype(np.float32)
    compiled = km.update(km.update(km.init(8, tiles), first, 64, tiles), x, rows, tiles)
    fold = HostFold()
    host = fold(fold(km.init(8, tiles), first, 64, tiles), x, rows, tiles)
    assert int(host.count) == int(compiled.count) == 64 + rows
    reference = np.concatenate([first, x[:rows]]).astype(np.float64)
    centred = reference - reference.mean(0)
    bound = tolerance(len(reference))  # float32 sums over the 64 + rows tokens; exact centring (magnitude 0)
    scale = len(reference) * covariance_scale(reference)  # centred cross-products: n * sd_i * sd_j
    for stats in (host, compiled):
        assert_mean_close(km.mean64(stats), reference, bound)
        assert_close(km.m2_64(stats), (centred**2).sum(0), bound, np.diag(scale), "sums of squares")
        for i, t in enumerate(tiles):
            exact = centred[:, t.r0 : t.r1].T @ centred[:, t.c0 : t.c1]
            assert_close(km.cross_value64(stats, i), exact, bound, scale[t.r0 : t.r1, t.c0 : t.c1], "cross-products")


def test_host_fold_finds_the_first_bad_value(rng):
    from jneuron.streaming.cpu_fold import HostFold

    tiles = (km.Tile(0, 2, 2, 4),)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    x[9, 3], x[12, 1] = np.inf, np.nan
    stats = HostFold()(km.init(4, tiles), x, 16, tiles)
    assert (int(stats.bad_row), int(stats.bad_col)) == (9, 3)
