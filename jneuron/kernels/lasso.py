"""LASSO from second moments, by coordinate descent, for many targets and many penalties at once.

With standardised predictors and targets, ``(1 / 2n) |y - X b|^2 + lam |b|_1`` equals, up to a
constant, ``b^T G b / 2 - c^T b + lam |b|_1`` with ``G`` the predictors' correlation matrix and ``c``
their correlations with the target: the data are never needed again. Coordinate descent updates one
predictor's row of coefficients for every target at once; :func:`lasso_path` vmaps it over penalties.

>>> import numpy as np, jax.numpy as jnp
>>> g = jnp.eye(3, dtype=jnp.float32); c = jnp.array([[0.9], [0.05], [-0.5]], jnp.float32)
>>> b, kkt = lasso(g, c, 0.1, 10)
>>> np.round(np.asarray(b, np.float64)[:, 0], 3).tolist(), bool(kkt < 1e-6)
([0.8, 0.0, -0.4], True)
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jneuron.config import HIGHEST


def _soft(v, t):
    return jnp.sign(v) * jnp.maximum(jnp.abs(v) - t, 0)


@partial(jax.jit, static_argnames=("sweeps",))
def lasso(gram, cross, penalty, sweeps: int):
    """Coefficients ``(dx, dy)`` minimising ``b^T G b / 2 - c^T b + penalty |b|_1`` per target column.

    Args:
      gram: ``(dx, dx)`` predictor correlations (a zero diagonal entry: a dead predictor, kept at 0).
      cross: ``(dx, dy)`` predictor-target correlations.
      penalty: the L1 penalty (a scalar).
      sweeps: full passes over the predictors.

    Returns:
      ``(coef, kkt)``: the coefficients and the largest violation of the optimality conditions.
    """
    d = gram.shape[0]
    diag = jnp.diagonal(gram)
    safe = jnp.where(diag > 0, diag, 1)

    def step(k, coef):
        j = k % d
        residual = cross[j] - jnp.matmul(gram[j], coef, precision=HIGHEST) + gram[j, j] * coef[j]
        return coef.at[j].set(jnp.where(diag[j] > 0, _soft(residual, penalty) / safe[j], 0))

    coef = jax.lax.fori_loop(0, sweeps * d, step, jnp.zeros_like(cross))
    gradient = cross - jnp.matmul(gram, coef, precision=HIGHEST)
    violation = jnp.where(coef != 0, jnp.abs(gradient - penalty * jnp.sign(coef)),
                          jnp.maximum(jnp.abs(gradient) - penalty, 0))
    return coef, jnp.max(jnp.where(diag[:, None] > 0, violation, 0))


@partial(jax.jit, static_argnames=("sweeps",))
def lasso_path(gram, cross, penalties, sweeps: int):
    """:func:`lasso` for every penalty in ``penalties`` (vmapped): ``(P, dx, dy)`` and ``(P,)``."""
    return jax.vmap(lasso, in_axes=(None, None, 0, None))(gram, cross, penalties, sweeps)
