"""Representational similarity from streamed co-moments: CCA, SVCCA, PWCCA and linear CKA.

One pass over the tokens accumulates the covariance blocks of both layers (compensated, chunk by chunk);
the small ``d x d`` factorizations then run in host float64 (:mod:`jneuron.kernels.cca`).

- CCA: each side rescaled to unit variance and whitened with a relative eigenvalue floor (rank-deficient,
  duplicated and dead neurons are fine), then the SVD of the whitened cross-covariance.
- SVCCA (Raghu et al., 2017): per side, the smallest number of principal directions whose variances
  (eigenvalues) reach ``keep`` of the total, then CCA on them.
- PWCCA (Morcos et al., 2018): canonical correlations averaged with weights ``alpha_i ~ sum_j |<h_i, z_j>|``.
- Linear CKA (Kornblith et al., 2019) in feature space, optionally debiased (unbiased HSIC).

float64 layers are accumulated in float64 (see :mod:`jneuron.precision`), others in compensated float32.
Bounded results stay in their bounds whatever the rounding: canonical correlations (and their means,
PWCCA included) are clipped to ``[0, 1]``, CKA to ``[0, 1]`` and debiased CKA (which can be negative) to
at most 1.

>>> import numpy as np, jneuron as jn
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(2000, 6))
>>> y = np.hstack([x[:, :2] @ rng.normal(size=(2, 2)), rng.normal(size=(2000, 3))])
>>> r = jn.cca(x, y)
>>> np.round(r.rho, 2).tolist()
[1.0, 1.0, 0.07, 0.04, 0.01]
>>> round(jn.cka(x, x @ np.linalg.qr(rng.normal(size=(6, 6)))[0]).value, 4)
1.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.linalg

from jneuron.errors import JNeuronError
from jneuron.kernels import cca as kcca
from jneuron.kernels import hsic as khsic
from jneuron.results import NeuronIndex, Result, to_plain
from jneuron.streaming.blocks import Blocks, stream_blocks
from jneuron.streaming.mesh import resolve_mesh
from jneuron.data.source import reads_dtype

RTOL_FLOAT32 = 1e-6  # relative eigenvalue floor when the co-moments were accumulated in float32 pairs
RTOL_FLOAT64 = 1e-10  # ... and in float64


@dataclass(frozen=True)
class CCAResult(Result):
    """Canonical correlations of two layers and their directions in neuron space.

    The correlations come from the eigenvalues of the whitened cross-covariance's Gram matrix; the
    directions take a full eigendecomposition and a QR (about twice the host work), so they are computed
    the first time one is read, and kept.

    Attributes:
      method: ``"cca"`` or ``"svcca"``.
      rho: canonical correlations, descending, clipped to ``[0, 1]``; ``min(kept_x, kept_y)`` of them.
      directions_x: ``(dx, len(rho))``: ``(x - mean_x) @ directions_x`` are the canonical variates
        (unit variance, uncorrelated); dead neurons get weight 0.
      directions_y: the same for ``y``.
      mean_x, mean_y: the neurons' means.
      kept_x, kept_y: dimensions kept on each side (SVCCA's principal directions, or the rank after the
        eigenvalue floor for CCA).
      tokens: tokens seen.
      neurons_x, neurons_y: the identity of each side's neurons (the rows of ``directions_x``, ``directions_y``).
      dead_x, dead_y: each side's constant neurons (:mod:`jneuron.streaming.constant`): weight 0.
    """

    method: str
    rho: np.ndarray
    mean_x: np.ndarray
    mean_y: np.ndarray
    kept_x: int
    kept_y: int
    tokens: int
    neurons_x: NeuronIndex
    neurons_y: NeuronIndex
    dead_x: np.ndarray
    dead_y: np.ndarray
    _problem: tuple[kcca.Side, kcca.Side, np.ndarray] = field(repr=False, compare=False)  # prepared sides, cov_xy

    @cached_property
    def _directions(self) -> tuple[np.ndarray, np.ndarray]:
        r = kcca.correlate(*self._problem)
        return r.a[:, : len(self.rho)], r.b[:, : len(self.rho)]

    @property
    def directions_x(self) -> np.ndarray:
        return self._directions[0]

    @property
    def directions_y(self) -> np.ndarray:
        return self._directions[1]

    @property
    def mean(self) -> float:
        """The mean canonical correlation (the SVCCA similarity)."""
        return float(np.mean(self.rho)) if len(self.rho) else 0.0

    @property
    def r2(self) -> float:
        """The mean squared canonical correlation (R^2_CCA)."""
        return float(np.mean(self.rho**2)) if len(self.rho) else 0.0

    def to_dict(self, directions: bool = False) -> dict:
        """JSON-ready summary (the direction matrices, with the neurons of their rows, only if asked)."""
        out = {"method": self.method, "mean": self.mean, "r2": self.r2, "rho": to_plain(self.rho),
               "kept_x": self.kept_x, "kept_y": self.kept_y, "tokens": self.tokens,
               "dead_x": [self.neurons_x.record(int(i)) for i in self.dead_x],
               "dead_y": [self.neurons_y.record(int(i)) for i in self.dead_y]}
        if directions:
            out.update(directions_x=to_plain(self.directions_x), directions_y=to_plain(self.directions_y),
                       neurons_x=self.neurons_x.records(), neurons_y=self.neurons_y.records())
        return out


@dataclass(frozen=True)
class PWCCAResult(Result):
    """Projection-weighted CCA.

    Attributes:
      value: the PWCCA similarity for the chosen ``side``, clipped to ``[0, 1]``.
      side: ``"x"`` (weights from x's neurons, Morcos et al.'s ``pwcca(x, y)``), ``"y"``, or
        ``"symmetric"`` (the mean of both directions).
      value_x, value_y: the similarity with weights from x and from y (each clipped to ``[0, 1]``).
      weights_x, weights_y: the weights ``alpha`` of each canonical correlation (each sums to 1).
      cca: the underlying :class:`CCAResult`.
    """

    value: float
    side: str
    value_x: float
    value_y: float
    weights_x: np.ndarray
    weights_y: np.ndarray
    cca: CCAResult

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {"method": "pwcca", "value": self.value, "side": self.side, "value_x": self.value_x,
                "value_y": self.value_y, "weights_x": to_plain(self.weights_x),
                "weights_y": to_plain(self.weights_y), "cca": self.cca.to_dict()}


@dataclass(frozen=True)
class CKAResult(Result):
    """Linear CKA between two layers (``debiased``: from the unbiased HSIC estimator).

    Attributes:
      value: the CKA, clipped to ``[0, 1]``; debiased, clipped to at most 1 (it can be negative).
      debiased: whether ``value`` comes from the unbiased HSIC estimator.
      tokens: tokens seen.
    """

    value: float
    debiased: bool
    tokens: int

    def __float__(self) -> float:
        return self.value

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {"method": "cka", "value": self.value, "debiased": self.debiased, "tokens": self.tokens}


@reads_dtype
def cca(x, y, *, rtol: float | None = None, chunk_tokens: int | None = None,
        valid=None, devices=None, mesh=None, checkpoint=None, progress: bool = False, on_chunk=None) -> CCAResult:
    """Canonical correlation analysis of two layers over the same tokens, from one streamed pass.

    Args:
      x, y: ``(tokens, neurons)`` arrays (widths may differ), or both iterables of chunks.
      rtol: relative eigenvalue floor of the whitening (default ``1e-6`` for float32 accumulation,
        ``1e-10`` for float64).
      chunk_tokens: tokens per streamed chunk.
      devices, mesh: shard the pass over devices (see :func:`jneuron.maxcorr` and :mod:`jneuron.streaming.mesh`).
      valid, checkpoint, progress, on_chunk: rows that count (boolean ``(tokens,)``, array inputs), a
        checkpoint folder to resume from, a progress line on stderr, a callback with each chunk's rows
        (the one pass's keywords, see :func:`jneuron.maxcorr`).

    >>> import numpy as np, jneuron as jn
    >>> x = np.random.default_rng(1).normal(size=(300, 4))
    >>> r = jn.cca(x, x @ np.diag([1.0, 2.0, -3.0, 4.0]) + 10.0)
    >>> np.round(r.rho, 6).tolist(), round(r.mean, 6)
    ([1.0, 1.0, 1.0, 1.0], 1.0)
    """
    blocks = _pair(x, y, chunk_tokens, "cca", mesh=resolve_mesh(devices, mesh),
                   valid=valid, checkpoint=checkpoint, progress=progress, on_chunk=on_chunk)
    return _cca_result(blocks, 0, 1, "cca", None, eigenvalue_floor(blocks, rtol))


@reads_dtype
def svcca(x, y, keep: float | int = 0.99, *, rtol: float | None = None,
          chunk_tokens: int | None = None,
              valid=None, devices=None, mesh=None, checkpoint=None, progress: bool = False, on_chunk=None) -> CCAResult:
    """SVCCA (Raghu et al., 2017): keep per side the leading principal directions, then CCA.

    Args:
      x, y: as for :func:`cca`.
      keep: a share of variance in ``(0, 1]``: the smallest number ``k`` of principal directions whose
        eigenvalues (variances, not singular values) sum to at least ``keep`` of the total; or an ``int``,
        the number of directions to keep per side.
      rtol, chunk_tokens, valid, devices, mesh, checkpoint, progress, on_chunk: as for :func:`cca`.

    >>> import numpy as np, jneuron as jn
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(1000, 3)) * [10.0, 5.0, 0.1]
    >>> r = jn.svcca(z @ rng.normal(size=(3, 8)), z @ rng.normal(size=(3, 8)), keep=0.99)
    >>> r.kept_x, r.kept_y, np.round(r.rho, 3).tolist()
    (2, 2, [1.0, 1.0])
    """
    check_keep(keep)
    blocks = _pair(x, y, chunk_tokens, "svcca", mesh=resolve_mesh(devices, mesh),
                   valid=valid, checkpoint=checkpoint, progress=progress, on_chunk=on_chunk)
    return _cca_result(blocks, 0, 1, "svcca", keep, eigenvalue_floor(blocks, rtol))


@reads_dtype
def pwcca(x, y, *, side: str = "x", rtol: float | None = None, chunk_tokens: int | None = None,
          valid=None, devices=None, mesh=None, checkpoint=None, progress: bool = False, on_chunk=None) -> PWCCAResult:
    """Projection-weighted CCA (Morcos et al., 2018).

    Each canonical correlation ``rho_i`` is weighted by how much of one side's centred neurons ``z_j``
    its canonical variate ``h_i`` accounts for: ``alpha_i ~ sum_j |<h_i / |h_i|, z_j>|``. The measure is
    not symmetric: ``side="x"`` takes the weights from ``x`` (the paper's ``pwcca(x, y)``), ``"y"`` from
    ``y``, ``"symmetric"`` averages the two. Both are always reported. Works whichever side is wider
    (there are ``min(kept_x, kept_y)`` canonical pairs on both sides). The values are clipped to
    ``[0, 1]`` (the weights sum to 1 only up to rounding). Other arguments as for :func:`cca`.

    >>> import numpy as np, jneuron as jn
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(1000, 5))
    >>> r = jn.pwcca(x, np.hstack([x[:, :1], rng.normal(size=(1000, 9))]))
    >>> round(float(r.cca.rho[0]), 6), r.cca.kept_y
    (1.0, 10)
    """
    if side not in ("x", "y", "symmetric"):
        raise JNeuronError(f"pwcca: side must be 'x', 'y' or 'symmetric', got {side!r}")
    blocks = _pair(x, y, chunk_tokens, "pwcca", mesh=resolve_mesh(devices, mesh),
                   valid=valid, checkpoint=checkpoint, progress=progress, on_chunk=on_chunk)
    return pwcca_result(blocks, 0, 1, side, eigenvalue_floor(blocks, rtol))


@reads_dtype
def cka(x, y, debiased: bool = False, *, chunk_tokens: int | None = None,
        valid=None, devices=None, mesh=None, checkpoint=None, progress: bool = False, on_chunk=None) -> CKAResult:
    """Linear CKA (Kornblith et al., 2019), feature-space form, from one streamed pass.

    ``CKA = ||Cxy||_F^2 / (||Cxx||_F ||Cyy||_F)``. With ``debiased=True`` every HSIC is the unbiased
    estimator (Song et al., 2012), for which the pass also accumulates fourth moments (row norms); it
    needs at least 4 tokens. The value is clipped with ``np.clip`` to ``[0, 1]`` (debiased: to at most 1,
    since the unbiased estimator can be negative), so rounding never reports a CKA above 1.
    ``chunk_tokens``, ``devices`` and ``mesh`` as for :func:`cca`.

    >>> import numpy as np, jneuron as jn
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(500, 10))
    >>> round(jn.cka(x, 3 * x + 1).value, 6), round(jn.cka(x, 3 * x + 1, debiased=True).value, 6)
    (1.0, 1.0)
    """
    blocks = _pair(x, y, chunk_tokens, "cka", row_norms=debiased, mesh=resolve_mesh(devices, mesh),
                   valid=valid, checkpoint=checkpoint, progress=progress, on_chunk=on_chunk)
    return CKAResult(cka_value(blocks, 0, 1, debiased), debiased, blocks.count)


def _pair(x, y, chunk_tokens, what: str, row_norms: bool = False, **passing) -> Blocks:
    return stream_blocks([("x", x), ("y", y)], [(0, 0), (0, 1), (1, 1)], chunk_tokens=chunk_tokens,
                         row_norms=row_norms, what=what, **passing)


def eigenvalue_floor(blocks: Blocks, rtol: float | None) -> float:
    """The whitening's relative eigenvalue floor: ``rtol`` checked, or the default for the dtype the
    co-moments were accumulated in (``RTOL_FLOAT64`` or ``RTOL_FLOAT32``)."""
    if rtol is not None:
        if not 0 <= rtol < 1:
            raise JNeuronError(f"rtol must be in [0, 1), got {rtol}")
        return rtol
    return RTOL_FLOAT64 if blocks.accumulated_in == np.float64 else RTOL_FLOAT32


def check_keep(keep) -> None:
    """Raise :class:`JNeuronError` unless ``keep`` is SVCCA's share of variance in ``(0, 1]`` or a positive count."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.integer, np.floating)):
        raise JNeuronError(f"keep must be a share of variance in (0, 1] or a positive int, got {keep!r}")
    if isinstance(keep, (int, np.integer)) and keep < 1:
        raise JNeuronError(f"keep as a count must be at least 1, got {keep}")
    if isinstance(keep, (float, np.floating)) and not 0 < keep <= 1:
        raise JNeuronError(f"keep as a share of variance must be in (0, 1], got {keep}")


def prepare_side(blocks: Blocks, i: int, method: str, keep, rtol: float) -> kcca.Side:
    """Whiten group ``i`` for ``"cca"`` (correlation scale) or ``"svcca"`` (PCA keeping ``keep``).

    CCA whitens by Cholesky when the correlation matrix is safely above the eigenvalue floor (then no
    direction would be dropped, and any whitening gives the same canonical correlations), else by ``eigh``.
    """
    if method == "cca":
        cov = blocks.cov(i, i)
        scale = 1 / np.sqrt(np.where(np.diag(cov) > 0, np.diag(cov), np.inf))
        whitening = _cholesky_whitening(cov * scale[:, None] * scale[None, :], rtol)
        if whitening is not None:
            return kcca.Side(whitening, scale)
    return kcca.prepare(blocks.cov(i, i), rtol, keep if method == "svcca" else None, rescale=method != "svcca")


def _cholesky_whitening(corr: np.ndarray, rtol: float, iterations: int = 30) -> kcca.Whitening | None:
    """The whitening ``basis = L^-T`` (``corr = L L^T``, applied by triangular solves), or None unless the
    smallest eigenvalue is 100x above the floor.

    Both extreme eigenvalues are estimated by (inverse) power iteration from a fixed start; the estimates
    err towards each other, hence the margin. (Solves with ``L^T`` go through ``trans="T"``: passing
    ``lower.T`` would copy the whole factor on every iteration.)
    """
    try:
        lower = np.linalg.cholesky(corr)
    except np.linalg.LinAlgError:
        return None
    v = w = np.random.default_rng(0).normal(size=len(corr))
    for _ in range(iterations):
        v = scipy.linalg.solve_triangular(lower, v, lower=True, check_finite=False)
        v = scipy.linalg.solve_triangular(lower, v, lower=True, trans="T", check_finite=False)
        v /= np.linalg.norm(v)
        w = corr @ w
        w /= np.linalg.norm(w)
    smallest, largest = float(v @ corr @ v), float(w @ corr @ w)  # Rayleigh quotients
    if not smallest > 100 * rtol * largest:
        return None
    return kcca.Whitening(None, None, None, np.asarray(len(corr)), lower)


def _cca_result(blocks: Blocks, i: int, j: int, method: str, keep, rtol: float,
                sides: tuple[kcca.Side, kcca.Side] | None = None) -> CCAResult:
    sx, sy = sides or (prepare_side(blocks, i, method, keep, rtol), prepare_side(blocks, j, method, keep, rtol))
    cxy = blocks.cov(i, j)
    valid = int(min(sx.whitening.kept, sy.whitening.kept))
    neurons = [NeuronIndex.from_widths((blocks.names[g],), (blocks.widths[g],)) for g in (i, j)]
    return CCAResult(method, kcca.correlations(sx, sy, cxy)[:valid], blocks.mean[blocks.columns(i)],
                     blocks.mean[blocks.columns(j)], int(sx.whitening.kept), int(sy.whitening.kept), blocks.count,
                     *neurons, blocks.dead_in(i), blocks.dead_in(j), (sx, sy, cxy))


def pwcca_result(blocks: Blocks, i: int, j: int, side: str, rtol: float,
                  sides: tuple[kcca.Side, kcca.Side] | None = None) -> PWCCAResult:
    """PWCCA of groups ``i`` and ``j`` of ``blocks`` (``sides``: their whitenings, if already prepared)."""
    r = _cca_result(blocks, i, j, "cca", None, rtol, sides)
    if len(r.rho) == 0:
        empty = np.zeros(0)
        return PWCCAResult(0.0, side, 0.0, 0.0, empty, empty, r)
    wx = np.asarray(kcca.projection_weights(blocks.cov(i, i), r.directions_x))
    wy = np.asarray(kcca.projection_weights(blocks.cov(j, j), r.directions_y))
    vx, vy = (float(np.clip(w @ r.rho, 0.0, 1.0)) for w in (wx, wy))  # weights sum to 1 up to rounding
    value = {"x": vx, "y": vy, "symmetric": (vx + vy) / 2}[side]
    return PWCCAResult(value, side, vx, vy, wx, wy, r)


def cka_value(blocks: Blocks, i: int, j: int, debiased: bool) -> float:
    """CKA clipped to ``[0, 1]`` (debiased: to at most 1; it can be negative), whatever the rounding."""
    cxx, cyy, cxy = blocks.cross(i, i), blocks.cross(j, j), blocks.cross(i, j)
    if not debiased:
        return float(np.clip(kcca.linear_cka(cxx, cyy, cxy), 0.0, 1.0))
    hsic = {(g, h): _hsic(blocks, g, h) for g, h in ((i, j), (i, i), (j, j))}
    den = np.sqrt(max(hsic[(i, i)], 0.0) * max(hsic[(j, j)], 0.0))
    return float(np.minimum(hsic[(i, j)] / den, 1.0)) if den > 0 else 0.0


def _hsic(blocks: Blocks, g: int, h: int) -> float:
    """Unbiased HSIC between groups ``g`` and ``h`` from the streamed row-norm moments."""
    q, u, reference = blocks.row_norms
    cg, ch = blocks.columns(g), blocks.columns(h)
    delta = blocks.mean - reference
    tr_g, tr_h = np.trace(blocks.cross(g, g)), np.trace(blocks.cross(h, h))
    q_gh = khsic.centred_row_products(q[g, h], u[g, ch], u[h, cg], blocks.cross(g, h), tr_g, tr_h,
                                      delta[cg], delta[ch], blocks.count)
    return float(khsic.debiased_hsic(blocks.cross(g, h), q_gh, tr_g, tr_h, blocks.count))
