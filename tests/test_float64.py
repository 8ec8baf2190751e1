"""float64 in, float64 out: every streamed analysis agrees with a float64 numpy reference on float64 input
(offsets of 1e4) with JAX's global x64 flag off, and leaves the flag off; float32 input keeps its path."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import jneuron as jn
from jneuron import precision
from jneuron.cli.main import main
from jneuron.probing.probeless import class_means
from jneuron.streaming.blocks import stream_blocks
from tests.reference import cross_model_reference
from tests.tolerance import (
    assert_close,
    correlation_condition,
    covariance_scale,
    tolerance,
)

TOKENS = 3000
OFFSET = 1e4


@pytest.fixture(autouse=True)
def global_flag_stays_off():
    assert not jax.config.jax_enable_x64
    yield
    assert not jax.config.jax_enable_x64


@pytest.fixture(scope="module")
def layers() -> dict[str, np.ndarray]:
    """Three float64 layers sharing a latent signal, with spreads 0.5..6 and offsets of +-1e4."""
    rng = np.random.default_rng(20261120)
    z = rng.normal(size=(TOKENS, 3))
    a = np.hstack([z, rng.normal(size=(TOKENS, 3))]) * [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] + OFFSET
    b = np.hstack([z @ rng.normal(size=(3, 4)), rng.normal(size=(TOKENS, 2))]) + 0.3 * rng.normal(size=(TOKENS, 6))
    c = np.tanh(z @ rng.normal(size=(3, 5))) + 0.5 * rng.normal(size=(TOKENS, 5))
    return {"a": a, "b": b - OFFSET, "c": c + OFFSET}


def centred(x) -> np.ndarray:
    """Two-pass centring in float64 (the second pass takes off what the first one's rounding left)."""
    x = np.asarray(x, np.float64)
    once = x - x.mean(axis=0)
    return once - once.mean(axis=0)


def exact_mean(x) -> np.ndarray:
    """Column means about the first row (so the offset is subtracted exactly before summing)."""
    x = np.asarray(x, np.float64)
    return x[0] + (x - x[0]).mean(axis=0)


def cca_reference(x, y) -> np.ndarray:
    """Canonical correlations from the QR factors of the centred layers."""
    qx, qy = np.linalg.qr(centred(x))[0], np.linalg.qr(centred(y))[0]
    return np.linalg.svd(qx.T @ qy, compute_uv=False)


def svcca_reference(x, y, keep: float) -> np.ndarray:
    """SVCCA: each layer's leading principal components reaching ``keep`` of the variance, then CCA."""

    def components(z):
        zc = centred(z)
        values, vectors = np.linalg.eigh(zc.T @ zc)
        values, vectors = values[::-1], vectors[:, ::-1]
        kept = int(np.searchsorted(np.cumsum(values) / values.sum(), keep)) + 1
        return zc @ vectors[:, :kept]

    return cca_reference(components(x), components(y))


def pwcca_reference(x, y) -> float:
    """Morcos et al.'s PWCCA with weights from ``x``: ``alpha_i ~ sum_j |<h_i, x_j>|``."""
    xc = centred(x)
    qx, qy = np.linalg.qr(xc)[0], np.linalg.qr(centred(y))[0]
    u, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    alpha = np.abs(xc.T @ (qx @ u)).sum(axis=0)
    return float(alpha @ rho / alpha.sum())


def cka_reference(x, y) -> float:
    xc, yc = centred(x), centred(y)
    return float(np.sum((xc.T @ yc) ** 2) / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))


def debiased_cka_reference(x, y) -> float:
    """From the unbiased HSIC of the token Gram matrices (Song et al., 2012), not from feature moments."""

    def hsic(k, m):
        n = len(k)
        k, m = k.copy(), m.copy()
        np.fill_diagonal(k, 0.0)
        np.fill_diagonal(m, 0.0)
        return (np.sum(k * m) + k.sum() * m.sum() / ((n - 1) * (n - 2))
                - 2 / (n - 2) * k.sum(axis=0) @ m.sum(axis=0)) / (n * (n - 3))

    k, m = centred(x) @ centred(x).T, centred(y) @ centred(y).T
    return float(hsic(k, m) / np.sqrt(hsic(k, k) * hsic(m, m)))


def r2_reference(x, y) -> np.ndarray:
    """R^2 of an OLS fit (with intercept) of every column of ``y`` on all of ``x``."""
    xc, yc = centred(x), centred(y)
    residual = yc - xc @ np.linalg.lstsq(xc, yc, rcond=None)[0]
    return 1 - (residual**2).sum(axis=0) / (yc**2).sum(axis=0)


def class_mean_reference(x, labels) -> np.ndarray:
    return np.stack([exact_mean(x[labels == c]) for c in np.unique(labels)])


def assert_float64(*arrays) -> None:
    for array in arrays:
        assert isinstance(array, np.ndarray) and array.dtype == np.float64, type(array)


def assert_class_means(actual, x, labels, dtype) -> None:
    """Class means: sums about a shift carry the working dtype's rounding of the spread, and the result
    a few float64 roundings of the mean itself."""
    expected = class_mean_reference(x, labels)
    spread = np.asarray(x, np.float64).std(axis=0)
    scale = tolerance(len(x), dtype) * spread + tolerance(1, np.float64) * np.abs(expected)
    assert_close(actual, expected, 1.0, scale, "class means")


@pytest.mark.parametrize("devices", [None, 1])  # the host fold; the compiled, sharded pass (a 1-device mesh)
def test_comoments_covariance_and_mean(layers, devices):
    x = layers["a"]
    m = jn.comoments(x, devices=devices)
    assert m.accumulated_in == np.float64
    assert_float64(m.mean, m.cross, m.covariance())
    bound = tolerance(TOKENS, np.float64)
    assert_close(m.covariance(), np.cov(centred(x), rowvar=False), bound, covariance_scale(x), "covariance")
    assert_close(m.mean, exact_mean(x), 1.0, bound * x.std(axis=0) + tolerance(1, np.float64) * np.abs(x.mean(0)))


@pytest.mark.parametrize("method, devices", [("maxcorr", None), ("mincorr", None), ("maxcorr", 1)])
def test_cross_model_scores_and_partners(layers, method, devices):
    models = [layers["a"], layers["b"], layers["c"]]
    r = getattr(jn, method)(models, devices=devices)
    best, rho, unit = cross_model_reference(models)
    assert_float64(r.scores, r.score_matrix, r.partner_rho)
    bound = tolerance(TOKENS, np.float64)
    assert_close(r.score_matrix, best, bound, what="best |rho|")
    assert_close(r.partner_rho, rho, bound, what="partner rho")
    np.testing.assert_array_equal(r.partner_unit, unit)
    assert_close(r.scores, (np.nanmax if method == "maxcorr" else np.nanmin)(best, axis=1), bound, what="scores")


def test_linreg_r2(layers):
    a, c = layers["a"], layers["c"]
    r = jn.linreg_ranking({"a": a, "c": c})
    assert_float64(r.scores)
    expected = np.concatenate([r2_reference(c, a), r2_reference(a, c)])
    bound = tolerance(TOKENS, np.float64, condition=correlation_condition(a, c))
    assert_close(r.scores, expected, bound, what="R^2")


def test_cca_svcca_pwcca(layers):
    a, b = layers["a"], layers["b"]
    bound = tolerance(TOKENS, np.float64, condition=correlation_condition(a, b))
    r = jn.cca(a, b)
    assert_float64(r.rho, r.directions_x)
    assert_close(r.rho, cca_reference(a, b), bound, what="cca rho")
    s = jn.svcca(a, b, keep=0.99)
    assert_close(s.rho, svcca_reference(a, b, 0.99), bound, what="svcca rho")
    assert_close(jn.pwcca(a, b).value, pwcca_reference(a, b), bound, what="pwcca")


def test_direction_ranking_rho(layers):
    a, b = layers["a"], layers["b"]
    d = jn.direction_ranking(a, b, method="cca")
    assert_float64(d.rho, d.weights, d.patterns)
    bound = tolerance(TOKENS, np.float64, condition=correlation_condition(a, b))
    assert_close(d.rho, cca_reference(a, b), bound, what="direction rho")


@pytest.mark.parametrize("debiased", [False, True])
def test_cka(layers, debiased):
    a, c = layers["a"], layers["c"]
    value = jn.cka(a, c, debiased=debiased).value
    expected = (debiased_cka_reference if debiased else cka_reference)(a, c)
    assert_close(value, expected, tolerance(TOKENS, np.float64), what="cka")


@pytest.mark.parametrize("metric", ["cka", "cca"])
def test_similarity_matrix(layers, metric):
    m = jn.similarity_matrix(layers, metric=metric)
    assert_float64(m.values)
    names = list(layers)
    if metric == "cka":
        expected = [[cka_reference(layers[i], layers[j]) for j in names] for i in names]
    else:
        expected = [[cca_reference(layers[i], layers[j]).mean() for j in names] for i in names]
    bound = tolerance(TOKENS, np.float64, condition=correlation_condition(*layers.values()))
    assert_close(m.values, np.array(expected), bound, what=f"{metric} matrix")


def test_match_neurons_correlation(layers):
    a, b = layers["a"], layers["b"]
    m = jn.match_neurons(a, b)
    assert_float64(m.correlation, m.rho)
    expected = np.corrcoef(centred(a), centred(b), rowvar=False)[:6, 6:]
    assert_close(m.correlation, expected, tolerance(TOKENS, np.float64), what="correlation")


def test_sparse_prediction_runs_in_float64(layers):
    p = jn.sparse_prediction(layers["a"], layers["b"], penalties=[0.1, 0.01])
    assert_float64(p.coef, p.r2, p.kkt)


@pytest.mark.parametrize("offset", [0.0, 1e4, 1e6])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_probeless_class_means(rng, offset, dtype):
    labels = rng.integers(0, 4, 20000)
    x = (rng.normal(size=(20000, 5)) * [0.5, 1.0, 2.0, 4.0, 8.0] + labels[:, None] + offset).astype(dtype)
    classes, counts, means = class_means(x, labels, chunk_tokens=4096)
    assert_float64(means)
    assert_class_means(means, x, labels, dtype)
    assert_class_means(jn.probeless(x, labels).means, x, labels, dtype)


def test_information_class_means(layers, rng):
    x = np.hstack([layers["a"], layers["c"]])
    labels = rng.integers(0, 3, TOKENS)
    info = jn.neuron_information(x, labels)
    assert_float64(info.class_means)
    assert_class_means(info.class_means.T, x, labels, np.float64)


def test_checkpointed_float64_pass_resumes(layers, tmp_path):
    models = [layers["a"], layers["b"]]
    first = jn.maxcorr(models, checkpoint=tmp_path, chunk_tokens=500)
    again = jn.maxcorr(models, checkpoint=tmp_path, chunk_tokens=500)
    np.testing.assert_array_equal(first.score_matrix, again.score_matrix)
    jn.maxcorr([m.astype(np.float32) for m in models], checkpoint=tmp_path, chunk_tokens=500)
    assert len(list(tmp_path.glob("stats-*.npz"))) == 2  # the dtype is part of the checkpoint's key


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_pass_runs_in_the_input_dtype_and_only_there(layers, dtype):
    models = [layers["a"].astype(dtype), layers["b"].astype(dtype)]
    seen = []
    jn.maxcorr(models, chunk_tokens=1000, on_chunk=lambda rows: seen.append(jax.config.jax_enable_x64))
    assert seen == [dtype == np.float64] * 3
    blocks = stream_blocks([("a", models[0]), ("b", models[1])], [(0, 0), (0, 1), (1, 1)])
    assert blocks.accumulated_in == dtype
    assert jn.comoments(models[0]).accumulated_in == dtype


def test_float32_input_keeps_float32_accuracy(layers):
    x = layers["a"].astype(np.float32)
    m = jn.comoments(x)
    assert m.accumulated_in == np.float32
    assert_close(m.covariance(), np.cov(centred(x), rowvar=False), tolerance(TOKENS, np.float32),
                 covariance_scale(x), "float32 covariance")


def test_no_float64_platform_warns_once_and_computes_float32(layers, monkeypatch):
    monkeypatch.setattr(precision, "default_platform", lambda: "tpu")
    monkeypatch.setattr(precision, "_warned", False)
    models = [layers["a"], layers["b"]]
    with pytest.warns(jn.Float64UnavailableWarning, match="float32"):
        r = jn.maxcorr(models)
    jn.maxcorr(models)  # no second warning (warnings are errors in these tests)
    best, _, _ = cross_model_reference(models)
    assert_close(r.score_matrix, best, tolerance(TOKENS, np.float32), what="best |rho| in float32")
    assert jn.comoments(models[0]).accumulated_in == np.float32


def test_cli_float64_leaves_the_global_flag_off(layers, tmp_path, capsys):
    models = [layers["a"], layers["b"]]
    for name, x in zip("ab", models):
        np.save(tmp_path / f"{name}.npy", x)
    out = tmp_path / "out"
    args = ["maxcorr", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--dtype", "float64", "--no-plot"]
    assert main([*args, "--out", str(out)]) == 0
    assert not jax.config.jax_enable_x64
    score_matrix = np.array(json.loads((out / "maxcorr.json").read_text())["score_matrix"], np.float64)
    best, _, _ = cross_model_reference(models)
    assert_close(score_matrix, best, tolerance(TOKENS, np.float64), what="CLI score matrix")
