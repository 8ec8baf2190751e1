"""Offsets and scales lose no digits (issue 16, items 3 and 4).

float32 data far from their mean (offsets up to 1e6 of their spread) and of any finite scale (1e-30 to
1e30, one entry of 1e30 among O(1) values, one neuron at 1e-30) give the float64 answer on the same
float32 values, within ``tolerance(n, np.float32, condition=..., magnitude=0)``: magnitude 0, so a method
that rounds the offset away, or loses products to overflow or underflow, fails. NaN and Inf are still
errors naming the model, row and neuron.
"""

import json
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jneuron as jn
from jneuron.errors import JNeuronError
from jneuron.kernels import moments as kmoments
from jneuron.kernels.moments import Tile
from jneuron.streaming.passes import DeviceFold, accumulate
from tests.reference import cross_model_reference
from tests.tolerance import (
    assert_close,
    correlation_condition,
    covariance_scale,
    tolerance,
)


# ------------------------------------------------------------------ float64 references on the float32 values
def centred(x) -> np.ndarray:
    """Columns less their float64 mean, each layer divided by a power of two near its largest value (CKA
    and canonical correlations do not change; float64 then holds every product at any float32 scale)."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=0)
    peak = np.abs(x).max()
    return np.ldexp(x, -np.frexp(peak)[1]) if peak > 0 else x


def reference_cca(x, y) -> np.ndarray:
    qx, qy = np.linalg.qr(centred(x))[0], np.linalg.qr(centred(y))[0]
    return np.linalg.svd(qx.T @ qy, compute_uv=False)


def reference_cka(x, y) -> float:
    x, y = centred(x), centred(y)
    return float(np.sum((x.T @ y) ** 2) / np.sqrt(np.sum((x.T @ x) ** 2) * np.sum((y.T @ y) ** 2)))


def _unbiased_hsic(k, l) -> tuple[float, float]:
    """Song et al.'s unbiased HSIC of two Gram matrices, and the sum of its terms' magnitudes."""
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    terms = (np.sum(k * l), k.sum() * l.sum() / ((n - 1) * (n - 2)), -2 / (n - 2) * (k.sum(0) @ l.sum(0)))
    return sum(terms) / (n * (n - 3)), sum(abs(t) for t in terms) / (n * (n - 3))


def reference_debiased_cka(x, y) -> tuple[float, float]:
    """The debiased CKA and its condition: how much larger the HSIC terms are than the HSICs they cancel to."""
    x, y = centred(x), centred(y)
    k, l = x @ x.T, y @ y.T
    (xy, axy), (xx, axx), (yy, ayy) = _unbiased_hsic(k, l), _unbiased_hsic(k, k), _unbiased_hsic(l, l)
    return xy / np.sqrt(xx * yy), max(axy / abs(xy), axx / abs(xx), ayy / abs(yy))


def cka_condition(x, y) -> float:
    """CKA ``|Cxy|^2 / (|Cxx| |Cyy|)`` moves by at most ``2 eps (r_x + r_y)`` when each co-moment moves by
    ``eps sd_i sd_j`` (``r = tr C / |C|_F``)."""
    conditions = []
    for z in (x, y):
        c = np.atleast_2d(np.cov(np.asarray(z, np.float64), rowvar=False))
        conditions.append(np.trace(c) / np.linalg.norm(c))
    return 2.0 * sum(conditions)


def rho_bound(x, y) -> float:
    """Canonical correlations: the co-moments' bound through the whitening, plus what taking them from
    ``eigh`` of a Gram matrix costs near 0 (the square root of a float64 rounding)."""
    return tolerance(len(x), np.float32, condition=correlation_condition(x, y)) + np.sqrt(
        tolerance(x.shape[1] + y.shape[1], np.float64))


def assert_maxcorr(models, ranking, what):
    best, _, _ = cross_model_reference(models)
    assert_close(ranking.score_matrix, best, tolerance(len(models[0]), np.float32), what=f"{what}: best |rho|")


def assert_similarities(x, y, what, debiased=True, **kwargs):
    assert_maxcorr([x, y], jn.maxcorr([x, y], **kwargs), what)
    rho = jn.cca(x, y, **kwargs).rho
    assert_close(rho, reference_cca(x, y)[: len(rho)], rho_bound(x, y), what=f"{what}: canonical correlations")
    n = len(x)
    assert_close(jn.cka(x, y, **kwargs).value, reference_cka(x, y),
                 tolerance(n, np.float32, condition=cka_condition(x, y)), what=f"{what}: CKA")
    if debiased:
        value, condition = reference_debiased_cka(x, y)
        assert_close(jn.cka(x, y, debiased=True, **kwargs).value, value,
                     tolerance(n, np.float32, condition=cka_condition(x, y) * condition), what=f"{what}: debiased CKA")


def layers(seed, tokens, dx=5, dy=4):
    """Two related layers of O(1) float64 values (the caller offsets, scales and rounds them to float32)."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(tokens, 2))
    x = np.hstack([shared, rng.normal(size=(tokens, dx - 2))])
    y = np.hstack([shared @ rng.normal(size=(2, 2)) + 0.5 * rng.normal(size=(tokens, 2)),
                   rng.normal(size=(tokens, dy - 2))])
    return x, y


# ------------------------------------------------------------------ item 3: offsets at the default chunk size
@pytest.mark.parametrize("offset", [1e5, 1e6])
def test_large_offsets_lose_no_digits_at_the_default_chunk_size(offset):
    """70,000 tokens in two chunks of 35,000 rows (the default for 11 neurons): a float32 sum down a chunk
    is off by ``sqrt(n) eps offset``, about the spread at 1e6; the sampled centring point is not."""
    x, y = layers(0, 70_000, 6, 5)
    x, y = (x + offset).astype(np.float32), (y - offset).astype(np.float32)
    assert_similarities(x, y, f"offset {offset:g}", debiased=False)


def test_the_compiled_update_recovers_the_exact_mean_at_an_offset_of_1e6():
    """The compiled path (accelerators, and the sharded kernels) centres on the rough mean plus the mean
    of the residuals: its co-moments at an offset of 1e6 are as accurate as at 0."""
    x, y = layers(1, 70_000, 6, 5)
    x, y = (x + 1e6).astype(np.float32), (y - 1e6).astype(np.float32)
    tiles = (Tile(0, 6, 0, 6),)
    stats = kmoments.init(6, tiles)
    for chunk in np.split(x, 2):
        stats = kmoments.update(stats, chunk, len(chunk), tiles)
    x64 = x.astype(np.float64)
    exact = (x64 - x64.mean(0)).T @ (x64 - x64.mean(0))
    bound = tolerance(len(x), np.float32)
    assert_close(kmoments.cross_value64(stats, 0), exact, bound, len(x) * covariance_scale(x), "compiled co-moments")
    assert_close(kmoments.mean64(stats), x64.mean(0), bound, x64.std(0), "compiled means")
    assert_maxcorr([x, y], jn.maxcorr([x, y], devices=1), "the sharded pass at an offset of 1e6")


# ------------------------------------------------------------------ item 4: any finite scale
@given(seed=st.integers(0, 3), scale=st.integers(-30, 30), mantissa=st.floats(1.0, 9.9),
       offset=st.sampled_from([0.0, 1.0, -30.0, 1e3, -1e4, 1e5, 1e6]), chunked=st.booleans())
def test_any_scale_and_offset_gives_the_float64_answer(seed, scale, mantissa, offset, chunked):
    x, y = layers(seed, 600)
    factor = mantissa * 10.0**scale
    x, y = ((x + offset) * factor).astype(np.float32), ((y - offset / 3) * factor).astype(np.float32)
    assert_similarities(x, y, f"scale {factor:.3g}, offset {offset:g}", chunk_tokens=128 if chunked else None)


def pca_condition(x, kept: int) -> float:
    """SVCCA's principal-component step amplifies relative errors of the covariance by about the spread of
    its kept eigenvalues, and by the gap to the first dropped one."""
    values = np.linalg.eigvalsh(np.cov(centred(x), rowvar=False))[::-1]
    condition = values.sum() / values[kept - 1]
    if kept < len(values):
        condition += values.sum() / (values[kept - 1] - values[kept])
    return float(condition)


@pytest.mark.parametrize("scale", [1e17, 1e30, 1e-30, 1e-38])
def test_whole_arrays_at_extreme_scales(scale):
    """All-NaN MaxCorr, LinAlgError from CCA, SVCCA and PWCCA, CKA 0 and every neuron "constant" before."""
    x, y = layers(2, 2000)
    x, y = (x * scale).astype(np.float32), (y * scale).astype(np.float32)
    assert_similarities(x, y, f"scale {scale:g}", chunk_tokens=512)
    # SVCCA and PWCCA against jneuron's own float64 pass over the same values (float64 holds their products)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    got, want = jn.svcca(x, y), jn.svcca(x64, y64)
    assert (got.kept_x, got.kept_y) == (want.kept_x, want.kept_y)
    condition = max(pca_condition(x, got.kept_x), pca_condition(y, got.kept_y))
    assert_close(got.rho, want.rho, tolerance(len(x), np.float32, condition=condition) + rho_bound(x, y) - tolerance(
        len(x), np.float32, condition=correlation_condition(x, y)), what=f"SVCCA at {scale:g}")
    assert_close(jn.pwcca(x, y).value, jn.pwcca(x64, y64).value, 2 * rho_bound(x, y), what=f"PWCCA at {scale:g}")


def test_one_entry_of_1e30_dominates_its_neuron_legitimately():
    x, y = layers(3, 2000)
    x, y = x.astype(np.float32), y.astype(np.float32)
    x[1234, 2] = 1e30
    y[77, 1] = -1e30
    for chunk_tokens in (None, 256):  # the spike in the first chunk, and in a later one
        assert_similarities(x, y, "one entry of 1e30", debiased=False, chunk_tokens=chunk_tokens)
    x, y = layers(3, 2000)
    x = x.astype(np.float32)
    x[1500, 0] = 1e30
    assert_similarities(x, y.astype(np.float32), "a spike in a later chunk", debiased=False, chunk_tokens=256)


def test_one_neuron_at_1e_minus_30_is_alive():
    x, y = layers(4, 1000)
    x, y = x.astype(np.float32), y.astype(np.float32)
    x[:, 1] *= np.float32(1e-30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DeadNeuronWarning
        ranking = jn.maxcorr([x, y], chunk_tokens=256)
    assert len(ranking.dead) == 0
    assert_maxcorr([x, y], ranking, "a neuron at 1e-30")
    assert_similarities(x, y, "a neuron at 1e-30", debiased=False)


@pytest.mark.parametrize("scale", [1e8, 1e-12, 1e20, 1e-25])
def test_debiased_cka_keeps_its_row_norm_terms(scale):
    """The fourth moments overflowed float32 from a scale of 1e8 (CKA 0) and underflowed below 1e-12
    (the biased value, silently)."""
    x, y = layers(5, 800)
    x, y = (x * scale).astype(np.float32), (y * scale).astype(np.float32)
    value, condition = reference_debiased_cka(x, y)
    bound = tolerance(len(x), np.float32, condition=cka_condition(x, y) * condition)
    assert bound < abs(value - reference_cka(x, y))  # so the biased value would fail
    assert_close(jn.cka(x, y, debiased=True, chunk_tokens=256).value, value, bound, what=f"debiased CKA at {scale:g}")


def test_the_cli_prints_and_writes_cka_with_one_entry_of_1e30(tmp_path, capsys):
    x = layers(6, 500)[0].astype(np.float32)
    x[100, 3] = 1e30
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "same.npy", x)
    from jneuron.cli.main import main

    assert main(["similarity", str(tmp_path / "x.npy"), str(tmp_path / "same.npy"), "--metric", "cka",
                 "--out", str(tmp_path / "out")]) == 0
    assert "1.0000" in capsys.readouterr().out
    text = (tmp_path / "out" / "similarity_cka.json").read_text()
    values = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))["values"]
    assert_close(np.asarray(values), np.ones((2, 2)), tolerance(500, np.float32, condition=cka_condition(x, x)))


# ------------------------------------------------------------------ every path scales, NaN and Inf still raise
def extreme(seed=7, tokens=900):
    x = np.random.default_rng(seed).normal(size=(tokens, 7))
    x[:, 2] *= 1e-30
    x[:, 4] = x[:, 4] * 1e25 + 3e30
    x = x.astype(np.float32)
    x[650, 5] = 1e30  # in a later chunk than the first
    return x


TILES = (Tile(0, 3, 0, 7), Tile(3, 7, 3, 7))


def assert_stats(stats, x, what):
    x64 = x.astype(np.float64)
    exact = (x64 - x64.mean(0)).T @ (x64 - x64.mean(0))
    bound, scale = tolerance(len(x), np.float32), len(x) * covariance_scale(x)
    for i, t in enumerate(TILES):
        got, want = kmoments.cross_value64(stats, i), exact[t.r0 : t.r1, t.c0 : t.c1]
        assert_close(got, want, bound, scale[t.r0 : t.r1, t.c0 : t.c1], f"{what}: cross-products of tile {i}")
    assert_close(kmoments.m2_64(stats), np.diag(exact), bound, np.diag(scale), f"{what}: sums of squares")
    assert_close(kmoments.mean64(stats), x64.mean(0), bound, x64.std(0), f"{what}: means")


@pytest.mark.parametrize("path", ["host", "device", "mesh"])
def test_every_path_scales(path):
    x = extreme()
    if path == "device":  # the accelerators' fold (runs on a CPU too)
        fold, stats = DeviceFold(), kmoments.init(7, TILES)
        for start in range(0, len(x), 100):
            stats = fold(stats, x[start : start + 100], len(x[start : start + 100]), TILES)
    else:
        stats = accumulate(jn.as_source([x]), TILES, 100, mesh=jn.device_mesh(1) if path == "mesh" else None)
    assert stats.scale is not None
    assert_stats(stats, x, path)


def test_ordinary_data_are_not_scaled():
    x = (layers(8, 700)[0] * 1e3 + 1e4).astype(np.float32)
    assert accumulate(jn.as_source([x]), (Tile(0, 5, 0, 5),), 128).scale is None


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("mesh", [False, True])
def test_nan_and_inf_in_scaled_data_name_the_model_row_and_neuron(bad, mesh):
    x, y = layers(9, 900)
    x, y = (x * 1e30).astype(np.float32), (y * 1e-30).astype(np.float32)
    y[700, 3] = bad
    with pytest.raises(JNeuronError, match=r"model 'model1'.*row 701, neuron 3"):
        jn.maxcorr([x, y], chunk_tokens=128, devices=1 if mesh else None)
