"""Bounded quantities stay in their bounds whatever the rounding: |rho| <= 1, CKA in [0, 1] (debiased CKA
<= 1), canonical correlations in [0, 1], R^2 <= 1, also where the exact answer sits on the bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jneuron as jn


def rotation(rng: np.random.Generator, width: int, dtype) -> np.ndarray:
    return np.linalg.qr(rng.normal(size=(width, width)))[0].astype(dtype)


@pytest.fixture
def x(rng) -> np.ndarray:
    return rng.normal(size=(2000, 64)).astype(np.float32)


def test_cka_of_a_rotation_is_one_and_never_above(x, rng):
    value = jn.cka(x, x @ rotation(rng, 64, np.float32)).value
    assert 1 - 1e-6 <= value <= 1
    assert jn.cka(x, x).value <= 1
    assert jn.cka(x, x, debiased=True).value <= 1


def test_canonical_correlations_of_a_layer_with_itself_stay_in_bounds(x):
    for result in (jn.cca(x, x), jn.svcca(x, x), jn.pwcca(x, x).cca):
        assert 0 <= result.rho.min() and result.rho.max() <= 1 and result.mean <= 1
    assert 0 <= jn.pwcca(x, x).value <= 1


def test_exact_copies_correlate_at_most_one(x):
    ranking = jn.maxcorr([x, x.copy()])
    assert ranking.scores.max() <= 1 and np.nanmax(np.abs(ranking.partner_rho)) <= 1
    assert np.abs(jn.comoments(x).correlation()).max() <= 1
    assert np.abs(jn.match_neurons(x, x).correlation).max() <= 1
    assert jn.direction_ranking(x, x, method="cca").rho.max() <= 1
    assert jn.linreg_ranking([x, x]).scores.max() <= 1


def within(values, low: float, high: float) -> bool:
    """Every value (NaN: the neuron's own model) in ``[low, high]``."""
    values = np.asarray(values, np.float64)
    return bool(np.all((low <= values) & (values <= high) | np.isnan(values)))


def in_bounds(x: np.ndarray, y: np.ndarray) -> None:
    """Every bounded result of ``x`` against ``y`` lies within its bounds."""
    assert within(jn.comoments(np.hstack([x, y])).correlation(), -1, 1)
    ranking = jn.maxcorr([x, y])
    assert within(ranking.score_matrix, 0, 1) and within(ranking.partner_rho, -1, 1)
    assert within(ranking.rescore("mincorr").scores, 0, 1)
    matching = jn.match_neurons(x, y)
    assert within(matching.correlation, -1, 1) and within(matching.rho, -1, 1)
    for result in (jn.cca(x, y), jn.svcca(x, y), jn.direction_ranking(x, y, method="cca")):
        assert within(result.rho, 0, 1)
    pw = jn.pwcca(x, y)
    assert within([pw.value, pw.value_x, pw.value_y, pw.cca.mean], 0, 1)
    assert within(jn.linreg_ranking([x, y]).scores, 0, 1)
    for metric in ("svcca", "cka"):
        assert within(jn.similarity_matrix([x, y], metric=metric).values, 0, 1)
    assert within(jn.similarity_matrix([x, y], metric="cka_debiased").values, -np.inf, 1)


@pytest.mark.filterwarnings("ignore::jneuron.DeadNeuronWarning")  # a tiny spread at a large offset is constant
@given(
    seed=st.integers(0, 2**32 - 1),
    width=st.sampled_from([1, 6]),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    offset=st.sampled_from([0.0, 1e4, -1e4]),
    relation=st.sampled_from(["copy", "rotation", "scaled", "noisy", "independent"]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_bounded_results_stay_in_bounds(seed, width, scale, offset, relation, dtype):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, width)) * scale + offset
    y = {"copy": x,
         "rotation": (x - offset) @ rotation(rng, width, np.float64) + offset,
         "scaled": -3.0 * x + 7.0,
         "noisy": x + 1e-3 * scale * rng.normal(size=x.shape),
         "independent": rng.normal(size=x.shape) * scale + offset}[relation]
    in_bounds(x.astype(dtype), np.array(y, dtype))
