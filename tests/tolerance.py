"""Test tolerances from error analysis, not from one machine's rounding.

Every numerical test bounds its error with :func:`tolerance`; none holds a hand-tuned constant. The
bound is the rounding a correct computation can carry, whatever BLAS kernel (AVX2, AVX-512, a GPU) or
XLA code generation orders its additions:

- A sum or dot product of ``n`` terms in a dtype with machine epsilon ``eps`` is off by at most
  ``gamma * sum |x_i y_i|``. In the worst case ``gamma`` grows like ``n * eps``; with the rounding errors
  of a real computation it stays below ``lam * sqrt(n) * eps / 2`` except with probability
  ``2n exp(-lam^2 / 2)`` (Higham & Mary, SIAM J. Sci. Comput. 2019, Theorem 3.1). ``C = 4`` (so
  ``lam = 8``) puts that at ``n * 2.5e-14``, for any order of the additions.
- For centred data ``sum |x_i y_i| <= n * sd_x * sd_y`` (Cauchy-Schwarz), so a covariance is off by at
  most ``C * sqrt(n) * eps * sd_x * sd_y``: the natural scale of a covariance is ``sd_i * sd_j``, and a
  correlation's is 1.
- The finishing arithmetic (divisions, square roots, merging chunks, small factorizations) adds a few
  roundings more: ``STEPS`` of them.
- A result that amplifies perturbations of its inputs (canonical correlations through a whitening, a
  least-squares fit) is off by ``condition`` times more: pass the condition number.
- Data whose values sit far from their mean (``magnitude``: ``|offset| / sd``) lose
  ``magnitude * eps`` per value where a method rounds the offset; methods that centre exactly do not,
  and their tests leave ``magnitude`` at 0 so that losing digits to an offset fails.

>>> tolerance(10_000) < 1e-4 and tolerance(10_000, np.float64) < 1e-12
True
"""

from __future__ import annotations

import math

import numpy as np

C = 4.0  # multiples of sqrt(n) * eps: lam = 8 in Higham & Mary's unit roundoff terms
STEPS = 16  # roundings of the finishing arithmetic, each at most eps relative


def tolerance(terms: int, dtype=np.float32, *, condition: float = 1.0, magnitude: float = 0.0) -> float:
    """Relative error bound of a result whose longest sum runs over ``terms`` values of ``dtype``.

    Args:
      terms: the length of the longest sum or dot product behind the result (the token count for
        co-moments; the chunk length is shorter, so the token count is safe).
      dtype: the dtype the arithmetic runs in (float32, or float64 where the input was float64).
      condition: how much the result amplifies a relative perturbation of its inputs (1 for co-moments
        and correlations; a condition number for whitened or fitted quantities).
      magnitude: the data's distance from their mean over their spread, where the method may round it.
    """
    eps = float(np.finfo(dtype).eps)
    return C * eps * condition * (math.sqrt(max(terms, 1)) * (1.0 + magnitude) + STEPS)


def assert_close(actual, expected, bound: float, scale=1.0, what: str = "result") -> None:
    """``|actual - expected| <= bound * scale`` everywhere (``scale`` broadcasts: the natural scale of each
    entry); the message names the worst entry and how far past the bound it is."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    limit = bound * np.broadcast_to(np.asarray(scale, np.float64), actual.shape) + 1e-300
    error = np.abs(actual - expected)
    same_nonfinite = ~np.isfinite(expected) & (actual == expected) | (np.isnan(actual) & np.isnan(expected))
    ratio = np.where(same_nonfinite, 0.0, error / limit)
    ratio = np.where(np.isnan(ratio), np.inf, ratio)
    if ratio.size and ratio.max() > 1:
        worst = np.unravel_index(np.argmax(ratio), ratio.shape)
        raise AssertionError(
            f"{what}: error {error[worst]:.3g} at {tuple(int(i) for i in worst)} is {ratio[worst]:.3g}x the "
            f"bound {limit[worst]:.3g} (actual {actual[worst]!r}, expected {expected[worst]!r})")


def covariance_scale(x) -> np.ndarray:
    """``sd_i * sd_j`` of the columns of ``x``: the natural scale of a covariance entry."""
    sd = np.asarray(x, np.float64).std(axis=0)
    return np.outer(sd, sd)


def correlation_condition(*arrays) -> float:
    """The largest condition number of the arrays' column correlation matrices (how much a whitening
    amplifies relative errors in the co-moments)."""
    worst = 1.0
    for x in arrays:
        corr = np.corrcoef(np.asarray(x, np.float64), rowvar=False)
        eig = np.linalg.eigvalsh(np.atleast_2d(corr))
        worst = max(worst, float(eig[-1] / max(eig[0], np.finfo(np.float64).tiny)))
    return worst
