"""Streaming from files: equals in-memory, overlaps reading with a prefetch thread, checkpoints and resumes."""

import threading

import jax
import numpy as np
import pytest

import jneuron as jn
from jneuron.errors import JNeuronError
from jneuron.kernels import moments as kmoments
from jneuron.kernels.moments import Tile
from jneuron.streaming.passes import accumulate
from jneuron.streaming.prefetch import prefetch
from tests.reference import mean_scale
from tests.tolerance import assert_close, covariance_scale, tolerance


@pytest.fixture
def models(rng):
    shared = rng.normal(size=(700, 3))
    return {
        "a": (np.hstack([shared, rng.normal(size=(700, 4))]) + 1e3).astype(np.float32),
        "b": np.hstack([rng.normal(size=(700, 2)), -shared @ rng.normal(size=(3, 3))]).astype(np.float32),
        "c": rng.normal(size=(700, 5)).astype(np.float32),
    }


def write(path, models, chunk_tokens=100):
    with jn.StoreWriter(path, chunk_tokens=chunk_tokens) as w:
        for start in range(0, 700, 250):
            for name, x in models.items():
                w.append(name, "l0", x[start:start + 250, :2])
                w.append(name, "l1", x[start:start + 250, 2:])
    return path


def test_maxcorr_from_store_equals_in_memory(tmp_path, models):
    path = write(tmp_path / "s.zarr", models)
    streamed = jn.maxcorr(jn.open_activations(path), chunk_tokens=64)
    in_memory = jn.maxcorr({m: {"l0": x[:, :2], "l1": x[:, 2:]} for m, x in models.items()}, chunk_tokens=64)
    np.testing.assert_array_equal(streamed.scores, in_memory.scores)
    np.testing.assert_array_equal(streamed.partner_unit, in_memory.partner_unit)
    assert [n["label"] for n in streamed.top(5)] == [n["label"] for n in in_memory.top(5)]
    assert streamed.top(1)[0]["label"].count("/") == 2  # model/layer/unit from the store's layers
    # and against a float64 reference
    x = np.hstack(list(models.values())).astype(np.float64)
    rho = np.corrcoef(x.T)
    best_ab = np.abs(rho[:7, 7:12]).max(1)
    assert_close(streamed.score_matrix[:7, 1], best_ab, tolerance(700), what="best |rho| of a in b")


def test_multi_pass_maxcorr_from_store_equals_one_pass(tmp_path, models):
    path = write(tmp_path / "s.zarr", models)
    one = jn.maxcorr(jn.open_activations(path), chunk_tokens=64)
    several = jn.maxcorr(jn.open_activations(path), chunk_tokens=64, memory_budget=BUDGET)
    assert len(jn.crossmodel.maxcorr.plan_passes((7, 5, 5), BUDGET)) == 2
    assert_close(several.scores, one.scores, 2 * tolerance(700), what="several passes vs one")  # two float32 runs


def test_prefetch_keeps_order_and_reraises():
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetch(broken()):
            got.append(item)
    assert got == [1]


def test_prefetch_reads_while_the_consumer_computes():
    started = [threading.Event() for _ in range(4)]

    def reads():
        for i in range(4):
            started[i].set()
            yield i

    for i in prefetch(reads(), depth=1):
        if i + 1 < 4:  # while chunk i is being used, chunk i + 1 is already being read
            assert started[i + 1].wait(timeout=10)


def test_prefetch_stops_its_thread_when_abandoned():
    before = threading.active_count()
    for item in prefetch(iter(range(10**6)), depth=2):
        if item == 3:
            break
    assert threading.active_count() == before


BUDGET = 16 * 75  # bytes: model a's block (7 x 10) in one pass, model b's (5 x 5) in another


class Interrupt(Exception):
    pass


def test_checkpointed_run_resumes_to_the_identical_result(tmp_path, models):
    source = jn.open_activations(write(tmp_path / "s.zarr", models))
    tiles = (Tile(0, 17, 0, 17),)
    whole = accumulate(source, tiles, 64)
    seen = []

    def stop_after_five(rows):
        seen.append(rows)
        if len(seen) == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        accumulate(source, tiles, 64, checkpoint=tmp_path / "ck", checkpoint_every=2, on_chunk=stop_after_five)
    resumed_rows = []
    resumed = accumulate(source, tiles, 64, checkpoint=tmp_path / "ck", checkpoint_every=2, on_chunk=resumed_rows.append)
    assert sum(resumed_rows) == 700 - 4 * 64  # restarted after the last checkpoint (chunk 4)
    for got, want in zip(jax.tree.leaves(resumed), jax.tree.leaves(whole)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    again = []  # a finished checkpoint is reused without reading
    accumulate(source, tiles, 64, checkpoint=tmp_path / "ck", on_chunk=again.append)
    assert again == []


def test_arrays_in_memory_resume_and_match_the_joined_chunks(tmp_path, models):
    """In-memory arrays are centred model by model (one of them float16); the result equals the pass over
    joined chunks (what files and iterators get) and resumes from a checkpoint bit for bit."""
    arrays = [models["a"], models["b"].astype(np.float16)]
    source, tiles = jn.as_source(arrays), (Tile(0, 7, 7, 12), Tile(7, 12, 7, 12))
    whole = accumulate(source, tiles, 64)
    joined = accumulate(jn.as_source(lambda: iter([tuple(arrays)])), tiles, 64)
    # two float32 computations of the same statistics: counts and bad rows exact, the rest within two bounds
    # of their natural scales (the spread for means, n sd_i sd_j for centred products)
    x = np.hstack([a.astype(np.float64) for a in arrays])
    bound, n, scale = 2 * tolerance(700), len(x), 700 * covariance_scale(x)
    assert int(whole.count) == int(joined.count) == n
    assert (int(whole.bad_row), int(whole.bad_col)) == (int(joined.bad_row), int(joined.bad_col))
    assert_close(kmoments.mean64(whole), kmoments.mean64(joined), 1.0, 2 * mean_scale(x, tolerance(700)), "means")
    assert_close(kmoments.m2_64(whole), kmoments.m2_64(joined), bound, np.diag(scale), "sums of squares")
    for i, t in enumerate(tiles):
        assert_close(kmoments.cross_value64(whole, i), kmoments.cross_value64(joined, i), bound,
                     scale[t.r0 : t.r1, t.c0 : t.c1], f"cross-products of tile {i}")
    seen = []

    def stop_after_three(rows):
        seen.append(rows)
        if len(seen) == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        accumulate(source, tiles, 64, checkpoint=tmp_path / "ck", checkpoint_every=2, on_chunk=stop_after_three)
    resumed = accumulate(source, tiles, 64, checkpoint=tmp_path / "ck")
    for got, want in zip(jax.tree.leaves(resumed), jax.tree.leaves(whole)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_checkpoint_resume_from_an_iterator_source(tmp_path, models):
    x = np.hstack(list(models.values()))
    make = lambda: (x[i:i + 64] for i in range(0, 700, 64))  # noqa: E731
    tiles = (Tile(0, 17, 0, 17),)
    whole = accumulate(jn.as_source(make), tiles, 64)
    calls = []

    def stop(rows):
        calls.append(rows)
        if len(calls) == 7:
            raise Interrupt

    with pytest.raises(Interrupt):
        accumulate(jn.as_source(make), tiles, 64, checkpoint=tmp_path / "ck", checkpoint_every=3, on_chunk=stop)
    resumed = accumulate(jn.as_source(make), tiles, 64, checkpoint=tmp_path / "ck")
    np.testing.assert_array_equal(kmoments.cross_value64(resumed, 0), kmoments.cross_value64(whole, 0))


def test_maxcorr_checkpoint_resumes_every_pass(tmp_path, models):
    path = write(tmp_path / "s.zarr", models)
    whole = jn.maxcorr(jn.open_activations(path), chunk_tokens=64, memory_budget=BUDGET)
    count = []

    def stop(rows):
        count.append(rows)
        if len(count) == 17:  # in the second pass
            raise Interrupt

    with pytest.raises(Interrupt):
        jn.maxcorr(jn.open_activations(path), chunk_tokens=64, memory_budget=BUDGET, checkpoint=tmp_path / "ck", on_chunk=stop)
    resumed = jn.maxcorr(jn.open_activations(path), chunk_tokens=64, memory_budget=BUDGET, checkpoint=tmp_path / "ck")
    np.testing.assert_array_equal(resumed.scores, whole.scores)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, models):
    source = jn.open_activations(write(tmp_path / "s.zarr", models))
    tiles = (Tile(0, 17, 0, 17),)
    accumulate(source, tiles, 64, checkpoint=tmp_path / "ck")
    (file,) = (tmp_path / "ck").iterdir()
    file.write_bytes(b"nonsense")
    with pytest.raises(JNeuronError, match="unreadable checkpoint"):
        accumulate(source, tiles, 64, checkpoint=tmp_path / "ck")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=10)
@given(stop_at=st.integers(1, 10), every=st.integers(1, 4), seed=st.integers(0, 3))
def test_resume_after_any_interruption_is_identical(tmp_path_factory, stop_at, every, seed):
    x = np.random.default_rng(seed).normal(size=(700, 17)).astype(np.float32) + 100
    source = jn.as_source([x])
    tiles = (Tile(0, 17, 0, 17),)
    whole = accumulate(source, tiles, 64)
    folder = tmp_path_factory.mktemp("ck")
    seen = []

    def stop(rows):
        seen.append(rows)
        if len(seen) == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        accumulate(source, tiles, 64, checkpoint=folder, checkpoint_every=every, on_chunk=stop)
    resumed = accumulate(source, tiles, 64, checkpoint=folder, checkpoint_every=every)
    for got, want in zip(jax.tree.leaves(resumed), jax.tree.leaves(whole)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
