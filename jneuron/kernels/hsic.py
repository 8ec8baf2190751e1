"""Row-norm moments for the debiased (unbiased-HSIC) linear CKA, streamed beside the co-moments.

The unbiased HSIC estimator (Song et al., 2012) of two centred layers ``X``, ``Y`` (``n`` tokens) is, in
feature space (Kornblith et al., 2019)::

    hsic = ||X^T Y||_F^2 - n / (n - 2) * sum_t |x_t|^2 |y_t|^2 + tr(X^T X) tr(Y^T Y) / ((n - 1) (n - 2))

The middle term is a fourth moment that co-moments do not hold. Per chunk, around a fixed reference
``c`` (the first chunk's mean, so values stay small), we accumulate for every column group ``g``
the squared row norms ``s_g(t) = |x_g(t) - c_g|^2`` and keep::

    Q[g, h] = sum_t s_g(t) s_h(t)            (groups x groups)
    U[g, :] = sum_t s_g(t) (x(t) - c)        (groups x all columns)

:func:`centred_row_products` then moves ``Q`` from the reference to the exact mean using the centred
cross-products, so one pass suffices.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(50, 3)) + 5.0
>>> c = x[:10].mean(0)
>>> q, u = row_norm_moments(x - c, 50, ((0, 2), (2, 3)))
>>> xc = x - x.mean(0); cross = xc.T @ xc; delta = x.mean(0) - c
>>> q, u = np.asarray(q, np.float64), np.asarray(u, np.float64)
>>> q01 = centred_row_products(q[0, 1], u[0, 2:], u[1, :2], cross[:2, 2:], np.trace(cross[:2, :2]),
...                            cross[2, 2], delta[:2], delta[2:], 50)
>>> bool(np.isclose(q01, np.sum((xc[:, :2] ** 2).sum(1) * (xc[:, 2:] ** 2).sum(1)), rtol=1e-4))
True
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jneuron.config import HIGHEST


@partial(jax.jit, static_argnames=("groups",))
def row_norm_moments(shifted, n_valid, groups: tuple[tuple[int, int], ...]):
    """``(Q, U)`` of one chunk of reference-shifted rows (first ``n_valid`` rows real)."""
    rows = jnp.arange(shifted.shape[0])[:, None] < n_valid
    x = jnp.where(rows, shifted, 0)
    norms = jnp.stack([jnp.sum(x[:, a:b] * x[:, a:b], axis=1) for a, b in groups], axis=1)
    q = jnp.matmul(norms.T, norms, precision=HIGHEST)
    u = jnp.matmul(norms.T, x, precision=HIGHEST)
    return q, u


def centred_row_products(q_gh, u_gh, u_hg, c_gh, tr_g, tr_h, d, e, n):
    """``sum_t |x_g(t) - mean_g|^2 |x_h(t) - mean_h|^2`` from reference-shifted moments.

    Args:
      q_gh: ``Q[g, h]``; ``u_gh``: ``U[g, h's columns]``; ``u_hg``: ``U[h, g's columns]`` (summed
        :func:`row_norm_moments`, around the reference ``c``).
      c_gh: the centred cross-product block between groups ``g`` and ``h`` (about the mean).
      tr_g, tr_h: traces of the centred cross-products of each group with itself.
      d, e: ``mean - c`` for the columns of ``g`` and of ``h``.
      n: number of tokens.
    """
    dd, ee = d @ d, e @ e
    raw_gh = d @ c_gh @ e + n * dd * ee  # sum_t <x_g - c_g, d> <x_h - c_h, e>
    return (q_gh - 2 * (e @ u_gh) - 2 * (d @ u_hg) + ee * (tr_g + n * dd) + dd * (tr_h + n * ee)
            + 4 * raw_gh - 3 * n * dd * ee)


def debiased_hsic(c_gh, q_gh, tr_g, tr_h, n):
    """Unbiased HSIC (Song et al., 2012) of two centred groups, in feature space (see the module doc)."""
    return (c_gh * c_gh).sum() - n / (n - 2) * q_gh + tr_g * tr_h / ((n - 1) * (n - 2))
