"""``dtype=`` of the pass tail: every streamed entry point reads its chunks as the dtype asked for and
computes in it (float32 input asked for float64 gives the float64 answer; float64 input asked for float32
gives the float32 answer); a bad dtype is one line."""

import numpy as np
import pytest

import jneuron as jn
from jneuron.errors import JNeuronError
from tests.tolerance import assert_close, correlation_condition, tolerance

RNG = np.random.default_rng(0)
X32 = (RNG.normal(size=(60, 4)) + 3).astype(np.float32)
Y32 = (X32 @ RNG.normal(size=(4, 3)) + 0.3 * RNG.normal(size=(60, 3))).astype(np.float32)
X64, Y64 = X32.astype(np.float64), Y32.astype(np.float64)
LABELS = RNG.integers(0, 3, 60)

# entry point -> (call on x, y, the result's numbers)
CALLS = {
    "comoments": (lambda x, y, **k: jn.comoments(x, **k), "mean"),
    "maxcorr": (lambda x, y, **k: jn.maxcorr([x, y], **k), "scores"),
    "mincorr": (lambda x, y, **k: jn.mincorr([x, y], **k), "scores"),
    "linreg_ranking": (lambda x, y, **k: jn.linreg_ranking([x, y], **k), "scores"),
    "cca": (lambda x, y, **k: jn.cca(x, y, **k), "rho"),
    "svcca": (lambda x, y, **k: jn.svcca(x, y, **k), "rho"),
    "pwcca": (lambda x, y, **k: jn.pwcca(x, y, **k), "value"),
    "cka": (lambda x, y, **k: jn.cka(x, y, **k), "value"),
    "similarity_matrix": (lambda x, y, **k: jn.similarity_matrix([x, y], **k), "values"),
    "direction_ranking": (lambda x, y, **k: jn.direction_ranking(x, y, **k), "rho"),
    "match_neurons": (lambda x, y, **k: jn.match_neurons(x, y, **k), "correlation"),
    "sparse_prediction": (lambda x, y, **k: jn.sparse_prediction(x, y, **k), "coef"),
    "neuron_information": (lambda x, y, **k: jn.neuron_information(x, LABELS, threshold=0.0, **k), "mutual_information"),
    "probeless": (lambda x, y, **k: jn.probeless(x, LABELS, **k), "means"),
}
QUANTIZED = {"neuron_information"}  # binned values: float32 and float64 agree exactly on these inputs


def numbers(name, x, y, **kwargs) -> np.ndarray:
    call, attribute = CALLS[name]
    return np.asarray(getattr(call(x, y, **kwargs), attribute), np.float64)


def test_every_streamed_entry_point_is_covered():
    from tests.test_vocabulary import STREAMED
    assert set(CALLS) == set(STREAMED)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_dtype_float64_on_float32_input_gives_the_float64_answer(name):
    expected = numbers(name, X64, Y64)
    bound = tolerance(len(X32), np.float64, condition=correlation_condition(X64, Y64))
    assert_close(numbers(name, X32, Y32, dtype="float64"), expected, bound, np.abs(expected) + 1, name)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_dtype_float32_on_float64_input_computes_in_float32(name):
    in_float32 = numbers(name, X32, Y32)
    asked = numbers(name, X64, Y64, dtype=np.float32)
    scale = np.abs(in_float32) + 1
    assert_close(asked, in_float32, tolerance(len(X32), np.float64), scale, name)
    if name not in QUANTIZED:  # float32 rounding shows: the float64 answer is not what came back
        floor64 = tolerance(len(X32), np.float64, condition=correlation_condition(X64, Y64))
        assert np.max(np.abs(asked - numbers(name, X64, Y64)) / scale) > floor64


@pytest.mark.parametrize("bad", ["float16", "int32", "double precision", 3])
def test_a_bad_dtype_is_one_line(bad):
    with pytest.raises(JNeuronError, match="dtype") as caught:
        jn.cka(X64, Y64, dtype=bad)
    assert "\n" not in str(caught.value)


def test_array_and_iterator_sources_read_as_the_dtype():
    assert jn.as_source([X32], dtype="float64").dtype == np.float64
    assert next(jn.as_source([X64], dtype="float32").chunks(7)).dtype == np.float32
    chunks = jn.as_source(lambda: iter([(X32[:30],), (X32[30:],)]), dtype="float64")
    assert chunks.dtype == np.float64 and {c.dtype for c in chunks.chunks(16)} == {np.dtype(np.float64)}
    expected = jn.comoments(X64).covariance()
    streamed = jn.comoments(iter([X32[:25], X32[25:]]), dtype="float64").covariance()
    assert_close(streamed, expected, tolerance(len(X32), np.float64, magnitude=3.0), np.abs(expected) + 1)


def test_probeless_chunks_with_labels_read_as_the_dtype():
    expected = jn.probeless(X64, LABELS).means
    chunks = [(X32[:30], LABELS[:30]), (X32[30:], LABELS[30:])]
    streamed = jn.probeless(chunks, dtype="float64").means
    assert_close(streamed, expected, tolerance(len(X32), np.float64, magnitude=3.0), np.abs(expected) + 1)


def test_capture_source_reads_as_the_dtype():
    from flax import nnx

    from jneuron.flax import capture_source
    from jneuron.models import MLP
    model = MLP(4, (3,), 2, rngs=nnx.Rngs(0))
    src = capture_source(model, X32, ["layers/0"], batch_size=32, dtype="float64")
    assert src.dtype == np.float64 and {c.dtype for c in src.chunks(16)} == {np.dtype(np.float64)}


def test_file_sources_read_as_the_dtype(tmp_path):
    np.save(tmp_path / "x.npy", X32)
    source = jn.as_source(jn.open_activations(tmp_path / "x.npy"), dtype="float64")
    assert source.dtype == np.float64 and next(source.chunks(16)).dtype == np.float64
