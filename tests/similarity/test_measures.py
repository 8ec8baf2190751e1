"""CCA, SVCCA, PWCCA, CKA and similarity matrices against independent float64 references."""

import json
import warnings

import jax
import numpy as np
import pytest
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st

import jneuron as jn
from jneuron.kernels import cca as kcca
from jneuron.kernels import hsic as khsic
from jneuron.report.figures import similarity_figure
from jneuron.similarity import measures as similarity
from jneuron.streaming import blocks
from tests.reference import (
    cca_bound,
    cca_condition,
    cka_bound,
    cka_condition,
    floored_condition,
    kept_components,
    pca_condition,
    pwcca_bound,
    rho_bound,
    svcca_bound,
    svcca_condition,
)
from tests.tolerance import assert_close, tolerance

TOKENS, DX, DY = 600, 7, 5
C = 256  # one chunk shape for every test, so the streamed update compiles once per width


# ---------------------------------------------------------------- independent float64 references
def _basis(x, rtol=1e-9):
    """Orthonormal basis of the centred columns' span, by pivoted QR (rank from |R_ii|; ``rtol`` is a rank
    threshold of the reference, not a comparison tolerance)."""
    xc = np.asarray(x, np.float64) - np.asarray(x, np.float64).mean(0)
    q, r, _ = scipy.linalg.qr(xc, mode="economic", pivoting=True)
    diag = np.abs(np.diag(r))
    rank = int(np.sum(diag > rtol * diag[0])) if diag.size and diag[0] > 0 else 0
    return q[:, :rank], xc


def ref_cca(x, y, rtol=1e-9):
    qx, _ = _basis(x, rtol)
    qy, _ = _basis(y, rtol)
    return np.linalg.svd(qx.T @ qy, compute_uv=False)[: min(qx.shape[1], qy.shape[1])]


def ref_svcca(x, y, keep):
    def reduce(a):
        ac = np.asarray(a, np.float64) - np.asarray(a, np.float64).mean(0)
        values, vectors = np.linalg.eigh(np.cov(ac.T))
        values, vectors = values[::-1], vectors[:, ::-1]
        share = np.cumsum(values) / values.sum()
        k = keep if isinstance(keep, int) else int(np.argmax(share >= keep - 1e-12)) + 1  # float64 share ties
        return ac @ vectors[:, :k]

    return ref_cca(reduce(x), reduce(y))


def ref_pwcca(x, y):
    qx, xc = _basis(x)
    qy, _ = _basis(y)
    u, s, _ = np.linalg.svd(qx.T @ qy)
    m = min(qx.shape[1], qy.shape[1])
    h = qx @ u[:, :m]  # unit-norm canonical variates of x
    alpha = np.abs(h.T @ xc).sum(1)
    return float(alpha @ s[:m] / alpha.sum())


def _hsic(k, l, debiased):
    n = k.shape[0]
    if not debiased:
        h = np.eye(n) - 1.0 / n
        return np.trace(k @ h @ l @ h)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))


def ref_cka(x, y, debiased=False):
    """CKA by its definition: HSIC of the token-by-token linear kernels (Gram matrices)."""
    x = np.asarray(x, np.float64) - np.asarray(x, np.float64).mean(0)
    y = np.asarray(y, np.float64) - np.asarray(y, np.float64).mean(0)
    k, l = x @ x.T, y @ y.T
    return _hsic(k, l, debiased) / np.sqrt(_hsic(k, k, debiased) * _hsic(l, l, debiased))


# ---------------------------------------------------------------- error bounds (tests/reference.py)
def assert_rho_close(actual, expected, bound, what="canonical correlations"):
    """Canonical correlations within ``bound`` plus what the ``eigh`` of their Gram matrix costs near 0."""
    expected = np.asarray(expected, np.float64)
    assert_close(actual, expected, 1.0, rho_bound(bound, expected, max(DX, DY, len(expected))), what)


def _pair(rng, tokens=TOKENS, dx=DX, dy=DY, offset=0.0, dtype=np.float32):
    z = rng.normal(size=(tokens, 4))
    x = z @ rng.normal(size=(4, dx)) + rng.normal(size=(tokens, dx)) + offset
    y = np.tanh(z @ rng.normal(size=(4, dy))) + 0.5 * rng.normal(size=(tokens, dy)) - offset
    return x.astype(dtype), y.astype(dtype)


# ---------------------------------------------------------------- accuracy on random data
@pytest.mark.parametrize("devices", [None, 2])  # None: unsharded; 2: tokens over the 2 devices of every test process
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_measures_match_references(rng, offset, devices):
    x, y = _pair(rng, offset=offset)
    r = jn.cca(x, y, chunk_tokens=C, devices=devices)
    ref, bound = ref_cca(x, y), cca_bound(x, y)
    assert_rho_close(r.rho, ref, bound)
    assert r.kept_x == DX and r.kept_y == DY and r.tokens == TOKENS
    worst = rho_bound(bound, ref, DX).max()
    assert_close(r.mean, ref.mean(), worst, what="mean rho")
    assert_close(r.r2, np.mean(ref**2), 2 * worst, what="mean rho^2")  # |d rho^2| = 2 rho |d rho|
    for keep in (0.9, 3):
        s = jn.svcca(x, y, keep=keep, chunk_tokens=C, devices=devices)
        assert_rho_close(s.rho, ref_svcca(x, y, keep), svcca_bound(x, y, s.kept_x, s.kept_y), f"svcca keep={keep}")
    pwcca = jn.pwcca(x, y, chunk_tokens=C, devices=devices).value
    assert_close(pwcca, ref_pwcca(x, y), pwcca_bound(x, y), what="pwcca")
    pwcca_y = jn.pwcca(x, y, side="y", chunk_tokens=C, devices=devices).value
    assert_close(pwcca_y, ref_pwcca(y, x), pwcca_bound(x, y), what="pwcca y")
    assert_close(jn.cka(x, y, chunk_tokens=C, devices=devices).value, ref_cka(x, y), cka_bound(x, y), what="cka")
    debiased = jn.cka(x, y, debiased=True, chunk_tokens=C, devices=devices).value
    assert_close(debiased, ref_cka(x, y, debiased=True), cka_bound(x, y, True), what="debiased cka")


def test_float64_inputs_with_x64_are_exact(rng):
    x, y = _pair(rng, offset=1e3, dtype=np.float64)
    with jax.enable_x64(True):
        r = jn.cca(x, y, chunk_tokens=C)
        d = jn.cka(x, y, debiased=True, chunk_tokens=C).value
    assert_rho_close(r.rho, ref_cca(x, y), cca_bound(x, y))  # float64 bounds: working_dtype is float64
    assert_close(d, ref_cka(x, y, debiased=True), cka_bound(x, y, True), what="debiased cka")


def test_directions_give_canonical_variates(rng):
    x, y = _pair(rng, offset=1e3)
    r = jn.cca(x, y, chunk_tokens=C)
    h = (x.astype(np.float64) - r.mean_x) @ r.directions_x
    g = (y.astype(np.float64) - r.mean_y) @ r.directions_y
    # the directions whiten the float32 co-moments: the same amplified rounding as the correlations
    bound = cca_bound(x, y)
    assert_close(np.cov(h.T), np.eye(DY), bound, what="covariance of x's canonical variates")
    assert_close(np.cov(g.T), np.eye(DY), bound, what="covariance of y's canonical variates")
    assert_close(np.diag(np.cov(h.T, g.T)[:DY, DY:]), r.rho, 2 * bound, what="their correlations")  # both sides
    assert r.directions_x.shape == (DX, DY) and r.directions_y.shape == (DY, DY)


def test_directions_are_computed_when_read_and_survive_pickling(rng):
    import pickle

    x, y = _pair(rng, offset=1e3)
    r = jn.cca(x, y, chunk_tokens=C)
    assert "_directions" not in vars(r)  # nothing solved yet
    copy = pickle.loads(pickle.dumps(r))
    np.testing.assert_array_equal(copy.directions_x, r.directions_x)
    assert "_directions" in vars(r) and r.directions_x is r.directions_x  # solved once, kept
    assert json.loads(json.dumps(r.to_dict(directions=True)))["directions_y"] == r.directions_y.tolist()


def test_planted_shared_subspace_shows_k_correlations_near_one(rng):
    k = 3
    x = rng.normal(size=(TOKENS, DX)).astype(np.float32)
    y = (x[:, :k] @ rng.normal(size=(k, DY)) + 0.01 * rng.normal(size=(TOKENS, DY))).astype(np.float32)
    rho = jn.cca(x, y, chunk_tokens=C).rho
    assert np.all(rho[:k] > 0.999) and np.all(rho[k:] < 0.2)  # statistics of the planted data, not rounding


def test_streamed_chunks_equal_arrays(rng):
    x, y = _pair(rng, offset=1e3)
    whole = jn.cca(x, y, chunk_tokens=C)
    streamed = jn.cca(iter(np.split(x, 6)), (c for c in np.split(y, 6)), chunk_tokens=C)
    assert_rho_close(streamed.rho, whole.rho, 2 * cca_bound(x, y), "streamed vs whole")  # two float32 runs
    assert_close(jn.cka(np.split(x, 6), np.split(y, 6), debiased=True, chunk_tokens=C).value,
                 ref_cka(x, y, debiased=True), cka_bound(x, y, True), what="streamed debiased cka")


# ---------------------------------------------------------------- SVCCA's keep rule
def test_svcca_keeps_smallest_k_reaching_the_share_of_variance(rng):
    q = np.linalg.qr(rng.normal(size=(DX, DX)))[0]
    white = np.linalg.qr(rng.normal(size=(TOKENS, DX)) - rng.normal(size=(TOKENS, DX)).mean(0))[0]
    white = np.linalg.qr(white - white.mean(0))[0] * np.sqrt(TOKENS - 1)  # centred, orthogonal, unit variance
    variances = np.array([50.0, 30.0, 15.0, 4.0, 0.6, 0.3, 0.1])  # shares .5 .8 .95 .99 .996 .999 1
    x = (white @ np.diag(np.sqrt(variances)) @ q).astype(np.float32)
    # the construction, rounded to float32: each value moved by eps of itself, so (Weyl) each eigenvalue by
    # at most that share of the trace
    assert_close(np.linalg.eigvalsh(np.cov(x.T.astype(np.float64)))[::-1], variances, tolerance(TOKENS),
                 variances.sum(), "variances of the constructed layer")
    for keep, expected in ((0.45, 1), (0.79, 2), (0.9, 3), (0.97, 4), (0.995, 5), (0.9995, 7), (1.0, 7)):
        assert jn.svcca(x, x, keep=keep, chunk_tokens=C).kept_x == expected, keep
    assert jn.svcca(x, x, keep=2, chunk_tokens=C).kept_x == 2
    assert jn.svcca(x, x, keep=99, chunk_tokens=C).kept_x == DX


def test_keep_count_kernel_uses_variances_not_singular_values():
    values = np.array([81.0, 9.0, 1.0])  # singular values 9, 3, 1: a sum-of-s rule would keep 2 at 0.85
    assert int(kcca.keep_count(values, 0.85)) == 1 and int(kcca.keep_count(values, 0.99)) == 3
    assert int(kcca.keep_count(values, 90 / 91)) == 2  # reaching the share exactly is enough


# ---------------------------------------------------------------- invariances (hypothesis)
_seeds = st.integers(0, 2**31 - 1)


def _magnitude(*arrays):
    """The largest |mean| / sd over the columns: how far the values sit from their mean, in spreads."""
    return max(float(np.max(np.abs(a.mean(0)) / a.std(0))) for a in arrays)


def _well_conditioned(r, d):
    u, _, vt = np.linalg.svd(r.normal(size=(d, d)))
    return u @ np.diag(np.exp(r.uniform(-1, 1, d))) @ vt


@given(_seeds)
def test_cca_invariant_under_invertible_maps_and_symmetric(seed):
    r = np.random.default_rng(seed)
    x, y = _pair(r, dtype=np.float64)  # float64 in: computed in float64
    base = jn.cca(x, y, chunk_tokens=C).rho
    xm, ym = x @ _well_conditioned(r, DX) + r.normal(size=DX), y @ _well_conditioned(r, DY)
    mapped = jn.cca(xm, ym, chunk_tokens=C)
    # each run within its bound; the maps themselves round each value once more (DX-term float64 products)
    bound = cca_bound(x, y) + cca_bound(xm, ym)
    inputs = tolerance(DX, np.float64, condition=floored_condition(xm, ym), magnitude=_magnitude(xm, ym))
    assert_rho_close(mapped.rho, base, bound + inputs, "cca after invertible maps")
    assert_rho_close(jn.cca(y, x, chunk_tokens=C).rho, base, 2 * cca_bound(x, y), "cca with the sides swapped")
    xf, yf = x @ _well_conditioned(r, DX), y @ _well_conditioned(r, DY)
    full = jn.svcca(xf, yf, keep=DX, chunk_tokens=C)
    inputs = tolerance(DX, np.float64, condition=floored_condition(xf, yf))
    bound = cca_bound(x, y) + svcca_bound(xf, yf, DX, DY) + inputs
    assert_rho_close(full.rho, base, bound, "svcca keeping every direction")  # keeping every direction, SVCCA is CCA


@given(_seeds, st.floats(0.01, 100.0))
def test_svcca_and_cka_invariant_under_orthogonal_maps_and_isotropic_scaling(seed, scale):
    r = np.random.default_rng(seed)
    x, y = _pair(r, dtype=np.float64)
    qx = np.linalg.qr(r.normal(size=(DX, DX)))[0]
    qy = np.linalg.qr(r.normal(size=(DY, DY)))[0]
    s0 = jn.svcca(x, y, keep=0.95, chunk_tokens=C)
    x1, y1 = scale * x @ qx, y @ qy - 3.0
    s1 = jn.svcca(x1, y1, keep=0.95, chunk_tokens=C)
    assert (s0.kept_x, s0.kept_y) == (s1.kept_x, s1.kept_y)  # exact: the same count of components
    # float64 in: float64 arithmetic. Each run within its bound, and the maps round each value once more
    # (DX-term float64 products, and the shift)
    bound = svcca_bound(x, y, s0.kept_x, s0.kept_y) + svcca_bound(x1, y1, s1.kept_x, s1.kept_y)
    inputs = tolerance(DX, np.float64, condition=max(pca_condition(x1, s1.kept_x), pca_condition(y1, s1.kept_y)),
                       magnitude=_magnitude(x1, y1))
    assert_rho_close(s1.rho, s0.rho, bound + inputs, "svcca after orthogonal maps")
    for debiased in (False, True):
        c0 = jn.cka(x, y, debiased=debiased, chunk_tokens=C).value
        y2 = y @ qy + 1.0
        mapped = jn.cka(x1, y2, debiased=debiased, chunk_tokens=C).value
        bound = cka_bound(x, y, debiased) + cka_bound(x1, y2, debiased)
        inputs = tolerance(DX, np.float64, condition=cka_condition(x1, y2, debiased), magnitude=_magnitude(x1, y2))
        assert_close(mapped, c0, bound + inputs, what=f"cka (debiased={debiased}) after orthogonal maps")
        assert_close(jn.cka(y, x, debiased=debiased, chunk_tokens=C).value, c0, 2 * cka_bound(x, y, debiased),
                     what=f"cka (debiased={debiased}) with the sides swapped")
    swapped = jn.svcca(y, x, keep=0.95, chunk_tokens=C)
    bound = svcca_bound(x, y, s0.kept_x, s0.kept_y) + svcca_bound(y, x, swapped.kept_x, swapped.kept_y)
    assert_close(swapped.mean, s0.mean, rho_bound(bound, s0.rho, DX).max(), what="svcca with the sides swapped")


# ---------------------------------------------------------------- degenerate inputs
def test_rank_deficient_layer_is_whitened_with_a_floor(rng):
    z = rng.normal(size=(2000, 40))
    x = (z @ rng.normal(size=(40, 64)) + 1e3).astype(np.float32)  # 64 neurons of rank 40
    y = (np.tanh(z[:, :10]) + 0.1 * rng.normal(size=(2000, 10))).astype(np.float32)
    r = jn.cca(x, y, chunk_tokens=C)
    assert r.kept_x == 40 and np.all(np.isfinite(r.rho)) and np.all(np.isfinite(r.directions_x))
    # float32 rounding of the 1e3 offset adds noise directions at ~1e-10 of the variance: the
    # reference drops them too (|R_ii| is a standard deviation, so 1e-3 is an eigenvalue floor of 1e-6)
    assert_rho_close(r.rho, ref_cca(x, y, rtol=1e-3), cca_bound(x, y))
    s = jn.svcca(x, y, keep=1.0, chunk_tokens=C)
    assert s.kept_x == 40 and np.all(np.isfinite(s.rho))
    assert np.isfinite(jn.pwcca(x, y, chunk_tokens=C).value)
    assert np.isfinite(jn.pwcca(y, x, chunk_tokens=C).value)


def test_duplicated_and_dead_neurons(rng):
    x, y = _pair(rng, offset=1e3)
    x = np.hstack([x, x[:, :2], np.full((TOKENS, 1), 7.0, np.float32)])  # 2 duplicates, 1 dead
    with pytest.warns(jn.DeadNeuronWarning, match="cca: 1 constant neuron.*: x/9$"):
        r = jn.cca(x, y, chunk_tokens=C)
    assert r.kept_x == DX and np.all(np.isfinite(r.rho))
    assert_rho_close(r.rho, ref_cca(x[:, :DX], y), cca_bound(x, y))  # floored: duplicates and the dead unit drop
    assert np.all(r.directions_x[-1] == 0)  # the dead neuron gets weight 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jn.DeadNeuronWarning)
        assert_close(jn.cka(x, y, chunk_tokens=C).value, ref_cka(x[:, :-1], y), cka_bound(x[:, :-1], y), what="cka")
        p = jn.pwcca(x, y, chunk_tokens=C)
        assert np.isfinite(p.value)  # weights normalised to sum 1: one rounding per weight summed
        assert_close(p.weights_x.sum(), 1.0, tolerance(len(p.weights_x), p.weights_x.dtype), what="sum of weights")
        dead = np.full((TOKENS, DY), 2.0, np.float32)
        r = jn.cca(x, dead, chunk_tokens=C)
        assert r.kept_y == 0 and len(r.rho) == 0 and r.mean == 0.0
        assert jn.cka(x, dead, chunk_tokens=C).value == 0.0


def test_fewer_tokens_than_neurons_warns_and_stays_finite(rng):
    x, y = _pair(rng, tokens=30, dx=40, dy=35)
    with pytest.warns(jn.FewTokensWarning, match="30 tokens"):
        r = jn.cca(x, y, chunk_tokens=C)
    assert np.all(np.isfinite(r.rho)) and r.kept_x <= 29 and np.all(r.rho > 0.999)  # overfits, as it must
    with pytest.warns(jn.FewTokensWarning):
        s = jn.svcca(x, y, chunk_tokens=C)
    with pytest.warns(jn.FewTokensWarning):
        p = jn.pwcca(x, y, chunk_tokens=C)
    with pytest.warns(jn.FewTokensWarning):
        c = jn.cka(x, y, debiased=True, chunk_tokens=C)
    assert np.isfinite(s.mean) and np.isfinite(p.value) and np.isfinite(c.value)
    assert_close(c.value, ref_cka(x, y, debiased=True), cka_bound(x, y, True), what="debiased cka")


def test_bad_input_raises_clear_errors(rng):
    x, y = _pair(rng)
    with pytest.raises(jn.JNeuronError, match="token counts differ"):
        jn.cca(x, y[:-1], chunk_tokens=C)
    bad = x.copy()
    bad[17, 3] = np.nan
    with pytest.raises(jn.JNeuronError, match="'x'.*row 18, neuron 3"):
        jn.cca(bad, y, chunk_tokens=C)
    with pytest.raises(jn.JNeuronError, match="keep"):
        jn.svcca(x, y, keep=1.5, chunk_tokens=C)
    with pytest.raises(jn.JNeuronError, match="keep"):
        jn.svcca(x, y, keep=0, chunk_tokens=C)
    with pytest.raises(jn.JNeuronError, match="side"):
        jn.pwcca(x, y, side="z", chunk_tokens=C)
    with pytest.raises(jn.JNeuronError, match="every input as an array"):
        jn.cca(x, iter([y]), chunk_tokens=C)
    with pytest.raises(jn.JNeuronError, match="at least 4 tokens"):
        jn.cka(x[:3], y[:3], debiased=True, chunk_tokens=C)
    with pytest.raises(jn.JNeuronError, match="metric"):
        jn.similarity_matrix([x, y], metric="rsa", chunk_tokens=C)


# ---------------------------------------------------------------- kernels: jit and float64 host agree
def _direction_bound(rho, condition):
    """Two float64 computations of canonical directions (per column, relative to its largest weight): the
    whitening's amplification, and singular vectors of the whitened cross-covariance, taken from ``eigh``
    of its Gram matrix, turn by the rounding over the gap between squared correlations (Davis-Kahan)."""
    squares = np.concatenate([np.asarray(rho, np.float64) ** 2, [0.0]])
    gap = np.min(np.abs(np.diff(squares)))
    return 2 * tolerance(DX, np.float64, condition=condition / max(gap, np.finfo(np.float64).eps))


def test_kernels_jit_agree_with_host_float64(rng):
    x, y = _pair(rng)
    c = np.cov(np.hstack([x, y]).astype(np.float64).T)
    cxx, cyy, cxy = c[:DX, :DX], c[DX:, DX:], c[:DX, DX:]
    host = kcca.cca(cxx, cyy, cxy, 1e-10)
    with jax.enable_x64(True):
        jitted = jax.jit(kcca.cca, static_argnames=("rtol", "keep_x", "keep_y", "rescale"))(
            jax.numpy.asarray(cxx), jax.numpy.asarray(cyy), jax.numpy.asarray(cxy), rtol=1e-10)
        batched = jax.vmap(kcca.linear_cka)(*(jax.numpy.stack([m, m]) for m in (cxx, cyy, cxy)))
    # float64 factorizations of the same DX x DY blocks, jitted and on the host: two computations whose
    # longest sums run over the neurons, amplified by the whitening
    condition = floored_condition(x, y)
    bound = 2 * tolerance(DX, np.float64, condition=condition)
    assert_rho_close(np.asarray(jitted.rho), host.rho, bound, "jitted vs host")
    assert_close(np.abs(np.asarray(jitted.a)), np.abs(host.a), _direction_bound(host.rho, condition),
                 np.abs(host.a).max(axis=0), "directions")
    assert_close(np.asarray(batched), np.full(2, kcca.linear_cka(cxx, cyy, cxy)),
                 2 * tolerance(DX, np.float64, condition=cka_condition(x, y)), what="vmapped cka")


# ---------------------------------------------------------------- similarity matrices and the heatmap
MATRIX_KEEP = 0.9  # at 0.95, x's 5th and 6th variances differ by 2e-4 of the trace: SVCCA's cut is ill-posed


def _metric_condition(metric, a, b):
    """How much one similarity value between layers ``a`` and ``b`` amplifies the co-moments' rounding."""
    if metric in ("cka", "cka_debiased"):
        return cka_condition(a, b, metric == "cka_debiased")
    if metric == "pwcca":
        return 2 * cca_condition(a, b)  # see pwcca_bound
    if metric == "svcca":
        return svcca_condition(a, b, kept_components(a, MATRIX_KEEP), kept_components(b, MATRIX_KEEP))
    return cca_condition(a, b)


def _metric_bound(metric, a, b, terms=TOKENS, dtype=np.float32):
    """The bound of one similarity value (a mean of canonical correlations, for CCA and SVCCA: its worst
    term, with what ``eigh`` of their squares costs near 0)."""
    bound = tolerance(terms, dtype, condition=_metric_condition(metric, a, b))
    if metric in ("cca", "svcca"):
        bound = float(rho_bound(bound, ref_cca(a, b), max(a.shape[1], b.shape[1])).max())
    return bound


def test_several_metrics_come_from_one_pass(rng):
    """similarity_matrices reads the data once and gives each metric the matrix similarity_matrix gives."""
    x, y = _pair(rng, offset=1e3)
    layers = {"x": x, "y": y, "w": np.tanh((y - y.mean(0)) @ rng.normal(size=(DY, 6))).astype(np.float32)}
    chunks = []
    metrics = ("svcca", "cca", "pwcca", "cka", "cka_debiased")
    together = jn.similarity_matrices(layers, metrics=metrics, keep=MATRIX_KEEP, chunk_tokens=C, on_chunk=chunks.append)
    assert list(together) == list(metrics) and sum(chunks) == TOKENS  # one pass over the tokens
    for metric in metrics:
        alone = jn.similarity_matrix(layers, metric=metric, keep=MATRIX_KEEP, chunk_tokens=C)
        np.testing.assert_array_equal(together[metric].values, alone.values)  # the same blocks, the same steps
        np.testing.assert_array_equal(together[metric].kept_a, alone.kept_a)
    with pytest.raises(jn.JNeuronError, match="unknown similarity metric 'rsa'"):
        jn.similarity_matrices(layers, metrics=["cka", "rsa"], chunk_tokens=C)


def test_similarity_matrix_matches_pairwise_calls(rng, tmp_path):
    x, y = _pair(rng, offset=1e3)
    w = np.tanh((y - y.mean(0)) @ rng.normal(size=(DY, 6))).astype(np.float32)
    layers = {"x": x, "y": y, "w": w}
    for metric in ("svcca", "cca", "pwcca", "cka", "cka_debiased"):
        m = jn.similarity_matrix(layers, metric=metric, keep=MATRIX_KEEP, chunk_tokens=C)
        assert m.values.shape == (3, 3) and m.names_a == ("x", "y", "w") and m.tokens == TOKENS
        single = {"svcca": lambda a, b: ref_svcca(a, b, MATRIX_KEEP).mean(), "cca": lambda a, b: ref_cca(a, b).mean(),
                  "pwcca": ref_pwcca, "cka": ref_cka, "cka_debiased": lambda a, b: ref_cka(a, b, True)}[metric]
        for (i, j), (a, b) in (((0, 1), (x, y)), ((2, 0), (w, x))):
            assert_close(m.values[i, j], single(a, b), _metric_bound(metric, a, b), what=f"{metric}[{i}, {j}]")
        if metric != "pwcca":
            # both halves from the same float32 co-moments, each finished in float64 (d x d factorizations)
            for i, j in ((0, 1), (0, 2), (1, 2)):
                a, b = (x, y, w)[i], (x, y, w)[j]
                bound = 2 * _metric_bound(metric, a, b, terms=max(DX, DY, 6), dtype=np.float64)
                assert_close(m.values[i, j], m.values[j, i], bound, what=f"{metric} symmetry [{i}, {j}]")
    cross = jn.similarity_matrix([x, y], {"w": w, "x": x}, metric="cka", chunk_tokens=C)
    assert cross.values.shape == (2, 2) and cross.names_b == ("w", "x")
    assert_close(cross.values[0, 1], 1.0, cka_bound(x, x), what="cka of a layer with itself")
    assert_close(cross.values[1, 0], jn.cka(y, w, chunk_tokens=C).value, 2 * cka_bound(y, w), what="cka matrix vs call")
    streamed = jn.similarity_matrix({"x": np.split(x, 3), "y": iter(np.split(y, 3))}, metric="cca", chunk_tokens=C)
    whole = jn.cca(x, y, chunk_tokens=C)
    assert_close(streamed.values[0, 1], whole.mean, rho_bound(2 * cca_bound(x, y), whole.rho, DX).max(),
                 what="streamed cca matrix vs call")  # two float32 computations
    png = tmp_path / "heat.png"
    similarity_figure(cross, png)
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert cross.to_dict()["values"][0][1] == float(cross.values[0, 1])  # the same number exported: exact


def test_blocks_plan_asks_only_needed_tiles():
    tiles, where = blocks._plan([(0, 0), (0, 2), (0, 3), (1, 1)], ((0, 2), (2, 5), (5, 6), (6, 9)))
    assert tiles == (blocks.Tile(0, 2, 0, 2), blocks.Tile(0, 2, 5, 9), blocks.Tile(2, 5, 2, 5))
    assert where[(0, 3)] == (1, 1)


def test_row_norm_moments_shift_formula(rng):
    x = rng.normal(size=(40, 5)) + 3.0
    groups = ((0, 2), (2, 5))
    ref = x[:7].mean(0) + 0.5
    q, u = (np.asarray(a, np.float64) for a in khsic.row_norm_moments(x - ref, 40, groups))
    xc = x - x.mean(0)
    c = xc.T @ xc
    d = x.mean(0) - ref
    for g, h in ((0, 0), (0, 1), (1, 1)):
        (a0, a1), (b0, b1) = groups[g], groups[h]
        got = khsic.centred_row_products(q[g, h], u[g, b0:b1], u[h, a0:a1], c[a0:a1, b0:b1],
                                         np.trace(c[a0:a1, a0:a1]), np.trace(c[b0:b1, b0:b1]), d[a0:a1], d[b0:b1], 40)
        want = np.sum((xc[:, a0:a1] ** 2).sum(1) * (xc[:, b0:b1] ** 2).sum(1))
        # float32 sums over the 40 rows (x64 is off) of products of squared norms about ``ref``; every term
        # of the shift formula is bounded by the sum over rows of (|x - ref| + |mean - ref|)^4-like products
        shifted = x - ref
        norm_g = np.sqrt((shifted[:, a0:a1] ** 2).sum(1)) + np.linalg.norm(d[a0:a1])
        norm_h = np.sqrt((shifted[:, b0:b1] ** 2).sum(1)) + np.linalg.norm(d[b0:b1])
        assert_close(got, want, tolerance(40), np.sum(norm_g**2 * norm_h**2), "centred row products")




def test_similarity_command_writes_json_and_heatmap(rng, tmp_path, capsys):
    from jneuron.cli.main import main

    x, y = _pair(rng)
    np.save(tmp_path / "l0.npy", x)
    np.save(tmp_path / "l1.npy", y)
    out = tmp_path / "out"
    assert main(["similarity", str(tmp_path / "l0.npy"), str(tmp_path / "l1.npy"), "--metric", "cka",
                 "--out", str(out)]) == 0
    data = json.loads((out / "similarity_cka.json").read_text())
    assert data["names_a"] == ["l0", "l1"]
    assert_close(data["values"][0][1], ref_cka(x, y), cka_bound(x, y), what="cka from the command")
    assert (out / "similarity_cka.png").read_bytes()[:4] == b"\x89PNG"
    assert "cka over 600 tokens" in capsys.readouterr().out
    assert main(["similarity", str(tmp_path / "missing.npy"), "--out", str(out)]) == 2


def test_cholesky_fast_path_agrees_with_eigh_whitening(rng):
    x, y = _pair(rng, offset=1e3)
    b = similarity._pair(x, y, C, "cca")
    fast = similarity.prepare_side(b, 0, "cca", None, 1e-6)
    assert fast.whitening.values is None  # well conditioned: Cholesky
    slow = kcca.prepare(b.cov(0, 0), 1e-6)
    other = kcca.prepare(b.cov(1, 1), 1e-6)
    r_fast, r_slow = kcca.correlate(fast, other, b.cov(0, 1)), kcca.correlate(slow, other, b.cov(0, 1))
    # the same co-moments whitened two ways in float64: DX x DX factorizations, amplified by the whitening
    condition = floored_condition(x, y)
    assert_rho_close(r_fast.rho, r_slow.rho, 2 * tolerance(DX, np.float64, condition=condition), "cholesky vs eigh")
    assert_close(r_fast.a, r_slow.a, _direction_bound(r_slow.rho, condition), np.abs(r_slow.a).max(axis=0),
                 "cholesky vs eigh directions")
    z = rng.normal(size=(TOKENS, 3))
    near = np.hstack([z, z[:, :1] + 1e-5 * rng.normal(size=(TOKENS, 1))])  # eigenvalue ~1e-10: eigh path
    nb = similarity._pair(near, y, C, "cca")
    assert similarity.prepare_side(nb, 0, "cca", None, 1e-6).whitening.values is not None
