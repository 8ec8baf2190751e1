"""LinReg neuron ranking (Bau et al., ICLR 2019).

LinReg scores each neuron by how well it is predicted *linearly* from each other model (all of that
model's neurons, OLS with intercept): ``R^2`` from the streamed covariance blocks, no second pass. The
paper ranks by the minimum over the other models (a neuron every model can reproduce ranks first);
``reduce="max"`` takes the best model instead.

>>> import numpy as np, jneuron as jn
>>> rng = np.random.default_rng(0)
>>> shared = rng.normal(size=(1000, 2))
>>> a = np.hstack([shared, rng.normal(size=(1000, 2))])
>>> b = np.hstack([shared @ rng.normal(size=(2, 3)), rng.normal(size=(1000, 1))])
>>> r = jn.linreg_ranking({"a": a, "b": b})
>>> sorted(n["label"] for n in r.top(5)), np.round(r.scores, 2).tolist()
(['a/0', 'a/1', 'b/0', 'b/1', 'b/2'], [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jneuron.data.models import parse_layers
from jneuron.errors import JNeuronError
from jneuron.kernels import cca as kcca
from jneuron.results import NeuronIndex, Ranking
from jneuron.similarity.measures import eigenvalue_floor
from jneuron.streaming.blocks import stream_blocks
from jneuron.streaming.mesh import resolve_mesh
from jneuron.data.source import reads_dtype


@reads_dtype
def linreg_ranking(models, *, reduce: str = "min", names: Sequence[str] | None = None,
                   rtol: float | None = None, chunk_tokens: int | None = None,
                   valid=None, devices=None, mesh=None,
                   checkpoint=None, progress: bool = False, on_chunk=None) -> Ranking:
    """Rank every neuron by the ``R^2`` of predicting it linearly from each other model.

    Args:
      models: two or more models over the same tokens: a sequence or mapping of ``(tokens, neurons)``
        arrays, or a mapping of model name to a mapping of layer name to array (layers side by side);
        or every model an iterable of chunks.
      reduce: ``"min"`` over the other models (Bau et al.'s choice) or ``"max"``.
      names: model names (default: the mapping's keys, or ``model0, model1, ...``).
      rtol: relative eigenvalue floor for the predictors' covariance (see :func:`jneuron.cca`).
      chunk_tokens: tokens per streamed chunk.
      devices, mesh: shard the pass over devices (see :func:`jneuron.maxcorr` and :mod:`jneuron.streaming.mesh`).
      valid, checkpoint, progress, on_chunk: rows that count (boolean ``(tokens,)``, array inputs), a
        checkpoint folder to resume from, a progress line on stderr, a callback with each chunk's rows
        (the one pass's keywords, see :func:`jneuron.maxcorr`).

    Returns:
      A :class:`~jneuron.results.Ranking` (method ``"linreg_min"`` or ``"linreg_max"``, descending) with
      details ``r2``: per neuron, the ``R^2`` from each model (None for its own), clipped to ``[0, 1]``.
      Constant neurons score 0. float64 activations are fitted in float64 (see :mod:`jneuron.precision`).
    """
    if reduce not in ("min", "max"):
        raise JNeuronError(f"linreg_ranking: reduce must be 'min' or 'max', got {reduce!r}")
    if hasattr(models, "shape"):
        raise JNeuronError("linreg_ranking needs at least 2 models, got 1 array")
    layers = parse_layers(models, names)
    groups, model_names, layer_names = layers.groups, layers.models, layers.layers
    count = len(model_names)
    if count < 2:
        raise JNeuronError(f"linreg_ranking needs at least 2 models, got {count}")
    members = [layers.members(k) for k in range(count)]
    known = all(hasattr(data, "shape") for _, data in groups)
    widest = max(sum(np.shape(groups[g][1])[1] for g in ms) for ms in members) if known else None
    pairs = [(i, j) for i in range(len(groups)) for j in range(i, len(groups))]
    blocks = stream_blocks(groups, pairs, chunk_tokens=chunk_tokens, what="linreg_ranking", widest=widest,
                           mesh=resolve_mesh(devices, mesh),
                                             valid=valid, checkpoint=checkpoint, progress=progress, on_chunk=on_chunk)
    neurons = NeuronIndex.from_layers([(model_names[k], [(layer_names[g], blocks.widths[g]) for g in members[k]])
                                       for k in range(count)])
    rtol = eigenvalue_floor(blocks, rtol)
    starts = np.cumsum([0] + [sum(blocks.widths[g] for g in ms) for ms in members])
    r2 = np.full((len(neurons), count), np.nan)
    for source in range(count):
        side = kcca.prepare(blocks.cov_of(members[source], members[source]), rtol)
        for target in range(count):
            if target != source:
                cross = blocks.cov_of(members[source], members[target])
                var = np.diag(blocks.cov_of(members[target], members[target]))
                r2[starts[target] : starts[target + 1], source] = kcca.explained_variance(side, cross, var)
    scores = (np.nanmin if reduce == "min" else np.nanmax)(r2, axis=1)
    dead = np.flatnonzero(blocks.dead)
    return Ranking(f"linreg_{reduce}", scores, neurons, True, dead, {"r2": r2})

