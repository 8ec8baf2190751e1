"""Covariance blocks of several column groups (layers, models) from one streamed pass.

Every similarity measure here (CCA, SVCCA, PWCCA, CKA, LinReg, matching, LASSO) is a function of the
covariance blocks within and between groups. :func:`stream_blocks` accumulates only the blocks asked for
(``(i, j)`` with ``i <= j``, consecutive ``j`` sharing one tile) with the compensated co-moments, and
returns them in host float64.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x, y = rng.normal(size=(100, 3)), rng.normal(size=(100, 2))
>>> b = stream_blocks([("x", x), ("y", y)], [(0, 0), (0, 1), (1, 1)])
>>> bool(np.allclose(b.cov(1, 0), np.cov(np.hstack([x, y]).T)[3:, :3]))
True
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh

from jneuron.data.checks import as_2d, check_min_tokens
from jneuron.data.source import Source, as_source
from jneuron.errors import FewTokensWarning, JNeuronError
from jneuron.kernels import hsic as khsic
from jneuron.kernels import moments as kmoments
from jneuron.kernels.moments import Tile
from jneuron.precision import follow_dtype
from jneuron.streaming.constant import constant_neurons, warn_constant
from jneuron.streaming.passes import accumulate, chunk_callback, default_chunk_tokens


@dataclass(frozen=True)
class Blocks:
    """Centred cross-products of column groups over the same tokens, in host float64.

    Attributes:
      names, widths: the groups, in column order.
      count: tokens seen.
      mean: per-column means.
      dead: per-column mask of constant neurons (:mod:`jneuron.streaming.constant`; their rows and
        columns read as 0).
      accumulated_in: the dtype the co-moments were accumulated in (``float32`` pairs or ``float64``).
      row_norms: for the debiased CKA, ``(Q, U, reference)`` (see :mod:`jneuron.kernels.hsic`), or None.
    """

    names: tuple[str, ...]
    widths: tuple[int, ...]
    count: int
    mean: np.ndarray
    dead: np.ndarray
    accumulated_in: np.dtype
    _cross: Mapping[tuple[int, int], np.ndarray]
    row_norms: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def starts(self) -> np.ndarray:
        return np.cumsum((0,) + self.widths)

    def columns(self, i: int) -> slice:
        """The columns of group ``i``."""
        return slice(int(self.starts[i]), int(self.starts[i + 1]))

    def cross(self, i: int, j: int) -> np.ndarray:
        """The centred cross-product block ``X_i^T X_j`` (dead neurons' rows and columns are 0)."""
        return self._cross[(i, j)] if i <= j else self._cross[(j, i)].T

    def cov(self, i: int, j: int) -> np.ndarray:
        """The covariance block (``ddof=1``) between groups ``i`` and ``j``."""
        return self.cross(i, j) / (self.count - 1)

    def cov_of(self, rows: Sequence[int], cols: Sequence[int]) -> np.ndarray:
        """The covariance between the concatenations of groups ``rows`` and of groups ``cols``."""
        return np.block([[self.cov(i, j) for j in cols] for i in rows])

    def dead_in(self, i: int) -> np.ndarray:
        """Units of group ``i`` that are constant."""
        return np.flatnonzero(self.dead[self.columns(i)])


def joint_source(groups: Sequence[tuple[str, object]], valid=None) -> Source:
    """One source over named groups given as arrays (``valid``: the rows that count), or all as iterables
    of chunks (zipped token-wise)."""
    names = [name for name, _ in groups]
    data = [value for _, value in groups]
    if all(hasattr(value, "shape") for value in data):
        return as_source(dict(zip(names, [as_2d(v, f"'{n}'") for n, v in zip(names, data)])), valid=valid)
    if any(hasattr(value, "shape") or not isinstance(value, Iterable) for value in data):
        kinds = ", ".join(f"'{n}': {type(v).__name__}" for n, v in groups)
        raise JNeuronError(f"give every input as an array, or every input as an iterable of chunks; got {kinds}")
    return as_source(zip(*data), names=names)


def stream_blocks(groups: Sequence[tuple[str, object]], pairs: Iterable[tuple[int, int]], *,
                  chunk_tokens: int | None = None, row_norms: bool = False, what: str = "similarity",
                  widest: int | None = None, mesh: Mesh | None = None, valid=None, checkpoint=None,
                  progress: bool = False, on_chunk=None) -> Blocks:
    """Stream the groups once and return the asked-for covariance blocks.

    Args:
      groups: ``(name, data)`` per group; data is a ``(tokens, neurons)`` array or an iterable of chunks.
      pairs: the blocks ``(i, j)`` to keep (``i <= j``; each group's own block ``(i, i)`` is usual).
      chunk_tokens: tokens per compiled update.
      row_norms: also accumulate the fourth moments of the debiased CKA.
      what: the analysis, for messages.
      widest: the widest set of neurons whose covariance is inverted (default: the widest group).
      mesh: shard the pass over this mesh (see :mod:`jneuron.streaming.mesh`).
      valid: boolean ``(tokens,)`` mask of the rows that count (array groups only).
      checkpoint, progress, on_chunk: see :func:`jneuron.streaming.passes.accumulate` (a checkpoint folder
        is not used with ``row_norms``, whose fourth moments are not saved: the pass then runs whole).

    Warns :class:`FewTokensWarning` when there are fewer tokens than neurons in some group. float64 groups
    are accumulated in float64 (see :mod:`jneuron.precision`), others in compensated float32.
    """
    source = joint_source(groups, valid)
    names, widths = tuple(source.names), tuple(source.widths)
    starts = np.cumsum((0,) + widths)
    bounds = tuple((int(starts[g]), int(starts[g + 1])) for g in range(len(widths)))
    tiles, where = _plan(sorted(set(pairs)), bounds)
    chunk_tokens = chunk_tokens or default_chunk_tokens(int(starts[-1]), getattr(source, "tokens", None))
    norms = _RowNorms(bounds) if row_norms else None
    with follow_dtype(source.dtype):  # the pass, and reading its statistics, in the data's precision
        stats = accumulate(source, tiles, chunk_tokens, observe=norms, mesh=mesh,
                           checkpoint=None if norms is not None else checkpoint,
                           on_chunk=chunk_callback(progress, on_chunk, getattr(source, "tokens", None)))
        count = int(stats.count)
        check_min_tokens(count, what, 4 if row_norms else 2)
        widest = widest or max(widths)
        if count <= widest:
            warnings.warn(
                f"{what}: {count} tokens for up to {widest} neurons; the covariance is rank deficient, so "
                "correlations overfit (CCA and R^2 approach 1)", FewTokensWarning, stacklevel=3)
        dead = constant_neurons(*kmoments.range64(stats, scaled=True), stats.mean.hi.dtype)
        columns = np.flatnonzero(dead)
        owner = np.searchsorted(starts, columns, side="right") - 1
        warn_constant(what, [f"{names[g]}/{c - starts[g]}" for g, c in zip(owner, columns)], "get weight 0",
                      stacklevel=3)
        live = (~dead).astype(np.float64)
        cross = {}
        for tile in range(len(tiles)):
            band = kmoments.cross_value64(stats, tile)  # converted once, then cut into its blocks
            for (i, j), (t, offset) in where.items():
                if t == tile:
                    block = band[:, offset : offset + widths[j]]
                    cross[(i, j)] = (block * live[starts[i] : starts[i + 1], None]
                                     * live[None, starts[j] : starts[j + 1]])
        mean = kmoments.mean64(stats)
    moments = None if norms is None else (norms.q, norms.u, norms.reference)
    return Blocks(names, widths, count, mean, dead, np.dtype(stats.mean.hi.dtype), cross, moments)


def _plan(pairs, bounds) -> tuple[tuple[Tile, ...], dict]:
    """A tile of its own for each diagonal block ``(i, i)`` (symmetric: a CPU BLAS computes half of it),
    then one tile per run of consecutive ``j > i``; ``where[(i, j)] = (tile, column offset)``."""
    tiles, where = [], {}
    for i in sorted({i for i, _ in pairs}):
        js = sorted(j for a, j in pairs if a == i)
        if any(j < i for j in js):
            raise JNeuronError(f"internal: block ({i}, {min(js)}) must be asked as ({min(js)}, {i})")
        if js[0] == i:
            where[(i, i)] = (len(tiles), 0)
            tiles.append(Tile(bounds[i][0], bounds[i][1], bounds[i][0], bounds[i][1]))
            js = js[1:]
            if not js:
                continue
        runs = [[js[0]]]
        for j in js[1:]:
            if j == runs[-1][-1] + 1:
                runs[-1].append(j)
            else:
                runs.append([j])
        for run in runs:
            c0 = bounds[run[0]][0]
            for j in run:
                where[(i, j)] = (len(tiles), bounds[j][0] - c0)
            tiles.append(Tile(bounds[i][0], bounds[i][1], c0, bounds[run[-1]][1]))
    return tuple(tiles), where


class _RowNorms:
    """Sums the row-norm moments of every chunk, around the first chunk's mean (host float64).

    The moments are fourth powers of the values: for float32 data of scale ``1e8`` they overflow, below
    ``1e-12`` they underflow. Each chunk's column groups are therefore scaled by powers of two (exact)
    that put their largest value near 1 when it is out of ``2**±ROW_NORM_RANGE``, and the scaling is
    undone in float64, which holds every float32 value's fourth powers.
    """

    ROW_NORM_RANGE = 20  # (2**20)**4 = 2**80: times widths and rows, still far from float32's 2**128

    def __init__(self, bounds):
        self.bounds = bounds
        self.reference = None
        self.q = self.u = 0.0

    def __call__(self, chunk: np.ndarray, rows: int) -> None:
        if self.reference is None:
            self.reference = np.asarray(chunk[:rows], np.float64).mean(0)
        shifted = chunk - self.reference.astype(chunk.dtype)
        groups = self._exponents(shifted[:rows])
        columns = np.concatenate([np.full(b - a, e, np.int32) for (a, b), e in zip(self.bounds, groups)])
        if groups.any():
            shifted = np.ldexp(shifted, columns[None, :]).astype(chunk.dtype, copy=False)
        q, u = khsic.row_norm_moments(shifted, rows, self.bounds)
        q = np.asarray(jax.device_get(q), np.float64)
        u = np.asarray(jax.device_get(u), np.float64)
        if groups.any():  # Q[g, h] holds 2**(2 e_g + 2 e_h) times its value, U[g, j] 2**(2 e_g + e_j)
            q = np.ldexp(q, -2 * (groups[:, None] + groups[None, :]))
            u = np.ldexp(u, -(2 * groups[:, None] + columns[None, :]))
        self.q = self.q + q
        self.u = self.u + u

    def _exponents(self, shifted: np.ndarray) -> np.ndarray:
        """Per group: 0, or the exponent putting its largest finite ``|value|`` in ``[0.5, 1)`` when that
        is out of range."""
        out = np.zeros(len(self.bounds), np.int32)
        if not len(shifted):
            return out
        peak = np.fmax(np.fmax.reduce(shifted, axis=0), -np.fmin.reduce(shifted, axis=0)).astype(np.float64)
        for g, (a, b) in enumerate(self.bounds):
            top = peak[a:b][np.isfinite(peak[a:b])]
            top = float(top.max()) if len(top) else 0.0
            if top > 0 and not 2.0**-self.ROW_NORM_RANGE <= top <= 2.0**self.ROW_NORM_RANGE:
                out[g] = -np.frexp(top)[1]
        return out
