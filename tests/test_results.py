import json

import numpy as np
import pytest

from jneuron.data.atomic import atomic_write_text
from jneuron.results import NeuronIndex, Ranking


def test_neuron_index_is_layer_major():
    idx = NeuronIndex.from_layers([("m0", [("l0", 2), ("l1", 1)]), ("m1", [("l0", 2)])])
    assert [idx.label(i) for i in range(5)] == ["m0/l0/0", "m0/l0/1", "m0/l1/0", "m1/l0/0", "m1/l0/1"]
    assert idx.model_slice(1) == slice(3, 5)
    assert idx.record(2) == {"index": 2, "model": "m0", "layer": "l1", "unit": 0, "label": "m0/l1/0"}


@pytest.mark.parametrize("descending", [True, False])
def test_order_breaks_ties_by_index(descending):
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.9])
    r = Ranking("t", scores, NeuronIndex.from_widths(["m"], [5]), descending=descending)
    expected = [1, 4, 0, 2, 3] if descending else [3, 0, 2, 1, 4]
    assert r.order.tolist() == expected
    assert [n["index"] for n in r.top(2)] == expected[:2]


def test_to_json_writes_plain_json_with_details(tmp_path):
    r = Ranking("t", np.array([0.2, np.float32(0.7)]), NeuronIndex.from_widths(["m"], [2]),
                dead=np.array([0]), details={"extra": np.array([[1.0, np.nan], [2.0, 3.0]])})
    data = json.loads(r.to_json(tmp_path / "r.json").read_text())
    assert data["neurons"][0] == {"rank": 0, "index": 1, "model": "m", "layer": "", "unit": 1, "label": "m/1",
                                  "score": float(np.float32(0.7)), "extra": [2.0, 3.0]}  # exact: the float32 held
    assert data["neurons"][1]["extra"] == [1.0, None]
    assert data["dead"][0]["index"] == 0


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = atomic_write_text(tmp_path / "x.txt", "old")

    class Boom(str):
        def encode(self, *args):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write_text(path, Boom("new"))
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]
