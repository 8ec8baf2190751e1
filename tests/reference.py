"""Independent float64 numpy references used across the tests, and the error bounds (built on
:mod:`tests.tolerance`) that the tests hold jneuron's results to: conditions of whitened and fitted
quantities, partner choices that may tie within rounding, means, the LASSO."""

from __future__ import annotations

import numpy as np

from tests.tolerance import assert_close, tolerance


def cross_model_reference(models: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best |rho| per (neuron, other model), signed rho and partner unit, from np.corrcoef (float64).

    Constant neurons correlate 0 (np.corrcoef gives NaN there). Own-model entries are NaN / -1.
    """
    x = np.concatenate([np.asarray(m, np.float64) for m in models], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(x, rowvar=False)
    corr = np.nan_to_num(corr, nan=0.0)
    widths = [m.shape[1] for m in models]
    starts = np.cumsum([0] + widths)
    best = np.full((x.shape[1], len(models)), np.nan)
    rho = np.full_like(best, np.nan)
    unit = np.full(best.shape, -1)
    for m in range(len(models)):
        block = corr[:, starts[m] : starts[m + 1]]
        arg = np.argmax(np.abs(block), axis=1)
        best[:, m] = np.abs(block[np.arange(len(block)), arg])
        rho[:, m] = block[np.arange(len(block)), arg]
        unit[:, m] = arg
        own = slice(starts[m], starts[m + 1])
        best[own, m], rho[own, m], unit[own, m] = np.nan, np.nan, -1
    return best, rho, unit


def assert_cov_close(actual: np.ndarray, x: np.ndarray, dtype=np.float32, ddof: int | None = 1) -> None:
    """Covariance (or centred cross-product, with ``ddof=None``) within :func:`tests.tolerance.tolerance`
    of the float64 answer, judged against ``sd_i * sd_j`` (times the token count for cross-products)."""
    x = np.asarray(x, np.float64)
    cov = np.cov(x, rowvar=False, ddof=ddof or 0) * (1 if ddof is not None else len(x))
    scale = np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    assert_close(actual, cov, tolerance(len(x), dtype), scale, "covariance")


def x64():
    """A context in which JAX computes in float64 (jax.enable_x64 on new JAX, experimental on old)."""
    import jax

    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # pragma: no cover - older JAX

    return enable_x64()


# ---------------------------------------------------------------- error-analysis helpers shared by the tests
def working_dtype(*arrays) -> type:
    """The dtype jneuron computes these inputs in on a CPU: float64 where the inputs' common type is float64
    (it follows the caller's dtype), else float32 (half precision is accumulated in float32)."""
    return np.float64 if np.result_type(*(np.asarray(a).dtype for a in arrays)) == np.float64 else np.float32


def floor_of(dtype) -> float:
    """The relative eigenvalue floor jneuron's whitening uses for co-moments accumulated in ``dtype``
    (``jneuron.similarity.measures.RTOL_FLOAT32`` / ``RTOL_FLOAT64``)."""
    return 1e-10 if np.dtype(dtype) == np.float64 else 1e-6


def _correlation_eigenvalues(x, rtol: float) -> np.ndarray:
    """Eigenvalues (descending) of the correlation matrix of ``x``'s non-constant columns, those at or below
    ``rtol`` times the largest dropped (as the library's whitening drops them)."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(0)
    sd = np.sqrt((x * x).mean(0))
    z = x[:, sd > 0] / sd[sd > 0]
    if z.shape[1] == 0:
        return np.ones(1)
    values = np.linalg.eigvalsh(z.T @ z / len(z))[::-1]
    return values[values > rtol * values[0]]


def floored_condition(*arrays, rtol: float = 0.0) -> float:
    """:func:`tests.tolerance.correlation_condition` over the directions a whitening keeps: dead columns and
    eigenvalues at or below ``rtol`` times the largest are dropped by the library (weight 0), so they
    amplify nothing. With ``rtol=0`` and full-rank input it is ``correlation_condition``."""
    worst = 1.0
    for x in arrays:
        values = _correlation_eigenvalues(x, rtol)
        worst = max(worst, float(values[0] / values[-1]))
    return worst


def pca_condition(x, kept: int, rtol: float = 0.0) -> float:
    """How much SVCCA's principal-component step amplifies relative errors ``eps`` of the co-moments (each
    entry off by ``eps * sd_i * sd_j``, so the covariance by at most ``eps * trace`` in norm): the ``kept``
    leading components are rescaled by their variances (``trace / lambda_k``) and their span turns by
    ``trace / (lambda_k - lambda_{k+1})`` (Davis-Kahan)."""
    x = np.asarray(x, np.float64)
    values = np.linalg.eigvalsh(np.cov(x, rowvar=False))[::-1]
    values = values[values > rtol * values[0]]
    kept = min(kept, len(values))
    condition = values.sum() / values[kept - 1]
    if kept < len(values):
        condition += values.sum() / (values[kept - 1] - values[kept])
    return float(condition)


def cka_condition(x, y, debiased: bool = False) -> float:
    """How much linear CKA ``|Cxy|^2 / (|Cxx| |Cyy|)`` (Frobenius norms) amplifies relative errors ``eps`` of
    the co-moments (each entry off by ``eps * sd_i * sd_j``).

    ``|Cxy|^2`` moves by at most ``2 eps |Cxy| sqrt(tr Cxx tr Cyy)`` and ``|Cxx|`` by ``eps tr Cxx``, so CKA
    moves by at most ``eps (2 sqrt(CKA r_x r_y) + CKA (r_x + r_y)) <= 2 eps (r_x + r_y)`` with
    ``r = tr C / |C|`` (between 1 and sqrt(d)). The debiased estimator subtracts bias terms of relative
    size ``tr Cxx tr Cyy / (n |Cxy|^2)`` (sums of non-negative fourth moments, each as accurate as the
    co-moments): their rounding is amplified by that ratio on top.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    tiny = np.finfo(np.float64).tiny
    cxx, cyy = (np.atleast_2d(np.cov(z, rowvar=False)) for z in (x, y))
    cxy = (x - x.mean(0)).T @ (y - y.mean(0)) / (len(x) - 1)
    condition = 2.0 * sum(np.trace(c) / max(np.linalg.norm(c), tiny) for c in (cxx, cyy))
    if debiased:
        condition *= 1.0 + np.trace(cxx) * np.trace(cyy) / (len(x) * max(np.sum(cxy * cxy), tiny))
    return float(condition)


def rho_bound(bound: float, rho, dims: int, dtype=np.float64) -> np.ndarray:
    """``bound`` plus what jneuron's canonical correlations lose by coming from ``eigh`` of the whitened
    cross-covariance's Gram matrix (finished in float64 on the host, or in ``dtype`` under jit): an
    eigenvalue ``rho^2`` off by ``e = tolerance(dims, dtype)`` moves ``rho`` by ``min(e / (2 rho), sqrt(e))``."""
    e = tolerance(dims, dtype)
    rho = np.abs(np.asarray(rho, np.float64))
    return bound + np.minimum(np.sqrt(e), e / np.maximum(2 * rho, np.finfo(np.float64).tiny))


def assert_partners_close(unit, models, bound: float, what: str = "partner unit") -> None:
    """Each chosen partner (``unit[i, m]``, a unit of model ``m``) correlates with neuron ``i`` within twice
    ``bound`` (the error of one computed |rho|) of the best |rho| in model ``m`` (float64 reference):
    partners that tie within rounding may be swapped, any other choice fails. Own-model entries are -1."""
    best, _, expected = cross_model_reference(models)
    x = np.concatenate([np.asarray(m, np.float64) for m in models], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.nan_to_num(np.corrcoef(x, rowvar=False), nan=0.0)
    starts = np.cumsum([0] + [m.shape[1] for m in models])
    unit = np.asarray(unit)
    assert unit.shape == best.shape, f"{what}: shape {unit.shape} != {best.shape}"
    np.testing.assert_array_equal(unit == -1, expected == -1, err_msg=f"{what}: own-model entries")
    rows, cols = np.nonzero(unit >= 0)
    chosen = np.abs(corr[rows, starts[cols] + unit[rows, cols]])
    # the library picks the largest of its estimates, each within ``bound``: the true |rho| it picks can
    # fall short of the best by twice that where two estimates cross
    assert_close(chosen, best[rows, cols], 2 * bound, 1.0, f"{what}: |rho| of the chosen partner vs the best")


def exact_mean(x) -> np.ndarray:
    """Column means in float64 about the first row (the offset is subtracted exactly before summing)."""
    x = np.asarray(x, np.float64)
    return x[0] + (x - x[0]).mean(axis=0)


def mean_scale(x, bound: float) -> np.ndarray:
    """The error allowed in the means of ``x``'s columns: ``bound`` of their spread (jneuron sums residuals
    about a rough mean, so an offset costs nothing: losing digits to it fails), plus one float64 rounding
    of the mean itself."""
    return bound * np.asarray(x, np.float64).std(axis=0) + tolerance(1, np.float64) * np.abs(exact_mean(x))


def assert_mean_close(actual, x, bound: float, what: str = "mean") -> None:
    """Means of ``x``'s columns within :func:`mean_scale` of the float64 answer."""
    assert_close(actual, exact_mean(x), 1.0, mean_scale(x, bound), what)


# ---------------------------------------------------------------- bounds of the similarity measures
def cca_condition(x, y):
    """Canonical correlations amplify the co-moments' rounding by the whitening: the condition of the
    correlation matrices on the directions the library's floor keeps."""
    return floored_condition(x, y, rtol=floor_of(working_dtype(x, y)))


def svcca_condition(x, y, kept_x, kept_y):
    """SVCCA: as CCA, but whitening the leading principal components of the covariances (not correlations)."""
    rtol = floor_of(working_dtype(x, y))
    return max(pca_condition(x, kept_x, rtol), pca_condition(y, kept_y, rtol))


def cca_bound(x, y):
    """Sums over the tokens in the working dtype, amplified by the whitening."""
    return tolerance(len(x), working_dtype(x, y), condition=cca_condition(x, y))


def svcca_bound(x, y, kept_x, kept_y):
    return tolerance(len(x), working_dtype(x, y), condition=svcca_condition(x, y, kept_x, kept_y))


def pwcca_bound(x, y):
    """PWCCA is a weighted mean of canonical correlations in [0, 1] with weights from the same whitened
    directions: each of the correlations and the weights carries the CCA bound."""
    return 2 * cca_bound(x, y)


def cka_bound(x, y, debiased=False):
    return tolerance(len(x), working_dtype(x, y), condition=cka_condition(x, y, debiased))


def kept_components(x, keep):
    """SVCCA's count of principal components reaching ``keep`` of the variance (float64, as the reference)."""
    values = np.linalg.eigvalsh(np.cov(np.asarray(x, np.float64), rowvar=False))[::-1]
    share = np.cumsum(values) / values.sum()
    return keep if isinstance(keep, int) else int(np.argmax(share >= keep - 1e-12)) + 1


# ---------------------------------------------------------------- the LASSO from co-moments
def ref_lasso(x, y, penalty, sweeps=300):
    """Coordinate descent on the standardised data itself: (1/2(n-1)) |y - X b|^2 + penalty |b|_1."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    xs = (x - x.mean(0)) / x.std(0, ddof=1)
    ys = (y - y.mean(0)) / y.std(0, ddof=1)
    n = len(x) - 1
    coef = np.zeros((x.shape[1], y.shape[1]))
    for _ in range(sweeps):
        for j in range(x.shape[1]):
            residual = ys - xs @ coef + np.outer(xs[:, j], coef[j])
            rho = xs[:, j] @ residual / n
            coef[j] = np.sign(rho) * np.maximum(np.abs(rho) - penalty, 0) / (xs[:, j] @ xs[:, j] / n)
    return coef


def lasso_kkt(x, y, coef, penalty):
    """The largest violation of the LASSO's optimality conditions for ``coef`` (float64, as the library's)."""
    xs, ys = (np.asarray(a, np.float64) for a in (x, y))
    xs, ys = ((a - a.mean(0)) / a.std(0, ddof=1) for a in (xs, ys))
    gradient = xs.T @ ys / (len(xs) - 1) - xs.T @ xs / (len(xs) - 1) @ coef
    violation = np.where(coef != 0, np.abs(gradient - penalty * np.sign(coef)),
                         np.maximum(np.abs(gradient) - penalty, 0))
    return float(violation.max())


def lasso_bound(x, coef, kkt):
    """Coefficients of the strongly convex LASSO (predictor correlations G, smallest eigenvalue lam): a
    solution whose optimality conditions are violated by at most ``kkt`` (the solvers' stopping point, not
    rounding) lies within ``sqrt(d) kkt / lam`` of the optimum, and the float32 co-moments (entries off by
    ``eps = tolerance(tokens)``) move the optimum by at most ``eps (sqrt(d) + d |b|) / lam``."""
    values = _correlation_eigenvalues(x, 0.0)  # dead predictors are kept at 0: they drop out
    lam, d = values[-1], len(values)
    norm = np.linalg.norm(np.asarray(coef, np.float64), axis=0).max()
    return float(np.sqrt(d) * (kkt + tolerance(len(x)) * (1 + np.sqrt(d) * norm)) / lam)
