"""Sharding layer on one device, the fused tile kernel (Pallas interpret mode), and compensated merges.

The same checks on 8 forced CPU devices run in their own process (tests/streaming/test_multidevice.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jneuron as jn
from jneuron.crossmodel.tilereduce import choose_kernel, tile_reducer
from jneuron.errors import JNeuronError
from jneuron.kernels import maxcorr as kmax
from jneuron.kernels import maxcorr_pallas as kpallas
from jneuron.kernels import moments as kmoments
from jneuron.kernels import sharded as ksharded
from jneuron.kernels.compensated import Pair
from jneuron.kernels.moments import Tile
from jneuron.streaming.mesh import resolve_mesh
from tests.reference import assert_mean_close, exact_mean, mean_scale
from tests.tolerance import assert_close, covariance_scale, tolerance


@pytest.mark.parametrize("devices", [1, 2])  # one device; the two of every test process (uneven shards)
def test_device_mesh_equals_unsharded(rng, devices):
    x = (rng.normal(size=(203, 5)) * 2 + 1e3).astype(np.float32)
    single = jn.comoments(x, chunk_tokens=50)
    sharded = jn.comoments(x, chunk_tokens=50, devices=devices)
    assert sharded.count == single.count == 203
    # on a CPU the unsharded products come from numpy's BLAS, the sharded ones from XLA: two float32
    # computations, each within one bound (means: of the spread; cross-products: of n sd_i sd_j)
    assert_close(sharded.mean, single.mean, 1.0, 2 * mean_scale(x, tolerance(203)), "mean")
    assert_close(sharded.cross, single.cross, 2 * tolerance(203), 203 * covariance_scale(x), "cross-products")


def test_mesh_arguments_are_checked():
    mesh = jn.device_mesh(1)
    assert resolve_mesh(None, None) is None
    assert resolve_mesh(None, mesh) is mesh
    with pytest.raises(JNeuronError, match="either devices= or mesh="):
        jn.comoments(np.ones((3, 2)), devices=1, mesh=mesh)
    too_many = jax.device_count() + 1
    with pytest.raises(JNeuronError, match=f"devices={too_many}: this process sees {too_many - 1} device"):
        jn.maxcorr([np.ones((3, 2)), np.ones((3, 2))], devices=too_many)
    with pytest.raises(JNeuronError, match="expected a 'tokens' axis"):
        jn.comoments(np.ones((3, 2)), mesh=jax.make_mesh((1,), ("batch",)))
    with pytest.raises(JNeuronError, match="empty list"):
        jn.device_mesh([])


def test_shard_rows_masks_the_padding():
    assert ksharded.shard_rows(10, 4, 3) == (4, 4, 2)
    assert ksharded.shard_rows(3, 4, 3) == (3, 0, 0)
    assert ksharded.shard_rows(0, 4, 2) == (0, 0)


def test_jitted_merge_keeps_compensated_mean():
    """Regression: XLA put the Chan correction into two fusions, contracted it (FMA) in only one of them,
    and the mean's hi and lo halves disagreed by one unit in the last place of hi (1e-3 at offset 1e4)."""
    x = (np.random.default_rng(0).normal(size=(1001, 6)) * 3 + 1e4).astype(np.float32)
    tiles = (Tile(0, 6, 0, 6),)
    stats = kmoments.init(6, tiles)
    for rows in (slice(22, 44), slice(88, 110), slice(154, 176)):
        stats = kmoments.update(stats, x[rows], 22, tiles)
    seen = x[np.r_[22:44, 88:110, 154:176]].astype(np.float64)
    # within the float32 sums' bound of the spread (the bug was off by an ulp of 1e4, ~1e-3: 30x the bound)
    assert_mean_close(kmoments.mean64(stats), seen, tolerance(66))
    centred = seen - exact_mean(seen)
    want = centred.T @ centred
    assert_close(kmoments.cross_value64(stats, 0), want, tolerance(66), 66 * covariance_scale(seen), "cross-products")


def _tile(rng, rows, cols, dead=()):
    hi = jnp.asarray(rng.normal(size=(rows, cols)), jnp.float32)
    lo = jnp.asarray(rng.normal(size=(rows, cols)) * 1e-7, jnp.float32)
    inv_rows = rng.uniform(0.05, 0.3, size=rows).astype(np.float32)
    inv_cols = rng.uniform(0.05, 0.3, size=cols).astype(np.float32)
    for r, c in dead:
        inv_rows[r], inv_cols[c] = 0, 0
    return Pair(hi, lo), jnp.asarray(inv_rows), jnp.asarray(inv_cols)


def _assert_same(got, want):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(("rows", "cols", "segments"), [
    (40, 150, ((0, 100), (100, 130), (130, 150))),  # segments straddle the 128-column blocks
    (3, 5, ((0, 5),)),  # smaller than one block
])
def test_pallas_interpret_equals_pure_jax(rng, rows, cols, segments):
    cross, inv_rows, inv_cols = _tile(rng, rows, cols, dead=((1, 2),))
    want = kmax.reduce_tile(cross, inv_rows, inv_cols, segments)
    got = kpallas.reduce_tile(cross, inv_rows, inv_cols, segments, interpret=True)
    _assert_same(got, want)


def test_pallas_ties_go_to_the_lower_index():
    corr = jnp.array([[0.5, -0.5, 0.5, 0.1], [-0.5, 0.5, 0.2, 0.5]], jnp.float32)
    cross = Pair(corr, jnp.zeros_like(corr))
    ones_r, ones_c = jnp.ones(2), jnp.ones(4)
    rows, cols = kpallas.reduce_tile(cross, ones_r, ones_c, ((0, 2), (2, 4)), interpret=True)
    assert rows.unit.tolist() == [[0, 0], [0, 1]]
    assert cols.unit.tolist() == [0, 0, 0, 1]
    assert cols.rho.tolist() == [0.5, -0.5, 0.5, 0.5]
    _assert_same((rows, cols), kmax.reduce_tile(cross, ones_r, ones_c, ((0, 2), (2, 4))))


@settings(max_examples=4)
@given(rows=st.integers(1, 40), cols=st.integers(2, 140), cut=st.floats(0.1, 0.9), seed=st.integers(0, 99))
def test_pallas_matches_jax_on_random_shapes(rows, cols, cut, seed):
    split = max(1, min(cols - 1, int(cols * cut)))
    cross, inv_rows, inv_cols = _tile(np.random.default_rng(seed), rows, cols)
    segments = ((0, split), (split, cols))
    _assert_same(kpallas.reduce_tile(cross, inv_rows, inv_cols, segments, interpret=True),
                 kmax.reduce_tile(cross, inv_rows, inv_cols, segments))


def test_kernel_choice_never_pallas_on_cpu(rng):
    assert choose_kernel((4096, 4096), ((0, 4096),), "cpu") == "jax"
    cross, inv_rows, inv_cols = _tile(rng, 6, 9)
    segments = ((0, 4), (4, 9))
    auto, forced = tile_reducer((6, 9), segments), tile_reducer((6, 9), segments, kernel="pallas")
    _assert_same(forced(cross, inv_rows, inv_cols), auto(cross, inv_rows, inv_cols))
    with pytest.raises(ValueError, match="kernel='cuda'"):
        tile_reducer((6, 9), segments, kernel="cuda")


def test_cli_devices_flag(tmp_path, rng, capsys):
    from jneuron.cli.main import main

    shared = rng.normal(size=(200, 1))
    np.save(tmp_path / "a.npy", np.hstack([shared, rng.normal(size=(200, 2))]))
    np.save(tmp_path / "b.npy", np.hstack([rng.normal(size=(200, 2)), 3 * shared]))
    assert main(["maxcorr", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--devices", "1",
                 "--out", str(tmp_path / "out")]) == 0
    assert "a/0" in capsys.readouterr().out.splitlines()[0]
    too_many = jax.device_count() + 1
    assert main(["maxcorr", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--devices", str(too_many),
                 "--out", str(tmp_path / "out")]) == 2
    assert f"devices={too_many}: this process sees {too_many - 1} device" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["similarity", "linreg", "match"])
def test_cli_devices_flag_on_similarity_commands(tmp_path, rng, capsys, command):
    from jneuron.cli.main import main

    shared = rng.normal(size=(200, 1))
    files = [tmp_path / "a.npy", tmp_path / "b.npy"]
    np.save(files[0], np.hstack([shared, rng.normal(size=(200, 2))]))
    np.save(files[1], np.hstack([rng.normal(size=(200, 2)), 3 * shared]))
    args = [command, *map(str, files), "--chunk-tokens", "64", "--out", str(tmp_path / "out")]
    assert main([*args, "--devices", "1"]) == 0
    assert main([*args, "--devices", "2"]) == 0  # the two in-process devices (tests/conftest.py)
    too_many = jax.device_count() + 1
    assert main([*args, "--devices", str(too_many)]) == 2
    assert f"devices={too_many}: this process sees {too_many - 1} device" in capsys.readouterr().err


def test_cli_devices_flag_on_probe(tmp_path, rng, capsys):
    from jneuron.cli.main import main

    x = rng.normal(size=(300, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", (x[:, 1] > 0).astype(int))
    args = ["probe", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), "--epochs", "2", "--out", str(tmp_path / "o")]
    assert main([*args, "--devices", "1"]) == 0
    too_many = jax.device_count() + 1
    assert main([*args, "--devices", str(too_many)]) == 2
    assert f"devices={too_many}: this process sees {too_many - 1} device" in capsys.readouterr().err
