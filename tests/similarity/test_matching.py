"""Convergent learning: bipartite and semi matching, and the LASSO from co-moments."""

import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jneuron as jn
from jneuron.kernels import lasso as klasso
from tests.reference import lasso_bound, lasso_kkt, ref_lasso
from tests.tolerance import assert_close, tolerance

TOKENS = 600
C = 256  # one chunk shape for every test, so the streamed update compiles once per width


def _corr(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.corrcoef(x.T, y.T)[: x.shape[1], x.shape[1] :]


def brute_force_matching(corr):
    """The best one-to-one assignment by enumerating every injective map (small sizes only)."""
    dx, dy = corr.shape
    if dx <= dy:
        best = max(itertools.permutations(range(dy), dx), key=lambda p: sum(corr[i, j] for i, j in enumerate(p)))
        return np.arange(dx), np.array(best)
    best = max(itertools.permutations(range(dx), dy), key=lambda p: sum(corr[i, j] for j, i in enumerate(p)))
    order = np.argsort(best)
    return np.array(best)[order], np.arange(dy)[order]


def _nets(rng, dx=5, dy=5):
    x = rng.normal(size=(TOKENS, dx))
    mix = np.eye(dx)[:, rng.permutation(dx)][:, :dy] if dy <= dx else rng.normal(size=(dx, dy))
    y = x @ (mix + 0.3 * rng.normal(size=(dx, dy))) + 0.5 * rng.normal(size=(TOKENS, dy))
    return (x + 1e3).astype(np.float32), (y - 1e3).astype(np.float32)


@pytest.mark.parametrize("shape", [(5, 5), (4, 6), (6, 4)])
def test_bipartite_matching_is_the_best_assignment(rng, shape):
    x, y = _nets(rng, *shape)
    m = jn.match_neurons(x, y, chunk_tokens=C)
    corr = _corr(x, y)
    bound = tolerance(TOKENS)  # correlations over the tokens, exact centring at the 1e3 offsets
    assert_close(m.correlation, corr, bound, what="correlation")
    rows, cols = brute_force_matching(corr)
    k = min(shape)
    np.testing.assert_array_equal(m.x_units, np.arange(k) if shape[0] <= shape[1] else np.sort(m.x_units))
    # the best assignment, or one that ties with it within rounding: the matcher maximises a total of k
    # estimates, each within the bound, so the true total it picks can fall short of the best by 2 k bounds
    chosen = corr[m.x_units, m.y_units].sum()
    assert_close(chosen, corr[rows, cols].sum(), 2 * k * bound, what="total of the chosen assignment vs the best")
    assert_close(m.total, chosen, k * bound, what="reported total")
    assert len(m.rho) == k
    assert len(set(m.y_units.tolist())) == len(m.y_units)  # one-to-one


def test_semi_matching_takes_each_units_best_partner(rng):
    x, y = _nets(rng, 6, 4)
    m = jn.match_neurons(x, y, method="semi", chunk_tokens=C)
    corr = _corr(x, y)
    bound = tolerance(TOKENS)
    np.testing.assert_array_equal(m.x_units, np.arange(6))
    # each unit's best partner, or one tying with it within rounding (estimates within the bound: 2 bounds)
    assert_close(corr[np.arange(6), m.y_units], corr.max(axis=1), 2 * bound, what="rho of the chosen partner")
    assert_close(m.rho, corr.max(axis=1), bound, what="best rho")
    flipped = jn.match_neurons(x, -y, method="semi", absolute=True, chunk_tokens=C)
    assert_close(np.abs(corr[np.arange(6), flipped.y_units]), np.abs(corr).max(axis=1), 2 * bound,
                 what="|rho| of the chosen partner")
    assert_close(flipped.rho, -corr[np.arange(6), flipped.y_units], bound, what="rho with -y")


def test_planted_permutation_is_recovered_and_dead_units(rng):
    x = rng.normal(size=(TOKENS, 5)).astype(np.float32)
    perm = rng.permutation(5)
    y = np.hstack([x[:, perm] + 0.05 * rng.normal(size=(TOKENS, 5)), np.ones((TOKENS, 1))]).astype(np.float32)
    with pytest.warns(jn.DeadNeuronWarning, match="y/5"):
        m = jn.match_neurons(x, y, chunk_tokens=C, names=("x", "y"))
    np.testing.assert_array_equal(m.y_units, np.argsort(perm))  # planted: no near ties (others ~0.04)
    assert np.all(m.rho > 0.99) and np.all(m.correlation[:, 5] == 0)  # noise 0.05 gives rho ~0.999; dead: exactly 0
    pairs = m.to_dict()["pairs"]
    assert pairs[0]["x"]["label"] == "x/0" and pairs[0]["y"]["label"] == f"y/{np.argsort(perm)[0]}"


@given(st.integers(0, 2**31 - 1))
def test_matching_is_symmetric_under_swapping_the_nets(seed):
    x, y = _nets(np.random.default_rng(seed))
    a = jn.match_neurons(x, y, chunk_tokens=C)
    b = jn.match_neurons(y, x, chunk_tokens=C)
    bound = tolerance(TOKENS)
    assert_close(a.total, b.total, 2 * 5 * bound, what="totals")  # two float32 computations of 5 correlations
    pairs_a = set(zip(a.x_units.tolist(), a.y_units.tolist()))
    pairs_b = set(zip(b.y_units.tolist(), b.x_units.tolist()))
    if pairs_a != pairs_b:  # only assignments tying within rounding (each within 2 * 5 bounds of the best)
        corr = _corr(x, y)
        total = lambda pairs: sum(corr[i, j] for i, j in pairs)  # noqa: E731
        assert_close(total(pairs_a), total(pairs_b), 4 * 5 * bound, what="totals of different assignments")


def test_sparse_prediction_matches_reference_lasso(rng):
    x, y = _nets(rng, 5, 3)
    p = jn.sparse_prediction(x, y, penalties=[0.3, 0.05, 0.0], chunk_tokens=C)
    np.testing.assert_array_equal(p.penalties, [0.3, 0.05, 0.0])
    for k, penalty in enumerate(p.penalties):
        ref = ref_lasso(x, y, penalty)
        kkt = float(p.kkt[k]) + lasso_kkt(x, y, ref, penalty)  # where both solvers stopped
        assert_close(p.coef[k], ref, lasso_bound(x, ref, kkt), what=f"coefficients at penalty {penalty}")
    assert np.all(p.kkt < 1e-4)  # the solver's convergence (its sweeps), not rounding
    ys, xs = ((a - a.mean(0)) / a.std(0, ddof=1) for a in (y.astype(np.float64), x.astype(np.float64)))
    for k in range(3):
        coef = np.asarray(p.coef[k], np.float64)
        fitted = 1 - ((ys - xs @ coef) ** 2).sum(0) / ((ys**2).sum(0))
        # R^2 = 2 b'c - b'Gb from co-moments (entries off by eps): off by eps (2 |b|_1 + |b|_1^2)
        norm1 = np.abs(coef).sum(0)
        assert_close(p.r2[k], fitted, tolerance(TOKENS), (1 + norm1) ** 2, "R^2 of the LASSO fit")
    assert np.all(np.diff(p.nonzero, axis=0) >= 0)  # smaller penalties use more units


def test_sparse_prediction_tells_local_from_distributed_codes(rng):
    x = rng.normal(size=(TOKENS, 8)).astype(np.float32)
    local = x[:, 3] + 0.1 * rng.normal(size=TOKENS)
    distributed = x[:, :6].sum(1) / np.sqrt(6) + 0.1 * rng.normal(size=TOKENS)
    dead = np.zeros(TOKENS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jn.DeadNeuronWarning)
        p = jn.sparse_prediction(x, np.stack([local, distributed, dead], 1).astype(np.float32), chunk_tokens=C)
    k = int(np.argmin(np.abs(p.penalties - 0.05)))
    assert p.nonzero[k, 0] == 1 and p.nonzero[k, 1] >= 6 and p.nonzero[k, 2] == 0
    assert p.r2[k, 0] > 0.95 and p.r2[k, 1] > 0.9 and p.r2[k, 2] == 0  # statistics of the planted codes
    assert p.nonzero[0].tolist() == [0, 0, 0]  # the largest default penalty zeroes everything
    assert set(p.to_dict()) == {"penalties", "r2", "nonzero", "kkt", "neurons_y", "dead_x", "dead_y"}
    assert p.dead_y.tolist() == [2] and [n["label"] for n in p.to_dict()["dead_y"]] == ["y/2"]
    assert [n["label"] for n in p.to_dict()["neurons_y"]] == [f"y/{j}" for j in range(p.r2.shape[1])]


def test_lasso_path_vmaps_over_penalties():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6))
    a[:, 5] = a[:, 4]  # a duplicated predictor: the LASSO still converges
    g = np.corrcoef(a.T).astype(np.float32)
    c = g[:, :2] * 0.8
    penalties = jnp.array([0.5, 0.1, 0.01], jnp.float32)
    coef, kkt = klasso.lasso_path(g, c, penalties, 300)
    for k in range(3):
        single, _ = klasso.lasso(g, c, penalties[k], 300)
        # the same float32 coordinate descent, vmapped or not: each of the 300 x 6 updates rounds a 6-term
        # product (of |G| |b| + |c|), and G is singular here, so no contraction bounds the drift: treat the
        # whole run as one long sum, on either side
        scale = np.abs(c).max() + np.abs(g).sum(1).max() * np.abs(np.asarray(single)).max()
        assert_close(np.asarray(coef[k]), np.asarray(single), 2 * tolerance(300 * 6), scale, "vmapped vs single")
    assert np.all(np.asarray(kkt) < 1e-4) and coef.shape == (3, 6, 2)  # convergence of 300 sweeps, not rounding
    assert jax.jit(klasso.lasso, static_argnames="sweeps")(g, c, 0.1, sweeps=5)[0].shape == (6, 2)


def test_errors(rng):
    x, y = _nets(rng)
    with pytest.raises(jn.JNeuronError, match="method"):
        jn.match_neurons(x, y, method="greedy", chunk_tokens=C)
    with pytest.raises(jn.JNeuronError, match="penalties"):
        jn.sparse_prediction(x, y, penalties=[-1.0], chunk_tokens=C)
    with pytest.raises(jn.JNeuronError, match="token counts differ"):
        jn.match_neurons(x, y[:-2], chunk_tokens=C)




def test_match_command(rng, tmp_path, capsys):
    import json

    from jneuron.cli.main import main

    x, y = _nets(rng)
    np.save(tmp_path / "net1.npy", x)
    np.save(tmp_path / "net2.npy", y)
    files = [str(tmp_path / "net1.npy"), str(tmp_path / "net2.npy")]
    assert main(["match", *files, "--lasso", "--out", str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "match_bipartite.json").read_text())
    assert data["method"] == "bipartite" and len(data["pairs"]) == 5 and "sparse_prediction" in data
    assert data["pairs"][0]["x"]["label"] == "net1/0" and "<->" in capsys.readouterr().out
