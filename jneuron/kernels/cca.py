"""CCA, SVCCA, PWCCA and linear CKA from covariance blocks.

Every function takes the covariance blocks ``cxx (dx, dx)``, ``cyy (dy, dy)`` and ``cxy (dx, dy)`` of two
centred layers and is written once for two array namespaces: given numpy arrays it runs on the host in
their dtype (the library passes float64, as DESIGN.md asks for small factorizations); given JAX arrays it
is a pure, jit- and vmap-able function (static shapes: dropped directions are masked, never sliced).

Whitening uses ``eigh`` with a *relative* floor: eigenvalues ``<= rtol * largest`` are dropped, so
rank-deficient, duplicated or dead neurons never produce NaN. Canonical correlations come from the SVD of
the whitened cross-covariance (computed by ``eigh``, see :func:`svd`), descending, clipped to ``[0, 1]``;
only the first ``min(kx, ky)`` are valid (``kx``, ``ky`` the kept dimensions), the rest are 0.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(500, 3)); y = x @ rng.normal(size=(3, 4)) + 0.1 * rng.normal(size=(500, 4))
>>> c = np.cov(np.hstack([x, y]).T)
>>> r = cca(c[:3, :3], c[3:, 3:], c[:3, 3:], rtol=1e-10)
>>> np.round(r.rho, 3).tolist(), int(r.kept_x), int(r.kept_y)
([0.999, 0.998, 0.989], 3, 4)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from jneuron.config import HIGHEST


def _xp(*arrays):
    """jax.numpy when any input is a JAX array (or tracer), else numpy."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _mm(xp, a, b):
    return jnp.matmul(a, b, precision=HIGHEST) if xp is jnp else a @ b


class Whitening(NamedTuple):
    """An eigen-decomposition of a covariance with the kept directions scaled to unit variance.

    Attributes:
      basis: ``(d, d)``; column ``i`` is eigenvector ``i`` divided by ``sqrt(value i)``, or 0 if dropped
        (any ``basis`` with ``basis^T cov basis = I`` on the kept directions serves CCA); None for a
        Cholesky whitening, whose basis ``L^-T`` is applied by triangular solves instead.
      vectors: ``(d, d)`` eigenvectors, by descending eigenvalue (None for a Cholesky whitening).
      values: eigenvalues, descending (None for a Cholesky whitening).
      kept: the number of kept directions (a prefix of the descending order).
      lower: the Cholesky factor ``L`` of ``cov = L L^T`` (host numpy only), or None.
    """

    basis: jax.Array | None
    vectors: jax.Array | None
    values: jax.Array | None
    kept: jax.Array
    lower: np.ndarray | None = None


def whitened(w: Whitening, m):
    """``basis^T @ m``: ``m``'s rows taken to the whitened coordinates."""
    if w.lower is not None:
        return scipy.linalg.solve_triangular(w.lower, m, lower=True, check_finite=False)
    return _mm(_xp(w.basis, m), w.basis.T, m)


def unwhitened(w: Whitening, u):
    """``basis @ u``: whitened coordinates ``u`` taken back to the covariance's."""
    if w.lower is not None:
        return scipy.linalg.solve_triangular(w.lower, u, lower=True, trans="T", check_finite=False)
    return _mm(_xp(w.basis, u), w.basis, u)


def keep_count(values, keep):
    """SVCCA's rule: the smallest ``k`` whose leading eigenvalues (variances) reach ``keep`` of the total.

    ``values`` must be descending. An ``int`` ``keep`` is a count (clipped to ``len(values)``).

    >>> int(keep_count(np.array([6.0, 3.0, 0.9, 0.1]), 0.99)), int(keep_count(np.array([6.0, 3.0, 1.0]), 2))
    (3, 2)
    """
    xp = _xp(values)
    d = values.shape[0]
    if isinstance(keep, (int, np.integer)) and not isinstance(keep, bool):
        return xp.asarray(min(int(keep), d))
    positive = xp.maximum(values, 0)
    share = xp.cumsum(positive) / xp.maximum(xp.sum(positive), xp.finfo(values.dtype).tiny)
    return xp.minimum(xp.sum(share < keep) + 1, d)


def whiten(cov, rtol: float, keep=None) -> Whitening:
    """Whiten a covariance: eigenvalues above ``rtol * largest`` kept (and at most the SVCCA ``keep``)."""
    xp = _xp(cov)
    values, vectors = xp.linalg.eigh(cov)
    values, vectors = xp.flip(values, 0), xp.flip(vectors, 1)
    index = xp.arange(values.shape[0])
    mask = values > rtol * xp.maximum(values[0], 0)
    if keep is not None:
        mask = mask & (index < keep_count(values, keep))
    inv_sqrt = xp.where(mask, 1 / xp.sqrt(xp.where(mask, values, 1)), 0)
    return Whitening(vectors * inv_sqrt[None, :], vectors, values, xp.sum(mask))


class CCA(NamedTuple):
    """Canonical correlations and directions (in the coordinates of the given covariance blocks).

    Attributes:
      rho: ``(min(dx, dy),)`` canonical correlations, descending, in ``[0, 1]``; entries from
        ``valid`` on are 0.
      a: ``(dx, min(dx, dy))``; ``x_centred @ a`` are the x canonical variates (unit variance, uncorrelated).
      b: ``(dy, min(dx, dy))``; the same for y; ``corr(x a_i, y b_i) = rho_i``.
      kept_x, kept_y: dimensions kept by the whitening of each side.
      valid: ``min(kept_x, kept_y)``, the number of meaningful correlations.
    """

    rho: jax.Array
    a: jax.Array
    b: jax.Array
    kept_x: jax.Array
    kept_y: jax.Array
    valid: jax.Array


def _inv_scale(cov, xp):
    d = xp.diagonal(cov)
    return xp.where(d > 0, 1 / xp.sqrt(xp.where(d > 0, d, 1)), 0)


class Side(NamedTuple):
    """One side of a CCA, prepared once and reusable against many other sides.

    Attributes:
      whitening: the :class:`Whitening` of the (rescaled) covariance.
      scale: per-neuron factor applied before whitening (``1 / sd``, or 1 without rescaling; 0 for dead
        neurons either way, so their weights are exactly 0, not the eigenvectors' rounding).
    """

    whitening: Whitening
    scale: jax.Array


def prepare(cov, rtol: float, keep=None, rescale: bool = True) -> Side:
    """Rescale by the diagonal (optional) and whiten one side's covariance.

    Args:
      cov: the side's covariance (a zero diagonal entry marks a dead neuron; it gets weight 0).
      rtol: relative eigenvalue floor of the whitening.
      keep: SVCCA's kept share of variance (float) or count (int); ``None`` keeps all.
      rescale: whiten the correlation matrix rather than the covariance. CCA is scale-invariant, so this
        only improves conditioning; SVCCA's PCA step needs the raw covariance (``rescale=False``).
    """
    xp = _xp(cov)
    scale = _inv_scale(cov, xp) if rescale else (xp.diagonal(cov) > 0).astype(cov.dtype)
    return Side(whiten(cov * scale[:, None] * scale[None, :], rtol, keep), scale)


def _whitened_cross(sx: Side, sy: Side, cxy, xp):
    scaled = cxy * sx.scale[:, None] * sy.scale[None, :]
    return whitened(sy.whitening, whitened(sx.whitening, scaled).T).T


def singular_values(t):
    """Singular values of ``t``, descending, from the eigenvalues of the smaller Gram matrix.

    Canonical correlations lie in ``[0, 1]``; squaring costs absolute accuracy only near 0 (an error of
    about ``sqrt(eps)`` there), while ``eigh`` is several times faster than an SVD on CPU LAPACK.
    """
    xp = _xp(t)
    small = t if t.shape[1] <= t.shape[0] else t.T
    values = xp.linalg.eigvalsh(_mm(xp, small.T, small))
    return xp.sqrt(xp.maximum(xp.flip(values, 0), 0))


def svd(t):
    """Thin SVD ``t = u diag(s) v^T`` (descending) by ``eigh`` of the smaller Gram matrix and a QR.

    The right vectors come from ``eigh`` (orthonormal to rounding); the left ones are the orthonormal
    factor of ``t v`` (columns in order of descending ``s``), signed to match ``t v``.
    """
    xp = _xp(t)
    if t.shape[1] > t.shape[0]:
        u, s, v = svd(t.T)
        return v, s, u
    values, vectors = xp.linalg.eigh(_mm(xp, t.T, t))
    v = xp.flip(vectors, 1)
    s = xp.sqrt(xp.maximum(xp.flip(values, 0), 0))
    q, r = xp.linalg.qr(_mm(xp, t, v))
    sign = xp.where(xp.diagonal(r) < 0, -1.0, 1.0).astype(q.dtype)
    return q * sign[None, :], s, v


def correlations(sx: Side, sy: Side, cxy):
    """Only the canonical correlations (cheaper than :func:`correlate`); invalid entries are 0."""
    xp = _xp(cxy, sx.scale, sy.scale)
    m = min(cxy.shape)
    s = singular_values(_whitened_cross(sx, sy, cxy, xp))
    live = xp.arange(m) < xp.minimum(sx.whitening.kept, sy.whitening.kept)
    return xp.where(live, xp.clip(s[:m], 0, 1), 0)


def correlate(sx: Side, sy: Side, cxy) -> CCA:
    """CCA of two prepared sides with cross-covariance ``cxy``: correlations and directions."""
    xp = _xp(cxy, sx.scale, sy.scale)
    m = min(cxy.shape)
    u, s, v = svd(_whitened_cross(sx, sy, cxy, xp))
    valid = xp.minimum(sx.whitening.kept, sy.whitening.kept)
    live = xp.arange(m) < valid
    rho = xp.where(live, xp.clip(s[:m], 0, 1), 0)
    a = sx.scale[:, None] * unwhitened(sx.whitening, u[:, :m])
    b = sy.scale[:, None] * unwhitened(sy.whitening, v[:, :m])
    # deterministic signs: the largest-magnitude weight of each x direction is positive
    pick = xp.argmax(xp.abs(a), axis=0)
    sign = xp.where(xp.take_along_axis(a, pick[None, :], axis=0)[0] < 0, -1.0, 1.0).astype(a.dtype)
    a = xp.where(live[None, :], a * sign[None, :], 0)
    b = xp.where(live[None, :], b * sign[None, :], 0)
    return CCA(rho, a, b, sx.whitening.kept, sy.whitening.kept, valid)


def cca(cxx, cyy, cxy, rtol: float, keep_x=None, keep_y=None, rescale: bool = True) -> CCA:
    """CCA from covariance blocks (see :func:`prepare` for the arguments)."""
    return correlate(prepare(cxx, rtol, keep_x, rescale), prepare(cyy, rtol, keep_y, rescale), cxy)


def svcca(cxx, cyy, cxy, rtol: float, keep=0.99) -> CCA:
    """SVCCA (Raghu et al., 2017): PCA of each side keeping ``keep`` of the variance, then CCA.

    Directions are returned in neuron space (``a`` and ``b`` act on the centred neurons).
    """
    return cca(cxx, cyy, cxy, rtol, keep_x=keep, keep_y=keep, rescale=False)


def projection_weights(cxx, a):
    """PWCCA weights (Morcos et al., 2018): ``alpha_i ~ sum_j |<h_i, z_j>|``, normalised to sum 1.

    ``h_i = x_centred @ a_i`` has unit variance, so ``<h_i, z_j>`` is proportional to ``(cxx @ a)[j, i]``
    (``z_j`` the centred neurons). Directions that are all zero (not valid) get weight 0.
    """
    xp = _xp(cxx, a)
    alpha = xp.sum(xp.abs(_mm(xp, cxx, a)), axis=0)
    return alpha / xp.maximum(xp.sum(alpha), xp.finfo(alpha.dtype).tiny)


def linear_cka(cxx, cyy, cxy):
    """Linear CKA in feature space: ``||Cxy||_F^2 / (||Cxx||_F ||Cyy||_F)`` (0 if a side is constant)."""
    xp = _xp(cxx, cyy, cxy)
    num = xp.sum(cxy * cxy)
    den = xp.sqrt(xp.sum(cxx * cxx)) * xp.sqrt(xp.sum(cyy * cyy))
    return xp.where(den > 0, num / xp.where(den > 0, den, 1), 0)


def explained_variance(side: Side, cxy, var_y):
    """R^2 of predicting each ``y`` neuron linearly from the prepared ``x`` side (OLS with intercept).

    ``R^2_j = |W^T cxy[:, j]|^2 / var_j`` with ``W`` the (floored) whitening of ``x``: the
    pseudo-inverse solution, so rank-deficient predictors are fine. Constant targets get 0.
    """
    xp = _xp(cxy, side.scale, var_y)
    t = whitened(side.whitening, cxy * side.scale[:, None])
    live = var_y > 0
    return xp.where(live, xp.clip(xp.sum(t * t, axis=0) / xp.where(live, var_y, 1), 0, 1), 0)
