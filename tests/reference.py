"""Independent float64 numpy references used across the tests."""

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
