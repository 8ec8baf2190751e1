"""A checkpoint is bound to its data (issue 16, item 1): other data never resume from it, a finished one is
never returned for other data, a changed file starts over, edited counters are refused, and resuming the
same data stays bit for bit (on one device and on a mesh, scaled data included)."""

import contextlib
import io
import json

import jax
import numpy as np
import pytest

import jneuron as jn
from jneuron.cli.main import main
from jneuron.errors import JNeuronError, StaleCheckpointWarning
from jneuron.kernels.moments import Tile
from jneuron.streaming.checkpoint import checkpoint_file as _checkpoint_file
from jneuron.streaming.checkpoint import save_checkpoint as _save_checkpoint
from jneuron.streaming.passes import accumulate

TILES = (Tile(0, 4, 4, 7), Tile(4, 7, 4, 7))


class Interrupt(Exception):
    pass


def stop_after(count):
    seen = []

    def on_chunk(rows):
        seen.append(rows)
        if len(seen) == count:
            raise Interrupt

    return on_chunk


def pair(seed, tokens=700):
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(tokens, 2))
    a = np.hstack([shared, rng.normal(size=(tokens, 2))]).astype(np.float32)
    b = np.hstack([shared @ rng.normal(size=(2, 2)), rng.normal(size=(tokens, 1))]).astype(np.float32)
    return a, b


def write(path, models, layers=("l0",)):
    with jn.StoreWriter(path, chunk_tokens=100) as w:
        for name, x in models.items():
            for layer in layers:
                w.append(name, layer, x if len(layers) == 1 else x[layer])
    return path


def same(got, want):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def same_ranking(got, want):
    np.testing.assert_array_equal(got.score_matrix, want.score_matrix)
    np.testing.assert_array_equal(got.partner_unit, want.partner_unit)


def test_other_arrays_of_the_same_shapes_start_over(tmp_path):
    first, second = pair(0), pair(1)
    with pytest.raises(Interrupt):
        accumulate(jn.as_source(list(first)), TILES, 64, checkpoint=tmp_path, checkpoint_every=2,
                   on_chunk=stop_after(5))
    with pytest.warns(StaleCheckpointWarning, match="other data .*the data differ.*starting over"):
        resumed = accumulate(jn.as_source(list(second)), TILES, 64, checkpoint=tmp_path)
    same(resumed, accumulate(jn.as_source(list(second)), TILES, 64))


def test_a_finished_checkpoint_is_never_returned_for_other_data(tmp_path):
    first, second = pair(0), pair(1)
    jn.maxcorr(list(first), checkpoint=tmp_path, chunk_tokens=128)
    with pytest.warns(StaleCheckpointWarning):
        again = jn.maxcorr(list(second), checkpoint=tmp_path, chunk_tokens=128)
    same_ranking(again, jn.maxcorr(list(second), chunk_tokens=128))
    # and the first data's own finished checkpoint was replaced: running it again starts over too
    with pytest.warns(StaleCheckpointWarning):
        same_ranking(jn.maxcorr(list(first), checkpoint=tmp_path, chunk_tokens=128),
                     jn.maxcorr(list(first), chunk_tokens=128))


def test_a_value_changed_in_the_middle_of_an_array_counts(tmp_path):
    a, b = pair(2)
    jn.maxcorr([a, b], checkpoint=tmp_path, chunk_tokens=128)
    a[350, 1] += 1.0  # not in the first or last rows: the whole-array checksum sees it
    with pytest.warns(StaleCheckpointWarning, match="the data differ"):
        again = jn.maxcorr([a, b], checkpoint=tmp_path, chunk_tokens=128)
    same_ranking(again, jn.maxcorr([a, b], chunk_tokens=128))


def test_a_layer_loop_over_one_store_keeps_each_layers_partners(tmp_path):
    rng = np.random.default_rng(3)
    models = {m: {layer: rng.normal(size=(500, 3)).astype(np.float32) for layer in ("l0", "l1")} for m in "ab"}
    models["b"]["l1"][:, 0] = models["a"]["l1"][:, 2]  # l1's partners differ from l0's
    path = write(tmp_path / "s.zarr", models, layers=("l0", "l1"))
    results = {}
    for layer in ("l0", "l1"):
        results[layer] = jn.maxcorr(jn.open_activations(f"{path}#a/{layer},b/{layer}"), checkpoint=tmp_path / "ck",
                                    chunk_tokens=64)
    for layer in ("l0", "l1"):
        fresh = jn.maxcorr(jn.open_activations(f"{path}#a/{layer},b/{layer}"), chunk_tokens=64)
        same_ranking(results[layer], fresh)
        # the loop run again reads each layer's own finished checkpoint back, without a pass
        rows = []
        same_ranking(jn.maxcorr(jn.open_activations(f"{path}#a/{layer},b/{layer}"), checkpoint=tmp_path / "ck",
                                chunk_tokens=64, on_chunk=rows.append), fresh)
        assert rows == []
    assert results["l1"].partners(2)[0]["label"] == "b/l1/0"


def test_a_store_fixed_after_a_nan_error_is_read_again(tmp_path):
    a, b = pair(4)
    broken = a.copy()
    broken[350, 2] = np.nan
    path = write(tmp_path / "s.zarr", {"a": broken, "b": b})
    with pytest.raises(JNeuronError, match="model 'a'.*neuron 2"):
        jn.maxcorr(jn.open_activations(path), checkpoint=tmp_path / "ck", chunk_tokens=64)
    write(path, {"a": a, "b": b})  # fixed in place: the store's files change
    with pytest.warns(StaleCheckpointWarning, match="the files changed since"):
        fixed = jn.maxcorr(jn.open_activations(path), checkpoint=tmp_path / "ck", chunk_tokens=64)
    same_ranking(fixed, jn.maxcorr(jn.open_activations(path), chunk_tokens=64))


def test_an_array_fixed_after_a_nan_error_is_read_again(tmp_path):
    a, b = pair(5)
    a[350, 2] = np.nan
    with pytest.raises(JNeuronError, match="row 351"):
        jn.maxcorr([a, b], checkpoint=tmp_path, chunk_tokens=64)
    a[350, 2] = 0.5
    with pytest.warns(StaleCheckpointWarning):
        same_ranking(jn.maxcorr([a, b], checkpoint=tmp_path, chunk_tokens=64), jn.maxcorr([a, b], chunk_tokens=64))


def test_cli_after_a_crash_on_another_store_of_the_same_shapes(tmp_path, capsys):
    first, second = pair(6), pair(7)
    s1 = write(tmp_path / "s1.zarr", dict(zip("ab", first)))
    s2 = write(tmp_path / "s2.zarr", dict(zip("ab", second)))
    with pytest.raises(Interrupt):  # the run on s1 dies half way, leaving its checkpoint
        jn.maxcorr(jn.open_activations(s1), checkpoint=tmp_path / "ck", chunk_tokens=64, on_chunk=stop_after(6))
    outputs = []
    for extra in (["--checkpoint", str(tmp_path / "ck")], []):
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["maxcorr", str(s2), "--chunk-tokens", "64", "--no-plot", "--out",
                         str(tmp_path / f"out{len(extra)}"), *extra]) == 0
        outputs.append(json.loads((tmp_path / f"out{len(extra)}" / "maxcorr.json").read_text()))
    assert outputs[0] == outputs[1]  # scores, partners and all: s1's statistics were not used


def test_an_edited_counter_is_refused(tmp_path):
    source = jn.as_source(list(pair(8)))
    with pytest.raises(Interrupt):
        accumulate(source, TILES, 64, checkpoint=tmp_path, checkpoint_every=2, on_chunk=stop_after(5))
    (file,) = tmp_path.glob("stats-*.npz")
    with np.load(file) as saved:
        content = dict(saved)
    content["chunks_done"] = np.asarray(2)  # 4 chunks' statistics claimed for 2: tokens would be counted twice
    np.savez(file, **content)
    with pytest.raises(JNeuronError, match="does not match its digest"):
        accumulate(source, TILES, 64, checkpoint=tmp_path)


def test_counts_are_checked_against_the_chunks_done(tmp_path):
    """A checkpoint consistent with its digest but whose count disagrees with its chunks (rewritten by
    hand, or by a bug) is refused too."""
    source = jn.as_source(list(pair(9)))
    with pytest.raises(Interrupt):
        accumulate(source, TILES, 64, checkpoint=tmp_path, checkpoint_every=2, on_chunk=stop_after(5))
    file, binding = _checkpoint_file(tmp_path, source, TILES, 64, np.float32)
    partial = accumulate(jn.as_source([x[:256] for x in pair(9)]), TILES, 64)  # 4 chunks of statistics
    _save_checkpoint(file, partial, 6, False, binding)  # ... said to be 6
    with pytest.raises(JNeuronError, match="counts 256 tokens after 6 chunks of 64 rows"):
        accumulate(source, TILES, 64, checkpoint=tmp_path)
    _save_checkpoint(file, partial, 4, True, binding)  # finished after 256 of 700 tokens
    with pytest.raises(JNeuronError, match="counts 256 tokens after 4 chunks"):
        accumulate(source, TILES, 64, checkpoint=tmp_path)


def test_a_checkpoint_from_before_binding_starts_over(tmp_path):
    source = jn.as_source(list(pair(10)))
    accumulate(source, TILES, 64, checkpoint=tmp_path)
    (file,) = tmp_path.glob("stats-*.npz")
    with np.load(file) as saved:
        content = {k: v for k, v in saved.items() if k not in ("binding", "digest")}
    np.savez(file, **content)
    with pytest.warns(StaleCheckpointWarning, match="predates data binding"):
        accumulate(source, TILES, 64, checkpoint=tmp_path)


def test_an_iterator_is_bound_to_its_first_chunk(tmp_path):
    """A plain iterator can be read once: its binding holds the first chunk (what it has already given)."""
    x, y = np.hstack(pair(11)), np.hstack(pair(12))
    accumulate(jn.as_source(iter([x])), TILES, 64, checkpoint=tmp_path)
    with pytest.warns(StaleCheckpointWarning):
        got = accumulate(jn.as_source(iter([y])), TILES, 64, checkpoint=tmp_path)
    same(got, accumulate(jn.as_source(iter([y])), TILES, 64))


def scaled_data(seed):
    """Data whose range needs scaling, the scale changing after the interruption (a spike in chunk 8)."""
    a, b = pair(seed, 900)
    a = a * np.float32(1e30)
    b[:, 1] *= np.float32(1e-30)
    b[520, 0] = 1e30
    return [a, b]


@pytest.mark.parametrize("stop", [3, 10])
def test_resume_is_bit_for_bit_with_scaled_data(tmp_path, stop):
    source = jn.as_source(scaled_data(13))
    whole = accumulate(source, TILES, 64)
    assert whole.scale is not None
    with pytest.raises(Interrupt):
        accumulate(source, TILES, 64, checkpoint=tmp_path, checkpoint_every=2, on_chunk=stop_after(stop))
    same(accumulate(source, TILES, 64, checkpoint=tmp_path), whole)
    same(accumulate(source, TILES, 64, checkpoint=tmp_path), whole)  # finished: read back


def test_the_sharded_pass_is_bound_too(tmp_path):
    mesh = jn.device_mesh(1)
    first, second = jn.as_source(list(pair(14, 900))), jn.as_source(scaled_data(15))
    whole = accumulate(second, TILES, 64, mesh=mesh)
    assert whole.scale is not None
    with pytest.raises(Interrupt):
        accumulate(first, TILES, 64, mesh=mesh, checkpoint=tmp_path, checkpoint_every=2, on_chunk=stop_after(5))
    with pytest.warns(StaleCheckpointWarning), pytest.raises(Interrupt):
        accumulate(second, TILES, 64, mesh=mesh, checkpoint=tmp_path, checkpoint_every=2, on_chunk=stop_after(11))
    rows = []
    resumed = accumulate(second, TILES, 64, mesh=mesh, checkpoint=tmp_path, on_chunk=rows.append)
    assert sum(rows) == 900 - 10 * 64  # resumed after the 10 saved chunks, exponents included
    same(resumed, whole)
    with pytest.warns(StaleCheckpointWarning):  # the finished checkpoint is not handed to other data
        same(accumulate(first, TILES, 64, mesh=mesh, checkpoint=tmp_path), accumulate(first, TILES, 64, mesh=mesh))
