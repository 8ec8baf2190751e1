import warnings

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jneuron as jn
from jneuron.crossmodel.maxcorr import plan_passes
from tests.reference import assert_partners_close, cross_model_reference
from tests.tolerance import assert_close, tolerance


def make_models(rng, widths, tokens=3000, offsets=(0.0,)):
    """Models sharing a few latent signals (so partners are meaningful), with per-model offsets."""
    latent = rng.normal(size=(tokens, 4))
    models = []
    for m, width in enumerate(widths):
        mix = rng.normal(size=(4, width)) * (rng.uniform(size=(1, width)) < 0.5)
        x = latent @ mix + rng.normal(size=(tokens, width)) + offsets[m % len(offsets)]
        models.append(x.astype(np.float32))
    return models


@pytest.mark.parametrize("devices", [None, 2])  # None: unsharded; 2: tokens over the 2 devices of every test process
@pytest.mark.parametrize("offsets", [(0.0,), (1e3, -1e3, 250.0)])
def test_matches_float64_reference(rng, offsets, devices):
    models = make_models(rng, (12, 7, 20), offsets=offsets)
    best, rho, unit = cross_model_reference(models)
    r = jn.maxcorr(models, devices=devices)
    bound = tolerance(3000)  # correlations over 3,000 float32 tokens; centring is exact, so offsets cost nothing
    assert_close(r.score_matrix, best, bound, what="best |rho|")
    assert_close(r.partner_rho, rho, bound, what="partner rho")
    assert_partners_close(r.partner_unit, models, bound)
    assert_close(r.scores, np.nanmax(best, axis=1), bound, what="maxcorr scores")
    assert_close(jn.mincorr(models, devices=devices).scores, np.nanmin(best, axis=1), bound, what="mincorr scores")


def test_order_is_descending_by_score(rng):
    r = jn.maxcorr(make_models(rng, (5, 6, 7)))
    assert np.all(np.diff(r.scores[r.order]) <= 0)
    assert r.top(1)[0]["score"] == r.scores.max()  # the same number read back: exact


def test_partners_identify_model_layer_and_unit(rng):
    a = rng.normal(size=(500, 3)).astype(np.float32)
    b = {"enc": rng.normal(size=(500, 2)).astype(np.float32), "dec": np.stack([-a[:, 1], a[:, 0]], 1)}
    r = jn.maxcorr({"A": {"top": a}, "B": b})
    partners = r.partners(1)
    assert [(p["model"], p["layer"], p["unit"]) for p in partners] == [("B", "dec", 0)]
    assert_close(partners[0]["rho"], -1.0, tolerance(500), what="rho of an exact negative copy")
    assert r.neurons.label(3) == "B/enc/0" and r.neurons.label(5) == "B/dec/0"


def test_chunked_equals_whole(rng):
    models = make_models(rng, (8, 9, 10), tokens=2001, offsets=(1e3,))
    whole = jn.maxcorr(models)
    chunked = jn.maxcorr(models, chunk_tokens=128)
    bound = 2 * tolerance(2001)  # two float32 computations of the same correlations, each within one bound
    assert_close(chunked.score_matrix, whole.score_matrix, bound, what="chunked vs whole")
    streamed = jn.maxcorr(iter([tuple(m[i : i + 300] for m in models) for i in range(0, 2001, 300)]))
    assert_close(streamed.score_matrix, whole.score_matrix, bound, what="streamed vs whole")


def test_several_passes_equal_one(rng):
    models = make_models(rng, (16, 12, 9, 5))
    one = jn.maxcorr(models)
    budget = 24 * 6 * 35  # forces bands of a few rows and many passes (4; each compiles its own program)
    assert len(plan_passes((16, 12, 9, 5), budget)) > 3
    many = jn.maxcorr(models, memory_budget=budget)
    # other tile shapes, other BLAS blocking: two float32 computations of the same correlations
    assert_close(many.score_matrix, one.score_matrix, 2 * tolerance(3000), what="several passes vs one")
    assert_partners_close(many.partner_unit, models, tolerance(3000))


def test_plan_covers_every_cross_model_pair_once():
    widths = (5, 3, 4)
    covered = np.zeros((12, 12), int)
    for tiles in plan_passes(widths, 24 * 20):
        for t in tiles:
            covered[t.r0 : t.r1, t.c0 : t.c1] += 1
    owner = np.repeat(np.arange(3), widths)
    expected = (owner[:, None] < owner[None, :]).astype(int)
    np.testing.assert_array_equal(covered, expected)


def test_callable_source_allows_several_passes_but_iterator_does_not(rng):
    models = make_models(rng, (6, 6, 6), tokens=400)
    chunks = [tuple(m[i : i + 100] for m in models) for i in range(0, 400, 100)]
    reference = jn.maxcorr(models).score_matrix
    assert_close(jn.maxcorr(lambda: iter(chunks), memory_budget=24 * 6 * 6).score_matrix, reference,
                 2 * tolerance(400), what="several passes over a callable vs one")  # two float32 computations
    with pytest.raises(jn.JNeuronError, match="passes over the data"):
        jn.maxcorr(iter(chunks), memory_budget=24 * 6 * 6)


def test_dead_neurons_score_zero_and_are_reported(rng):
    models = make_models(rng, (5, 6, 4))
    models[1][:, 2] = 7.5
    models[2][:, 0] = 0.0
    with pytest.warns(jn.DeadNeuronWarning, match="2 constant neuron"):
        r = jn.maxcorr(models)
    assert r.dead.tolist() == [7, 11]
    assert r.scores[7] == 0 and r.scores[11] == 0
    best, _, _ = cross_model_reference(models)
    assert_close(r.score_matrix, best, tolerance(3000), what="best |rho|")
    assert np.isfinite(r.scores).all()


def test_ties_are_ordered_by_index(rng):
    x = rng.normal(size=(300, 1)).astype(np.float32)
    models = [np.hstack([x, x, x]), np.hstack([x, 2 * x]), np.hstack([-x])]
    r = jn.maxcorr(models)
    assert_close(r.scores, np.ones(6), tolerance(300), what="|rho| of exact copies")
    # by score, ties by index. Copies of one column tie exactly only where the BLAS kernel rounds their
    # products alike (under OPENBLAS_CORETYPE=Prescott the third copy scores an ulp lower), so the order is
    # checked against the scores as computed: all equal, it is 0..5
    np.testing.assert_array_equal(r.order, np.lexsort((np.arange(6), -r.scores)))
    assert r.partner_unit[0, 1] == 0  # equal partners: the lower unit


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_precision_input(rng, dtype):
    models = [m.astype(dtype) for m in make_models(rng, (6, 7), offsets=(3.0,))]
    best, _, _ = cross_model_reference([m.astype(np.float64) for m in models])
    # accumulated in float32: the input's own rounding to half precision is in the reference too
    assert_close(jn.maxcorr(models).score_matrix, best, tolerance(3000), what="best |rho|")


def test_single_layer_models_named_by_mapping(rng):
    models = dict(zip(["x", "y"], make_models(rng, (3, 4))))
    r = jn.maxcorr(models)
    assert r.neurons.models == ("x", "y") and r.neurons.label(3) == "y/0"


@pytest.mark.parametrize(
    "models, message",
    [
        ([np.zeros((10, 3))], "at least 2 models"),
        ([np.ones((10, 3)), np.ones((9, 3))], "token counts differ"),
        ([np.ones((1, 3)), np.ones((1, 3))], "at least 2 tokens"),
        ([np.ones((10, 3)), np.ones((10,))], "expected a 2-D array"),
        ([np.ones((10, 3)), np.ones((10, 2, 2))], "expected a 2-D array"),
    ],
)
def test_bad_input_is_a_clear_error(models, message):
    with pytest.raises(jn.JNeuronError, match=message), warnings.catch_warnings():
        warnings.simplefilter("ignore", jn.DeadNeuronWarning)
        jn.maxcorr(models)


def test_nan_names_model_and_row(rng):
    models = make_models(rng, (4, 4, 4))
    models[2][1234, 3] = np.nan
    with pytest.raises(jn.JNeuronError, match="model 'model2'.*row 1235, neuron 3"):
        jn.maxcorr(models)


def test_json_round_trip(rng, tmp_path):
    import json

    r = jn.maxcorr(make_models(rng, (3, 4)), names=["a", "b"])
    data = json.loads(r.to_json(tmp_path / "out" / "r.json").read_text())
    assert data["method"] == "maxcorr" and len(data["neurons"]) == 7
    assert data["neurons"][0]["index"] == int(r.order[0])
    assert data["score_matrix"][0][0] is None  # own model: not applicable
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_rescore_gives_mincorr_without_a_new_pass(rng):
    models = make_models(rng, (4, 5, 6))
    np.testing.assert_array_equal(jn.maxcorr(models).rescore("mincorr").scores, jn.mincorr(models).scores)
    with pytest.raises(jn.JNeuronError, match="unknown cross-model method"):
        jn.maxcorr(models).rescore("median")


@settings(max_examples=10)
@given(
    scale=st.lists(st.floats(0.5, 4.0), min_size=9, max_size=9),
    negate=st.lists(st.booleans(), min_size=9, max_size=9),
    shift=st.lists(st.floats(-100, 100), min_size=9, max_size=9),
)
def test_scores_are_invariant_under_per_neuron_affine_maps(scale, negate, shift):
    models = make_models(np.random.default_rng(7), (3, 2, 4), tokens=600)
    a = np.asarray(scale) * np.where(negate, -1.0, 1.0)
    moved = np.concatenate(models, axis=1).astype(np.float64) * a + np.asarray(shift)
    moved = np.split(moved.astype(np.float32), [3, 5], axis=1)
    base, after = jn.maxcorr(models), jn.maxcorr(moved)
    # each run is within one bound of the float64 answer for its own (float32) input, offsets or not ...
    bound = tolerance(600)
    for ranking, inputs in ((base, models), (after, moved)):
        assert_close(ranking.score_matrix, cross_model_reference(inputs)[0], bound, what="best |rho|")
        assert_partners_close(ranking.partner_unit, inputs, bound)
    # ... and rounding a * x + shift to float32 moved each value by up to eps * |shift| / (|a| sd) of its spread
    x = np.concatenate(moved, axis=1).astype(np.float64)
    magnitude = float(np.max(np.abs(x.mean(0)) / x.std(0)))
    assert_close(after.score_matrix, base.score_matrix, bound + tolerance(600, magnitude=magnitude),
                 what="best |rho| after affine maps")
    # the same partners: within rounding of the best for the original input too
    assert_partners_close(after.partner_unit, models, bound + tolerance(600, magnitude=magnitude))


@settings(max_examples=10)
@given(seed=st.integers(0, 2**16), model_order=st.permutations([0, 1, 2]))
def test_ranking_is_equivariant_under_permutations(seed, model_order):
    rng = np.random.default_rng(seed)
    models = make_models(np.random.default_rng(3), (4, 3, 5), tokens=500)
    perms = [rng.permutation(m.shape[1]) for m in models]
    shuffled = [models[k][:, perms[k]] for k in model_order]
    base, moved = jn.maxcorr(models), jn.maxcorr(shuffled)
    # map every neuron of the shuffled run back to its original flat index
    starts = np.cumsum([0, 4, 3, 5])
    original = np.concatenate([starts[k] + perms[k] for k in model_order])
    bound = 2 * tolerance(500)  # permuted columns, other BLAS blocking: two float32 computations
    assert_close(moved.scores, base.scores[original], bound, what="scores under permutations")
    assert_close(np.sort(moved.scores), np.sort(base.scores), bound, what="sorted scores")  # sorting is 1-Lipschitz
