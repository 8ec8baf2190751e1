"""LinReg ranking and SVCCA/CCA direction rankings against float64 least-squares references."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jneuron as jn
from tests.reference import floored_condition, pca_condition, rho_bound
from tests.tolerance import assert_close, tolerance

TOKENS = 600
C = 256  # one chunk shape for every test, so the streamed update compiles once per width


def ref_r2(target, predictors, rcond=1e-3):
    """R^2 of OLS with intercept, by numpy least squares on centred, standardised float64 data.

    Singular values below ``rcond`` of the largest are dropped (minimum-norm solution): float32 rounding
    of a 1e3 offset makes exactly rank-deficient predictors full rank at ~1e-5 of their scale. (``rcond``
    is the library's eigenvalue floor of 1e-6, as a singular value: a rank threshold, not a tolerance.)
    """
    t = np.asarray(target, np.float64)
    p = np.asarray(predictors, np.float64)
    p = p - p.mean(0)
    sd = p.std(0)
    design = p[:, sd > 0] / sd[sd > 0]
    coef, *_ = np.linalg.lstsq(design, t - t.mean(0), rcond=rcond)
    residual = t - t.mean(0) - design @ coef
    return 1 - (residual**2).sum(0) / ((t - t.mean(0)) ** 2).sum(0)


FLOOR = 1e-6  # jneuron.similarity.measures.RTOL_FLOAT32: the whitening's relative eigenvalue floor


def r2_bound(*predictors, terms=TOKENS):
    """R^2 is a fit: the float32 co-moments' rounding (sums over the tokens) amplified by the predictors'
    whitening (the condition of their correlation matrix on the directions the floor keeps)."""
    return tolerance(terms, condition=floored_condition(*predictors, rtol=FLOOR))


def _models(rng, offset=1e3):
    z = rng.normal(size=(TOKENS, 3))
    a = np.hstack([z @ rng.normal(size=(3, 4)), rng.normal(size=(TOKENS, 2))]) + offset
    b = np.hstack([np.tanh(z @ rng.normal(size=(3, 4))), rng.normal(size=(TOKENS, 1))]) * 3.0
    c = np.hstack([z[:, :1] ** 2, z @ rng.normal(size=(3, 3))]) - offset
    return [m.astype(np.float32) for m in (a, b, c)]


def test_linreg_matches_least_squares(rng):
    models = _models(rng)
    r = jn.linreg_ranking(models, names=["a", "b", "c"], chunk_tokens=C)
    r2 = r.details["r2"]
    starts = np.cumsum([0, 6, 5, 4])
    for target in range(3):
        rows = slice(starts[target], starts[target + 1])
        assert np.all(np.isnan(r2[rows, target]))
        for source in set(range(3)) - {target}:
            assert_close(r2[rows, source], ref_r2(models[target], models[source]), r2_bound(models[source]),
                         what=f"R^2 of model {target} from model {source}")
    np.testing.assert_array_equal(r.scores, np.nanmin(r2, axis=1))  # the scores are picked from the details
    assert r.method == "linreg_min" and r.descending
    best = jn.linreg_ranking(models, reduce="max", chunk_tokens=C)
    # the same float32 pass again, reduced the other way: the same deterministic arithmetic, so equal
    np.testing.assert_array_equal(best.scores, np.nanmax(r2, axis=1))
    assert best.method == "linreg_max"


def test_linreg_ranks_shared_neurons_first_and_noise_last(rng):
    shared = rng.normal(size=(TOKENS, 1))
    a = np.hstack([rng.normal(size=(TOKENS, 3)), shared]).astype(np.float32)
    b = np.hstack([2 * shared + 1, rng.normal(size=(TOKENS, 3))]).astype(np.float32)
    c = np.hstack([rng.normal(size=(TOKENS, 2)), -shared, rng.normal(size=(TOKENS, 1))]).astype(np.float32)
    r = jn.linreg_ranking({"a": a, "b": b, "c": c}, chunk_tokens=C)
    assert {n["label"] for n in r.top(3)} == {"a/3", "b/0", "c/2"}
    assert all(n["score"] > 0.999 for n in r.top(3)) and r.scores[r.order[-1]] < 0.05  # planted data's statistics
    record = r.top(1)[0]
    assert len(record["r2"]) == 3 and record["r2"][record["index"] // 4 if record["model"] != "c" else 2] is None


def test_layered_models_and_json(rng, tmp_path):
    a, b, c = _models(rng)
    layered = {"m0": {"l0": a[:, :3], "l1": a[:, 3:]}, "m1": {"l0": b}, "m2": {"l0": c[:, :2], "l1": c[:, 2:]}}
    r = jn.linreg_ranking(layered, chunk_tokens=C)
    flat = jn.linreg_ranking([a, b, c], chunk_tokens=C)
    # float32 tiles of other shapes: two computations of the same R^2
    assert_close(r.scores, flat.scores, 2 * r2_bound(a, b, c), what="layered vs flat")
    assert r.neurons.label(4) == "m0/l1/1" and r.neurons.label(14) == "m2/l1/1"
    data = json.loads(r.to_json(tmp_path / "linreg.json").read_text())
    assert data["method"] == "linreg_min" and len(data["neurons"]) == 15


def test_linreg_degenerate_inputs(rng):
    a, b, c = _models(rng)
    a = np.hstack([a, a[:, :2], np.full((TOKENS, 1), 5.0, np.float32)])  # duplicates and a dead neuron
    with pytest.warns(jn.DeadNeuronWarning, match="model0/8"):
        r = jn.linreg_ranking([a, b, c], chunk_tokens=C)
    assert np.all(np.isfinite(r.scores)) and r.scores[8] == 0 and 8 in r.dead
    assert_close(r.details["r2"][9:14, 0], ref_r2(b, a[:, :8]), r2_bound(a[:, :8]), what="R^2 from duplicates")
    with pytest.warns(jn.FewTokensWarning):
        few = jn.linreg_ranking([x[:5] for x in (a[:, :8], b, c)], chunk_tokens=C)
    assert np.all(np.isfinite(few.scores)) and np.all(few.scores <= 1)


def test_linreg_errors(rng):
    a, b, _ = _models(rng)
    with pytest.raises(jn.JNeuronError, match="at least 2 models"):
        jn.linreg_ranking([a], chunk_tokens=C)
    with pytest.raises(jn.JNeuronError, match="reduce"):
        jn.linreg_ranking([a, b], reduce="mean", chunk_tokens=C)
    with pytest.raises(jn.JNeuronError, match="token counts differ"):
        jn.linreg_ranking([a, b[:-1]], chunk_tokens=C)


@given(st.integers(0, 2**31 - 1), st.floats(0.01, 100.0))
def test_linreg_invariant_under_invertible_maps_of_the_predictors(seed, scale):
    r = np.random.default_rng(seed)
    a, b, c = _models(r, offset=0.0)
    base = jn.linreg_ranking([a, b, c], chunk_tokens=C).details["r2"]
    u, _, vt = np.linalg.svd(r.normal(size=(6, 6)))
    mixed = (a @ (u @ np.diag(np.exp(r.uniform(-1, 1, 6))) @ vt) + 2.0).astype(np.float32)
    scaled = b * np.float32(scale)
    moved = jn.linreg_ranking([mixed, scaled, c], chunk_tokens=C).details["r2"]
    # each run against the float64 fit of its own float32 input, at no allowance for the maps' rounding ...
    for r2, source, targets in ((base, a, (b, c)), (moved, mixed, (scaled, c))):
        assert_close(r2[6:, 0], np.concatenate([ref_r2(t, source) for t in targets]), r2_bound(source),
                     what="b, c predicted from model 0")
    assert_close(moved[6:11, 2], ref_r2(scaled, c), r2_bound(c), what="scaled b predicted from c")
    # ... and the runs against each other:
    # each run within its bound; rounding the mixed a (and the scaled b) to float32 moved each value by eps
    # of itself, i.e. by eps * |mean| / sd of its spread (tests/tolerance.py's magnitude)
    magnitude = float(np.max(np.abs(mixed.mean(0)) / mixed.std(0)))
    bound = r2_bound(a) + r2_bound(mixed) + tolerance(TOKENS, condition=floored_condition(mixed, rtol=FLOOR),
                                                      magnitude=magnitude)
    assert_close(moved[6:, 0], base[6:, 0], bound, what="b, c predicted from a mixed a")
    magnitude = float(np.max(np.abs(scaled.mean(0)) / scaled.std(0)))
    bound = 2 * r2_bound(c) + tolerance(TOKENS, condition=floored_condition(c, rtol=FLOOR), magnitude=magnitude)
    assert_close(moved[6:11, 2], base[6:11, 2], bound, what="a scaled target")


# ---------------------------------------------------------------- direction rankings
def test_direction_ranking_directions_and_erasure(rng):
    a, b, c = _models(rng)
    d = jn.direction_ranking(a, b, method="cca", chunk_tokens=C)
    condition = floored_condition(a, b, rtol=FLOOR)
    # the same float32 co-moments, whitened two ways in float64 (6 x 6 factorizations)
    bound = 2 * tolerance(6, np.float64, condition=condition)
    assert_close(d.rho, jn.cca(a, b, chunk_tokens=C).rho, 1.0, rho_bound(bound, d.rho, 6), "direction rho vs cca")
    h = (a.astype(np.float64) - d.mean) @ d.weights
    bound = tolerance(TOKENS, condition=condition)  # the weights whiten the float32 co-moments
    assert_close(np.cov(h.T), np.eye(len(d.rho)), bound, what="covariance of the variates")
    ac = a.astype(np.float64) - d.mean
    # patterns are covariances of each neuron (sd_i) with a unit-variance variate
    assert_close(d.patterns, ac.T @ h / (TOKENS - 1), bound, a.astype(np.float64).std(0)[:, None], "patterns")
    erased = d.erase(a, 2)
    # erasing is a float64 projection of the float32 data at 1e3: a few roundings of values 1e3 / sd spreads
    # away, seen through the unit-variance variates
    magnitude = float(np.max(np.abs(ac + d.mean).mean(0) / ac.std(0)))
    assert_close((erased - d.mean) @ d.weights[:, :2], np.zeros((TOKENS, 2)),
                 tolerance(6, erased.dtype, condition=condition, magnitude=magnitude), what="erased variates")
    # the rest keep their correlations. The erased layer goes in centred (CCA does not see a shift), so
    # rounding it to float32 moves each value by eps of itself, not eps * 1e3 (magnitude 0); two float32 runs.
    # (In float64 the erased directions keep ~1e-9 of the variance, above the float64 floor of 1e-10.)
    after = jn.cca((erased - d.mean).astype(np.float32), b, chunk_tokens=C).rho
    bound = tolerance(TOKENS, condition=condition) + r2_bound(erased, b)
    assert_close(after[:3], d.rho[2:5], 1.0, rho_bound(bound, d.rho[2:5], 6), "correlations left after erasing")
    np.testing.assert_array_equal(d.erasure(0), np.eye(6))  # erasing nothing: exactly the identity
    records = d.to_dict(top_neurons=2)
    assert records["directions"][0]["rank"] == 0 and len(records["directions"][0]["neurons"]) == 2


def test_direction_ranking_svcca_against_several_models(rng):
    a, b, c = _models(rng)
    d = jn.direction_ranking(a, [b, c], keep=0.95, chunk_tokens=C)
    s = jn.svcca(a, np.hstack([b, c]), keep=0.95, chunk_tokens=C)
    assert d.method == "svcca" and len(d.rho) == min(s.kept_x, s.kept_y)
    # float32 co-moments of other tile layouts: two computations, amplified by SVCCA's components
    condition = max(pca_condition(a, s.kept_x, FLOOR), pca_condition(np.hstack([b, c]), s.kept_y, FLOOR))
    assert_close(d.rho, s.rho, 1.0, rho_bound(2 * tolerance(TOKENS, condition=condition), s.rho, 9), "svcca rho")
    with pytest.raises(jn.JNeuronError, match="erase 0 to"):
        d.erasure(len(d.rho) + 1)
    with pytest.raises(jn.JNeuronError, match="method"):
        jn.direction_ranking(a, b, method="pca", chunk_tokens=C)



def test_linreg_command(rng, tmp_path, capsys):
    from jneuron.cli.main import main

    for name, model in zip("abc", _models(rng)):
        np.save(tmp_path / f"{name}.npy", model)
    files = [str(tmp_path / f"{n}.npy") for n in "abc"]
    assert main(["linreg", *files, "--top", "3", "--out", str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "linreg_min.json").read_text())
    assert data["method"] == "linreg_min" and len(data["neurons"]) == 15
    assert capsys.readouterr().out.count("R^2") == 3
    assert main(["linreg", files[0], "--out", str(tmp_path / "out")]) == 2  # one model: a clear error
