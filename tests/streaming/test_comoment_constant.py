"""The co-moment analyses find constant neurons by the one rule (jneuron.streaming.constant, issue 18): on
columns that are exactly constant, constant up to a few roundings of a large offset, tiny or huge but
varying, or constant but for one spike, every analysis lists exactly the rule's set on the host fold and
the device fold and names them in its warning; co-moments and MaxCorr also over two token shards and two
neuron shards (the other analyses read the same merged statistics)."""

import numpy as np
import pytest

import jneuron as jn
from jneuron.streaming import passes
from jneuron.streaming.blocks import stream_blocks
from jneuron.streaming.constant import constant_neurons
from jneuron.streaming.mesh import resolve_mesh

TOKENS, CHUNK = 700, 256  # three chunks, the last one padded
CONSTANT = [0, 1, 2, 3]  # the columns the rule calls constant (checked against the rule itself below)


def nasty(rng) -> np.ndarray:
    offset = np.float32(1e4)
    spike = np.full(TOKENS, 2.0)
    spike[TOKENS - 3] = 3.0  # in the last, padded chunk
    columns = [
        np.full(TOKENS, 5.0),  # exactly constant
        np.zeros(TOKENS),  # exactly zero
        offset + rng.integers(0, 4, TOKENS) * np.spacing(offset),  # 1e4 within 3 units of its rounding
        np.full(TOKENS, 3e30),  # constant and huge (scaled by the passes)
        1e-30 * rng.normal(size=TOKENS),  # tiny but varying (scaled by the passes)
        1e30 * rng.normal(size=TOKENS),  # huge and varying
        spike,  # constant but for one value
        rng.normal(size=TOKENS),
    ]
    return np.stack(columns, 1).astype(np.float32)


@pytest.fixture(params=["host fold", "device fold", "two devices", "two neuron shards"])
def where(request, monkeypatch) -> dict:
    """The sharding keywords of the analyses; "device fold" runs the accelerator's fold on the CPU."""
    if request.param == "device fold":
        monkeypatch.setattr(passes, "on_cpu", lambda: False)
    return {"two devices": {"devices": 2},
            "two neuron shards": {"mesh": jn.device_mesh(2, neuron_shards=2)}}.get(request.param, {})


def test_the_nasty_columns_are_what_the_rule_says(rng):
    x = nasty(rng)
    assert np.flatnonzero(constant_neurons(x.min(0), x.max(0), np.float32)).tolist() == CONSTANT


def test_every_comoment_analysis_flags_exactly_the_rules_set(rng, where):
    x, y = nasty(rng), rng.normal(size=(TOKENS, 3)).astype(np.float32)
    labels = ", ".join(f"x/{i}" for i in CONSTANT)
    assert jn.comoments(x, chunk_tokens=CHUNK, **where).dead.tolist() == CONSTANT
    with pytest.warns(jn.DeadNeuronWarning, match=f"maxcorr: 4 constant neuron\\(s\\) score 0: {labels}$"):
        ranking = jn.maxcorr([x, y], names=["x", "y"], chunk_tokens=CHUNK, **where)
    assert ranking.dead.tolist() == CONSTANT and np.all(ranking.scores[CONSTANT] == 0)
    assert ranking.order[-len(CONSTANT):].tolist() == CONSTANT  # ranked last
    if where:  # sharded: the range merged over shards gives the same set (the analyses below share one path)
        return
    with pytest.warns(jn.DeadNeuronWarning, match=f"linreg_ranking: 4 constant neuron\\(s\\) get weight 0: {labels}$"):
        assert jn.linreg_ranking({"x": x, "y": y}, chunk_tokens=CHUNK, **where).dead.tolist() == CONSTANT
    with pytest.warns(jn.DeadNeuronWarning, match=f"cca: 4 constant neuron\\(s\\) get weight 0: {labels}$"):
        result = jn.cca(x, y, chunk_tokens=CHUNK, **where)
    assert np.all(result.directions_x[CONSTANT] == 0)
    with pytest.warns(jn.DeadNeuronWarning, match="similarity: 4 constant"):
        blocks = stream_blocks([("x", x), ("y", y)], [(0, 0), (0, 1), (1, 1)], chunk_tokens=CHUNK,
                               mesh=resolve_mesh(where.get("devices"), where.get("mesh")))
    assert np.flatnonzero(blocks.dead).tolist() == CONSTANT
    assert np.all(blocks.cross(0, 1)[CONSTANT] == 0) and np.all(blocks.cross(0, 0)[:, CONSTANT] == 0)
