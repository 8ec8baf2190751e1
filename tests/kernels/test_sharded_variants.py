"""jneuron.kernels.sharded on the two CPU devices of every test process (tests/conftest.py), jitted and not
(the factories return jitted functions; the ``without_jit`` variant runs the function that ``finalize`` and
the tile reduction wrap, their ``shard_map`` executed eagerly), against float64 numpy and against the
one-device kernels. ``init`` and the per-chunk ``update`` are the factories' jitted functions in both
variants: ``init``'s output shardings lay the state out, and an eager ``shard_map`` per chunk costs minutes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jneuron as jn
from jneuron.kernels import maxcorr as kmax
from jneuron.kernels import moments
from jneuron.kernels import sharded as ksharded
from jneuron.kernels.moments import Tile
from tests.kernels.test_maxcorr import tile_inputs
from tests.kernels.variants import KernelTest
from tests.reference import assert_cov_close, assert_mean_close
from tests.tolerance import tolerance

FULL = (Tile(0, 5, 0, 5),)
SHARD = 16  # rows of each device's shard of a chunk


def to_stats(total, mesh):
    """One device's :class:`~jneuron.kernels.moments.Stats` from a finalized state, replicated, as the pass
    reads them (jneuron/streaming/passes.py): cropped to the caller's tiles, not the banded inner ones."""
    whole = NamedSharding(mesh, P())
    convert = jax.jit(lambda t: ksharded.stats_from_state(t, 5, FULL, mesh), out_shardings=whole)
    return convert(jax.device_put(total, whole))


def variant_of(variant, jitted):
    """The factory's jitted function under ``jit``, or the function it wraps without."""
    return variant(jitted.__wrapped__)


class ShardedTest(KernelTest):
    def data(self, rows):
        return (self.rng.normal(size=(rows, 5)) * [1, 3, 0.5, 2, 1] + 1e4).astype(np.float32)

    def stream(self, mesh, reduction, x, variant):
        """Every chunk cut into one shard per token device; the last chunk's shards are uneven."""
        shards = ksharded.axis_size(mesh, ksharded.TOKENS)
        init = ksharded.make_init(reduction, mesh)
        update = ksharded.make_update(reduction, mesh)
        finalize = variant_of(variant, ksharded.make_finalize(reduction, mesh))
        state = init()
        size = shards * SHARD
        for start in range(0, len(x), size):
            part = x[start:start + size]
            real = len(part)
            chunk = np.zeros((size, x.shape[1]), np.float32)
            chunk[:real] = part
            n_valid = np.asarray(ksharded.shard_rows(real, SHARD, shards))
            row0 = start + SHARD * np.arange(shards)
            state = update(state, chunk, n_valid, row0)
        return finalize(state)

    @chex.variants(with_jit=True, without_jit=True)
    def test_token_sharded_comoments_equal_float64(self):
        mesh = jn.device_mesh(2)
        x = self.data(rows=83)  # 2 full chunks of 2 x 16 rows and one of 19: shards of 16 and 3 rows
        reduction, _ = ksharded.comoment_reduction(5, FULL, jnp.float32)
        stats = to_stats(self.stream(mesh, reduction, x, self.variant), mesh)
        assert int(stats.count) == len(x)
        assert_mean_close(moments.mean64(stats), x, tolerance(len(x)))
        assert_cov_close(moments.cross_value64(stats, 0), x, ddof=None)

    @chex.variants(with_jit=True, without_jit=True)
    def test_neuron_sharded_bands_equal_float64_and_bad_rows_are_global(self):
        mesh = jn.device_mesh(2, neuron_shards=2)
        x = self.data(rows=40)
        reduction, _ = ksharded.comoment_reduction(5, FULL, jnp.float32, neuron_shards=2)
        stats = to_stats(self.stream(mesh, reduction, x, self.variant), mesh)
        assert int(stats.count) == 40
        assert_cov_close(moments.cross_value64(stats, 0), x, ddof=None)  # both row bands, cropped
        x[37, 4] = np.nan
        bad = to_stats(self.stream(mesh, reduction, x, self.variant), mesh)
        assert (int(bad.bad_row), int(bad.bad_col)) == (37, 4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_additive_reduction_is_a_psum(self):
        mesh = jn.device_mesh(2)
        x = self.data(rows=50)
        total = ksharded.Reduction(init=lambda: jnp.zeros((5,), jnp.int32),
                                   chunk=lambda x, n, row0: jnp.sum(jnp.arange(x.shape[0]) < n).astype(jnp.int32)
                                   * jnp.ones(5, jnp.int32))
        summed = self.stream(mesh, total, x, self.variant)  # one leading axis of neuron shards (here 1)
        np.testing.assert_array_equal(summed, np.full((1, 5), 50))

    @chex.variants(with_jit=True, without_jit=True)
    def test_maxcorr_tile_split_over_neurons_equals_one_device(self):
        mesh = jn.device_mesh(2, neuron_shards=2)
        rows = self.rng.normal(size=(200, 7))  # 7 rows: bands of 4 and 3 (one padded row)
        cols = np.hstack([rows[:, [5]] * 2, rows[:, [5]], self.rng.normal(size=(200, 3))])  # a tie across bands
        segments = ((0, 2), (2, 5))
        inputs = tile_inputs(rows.astype(np.float32), cols.astype(np.float32))
        reduce = variant_of(self.variant, ksharded.make_reduce_tile(mesh, segments))
        (row, col), (row1, col1) = reduce(*inputs), kmax.reduce_tile(*inputs, segments)
        # the same elementwise arithmetic on every row: equal, not merely close
        for got, want in ((row, row1), (col, col1)):
            np.testing.assert_array_equal(got.unit, want.unit)
            np.testing.assert_array_equal(got.rho, want.rho)
        assert int(col.unit[0]) == 5 and jax.device_count() >= 2
