"""The result contract, who each neuron is, and the result of every neuron ranking.

Every result type of jneuron is a frozen dataclass that

- gives everything as plain JSON types with ``to_dict()`` (:func:`to_plain` turns numpy values into them),
- writes that atomically with ``to_json(path)`` (the :class:`Result` mixin),
- names its neurons with a :class:`NeuronIndex` (model, layer, unit) when it holds per-neuron values
  (``neurons``; ``neurons_x``/``neurons_y`` for two-sided results),
- and does not draw itself: figures are drawn by :mod:`jneuron.report.figures`.

>>> import numpy as np
>>> idx = NeuronIndex.from_widths(("a", "b"), (2, 1))
>>> r = Ranking("demo", np.array([0.2, 0.9, 0.2]), idx)
>>> r.order.tolist(), [n["label"] for n in r.top(2)]
([1, 0, 2], ['a/1', 'a/0'])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jneuron.data.atomic import atomic_write_json


def to_plain(value):
    """``value`` as plain JSON types: numpy arrays and scalars become lists and numbers, mappings get string
    keys, tuples become lists, and NaN becomes ``None`` (JSON has no NaN).

    >>> to_plain({"a": np.array([1.5, np.nan]), 2: (np.int64(3),)})
    {'a': [1.5, None], '2': [3]}
    """
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.str_):
        return str(value)
    return value


class Result:
    """The shared half of the result contract: ``to_json`` writes ``to_dict()`` atomically.

    A result type is a frozen dataclass deriving from this mixin and defining ``to_dict()`` (plain JSON types).

    >>> import dataclasses, json, tempfile, os
    >>> @dataclasses.dataclass(frozen=True)
    ... class Score(Result):
    ...     value: float
    ...     def to_dict(self):
    ...         return {"value": self.value}
    >>> path = Score(0.5).to_json(os.path.join(tempfile.mkdtemp(), "score.json"))
    >>> json.loads(path.read_text())
    {'value': 0.5}
    """

    __slots__ = ()

    def to_dict(self) -> dict:  # pragma: no cover - every result type defines it
        """Everything, as JSON-ready plain Python."""
        raise NotImplementedError(f"{type(self).__name__} does not define to_dict()")

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON, atomically (a temporary file renamed into place); returns the path."""
        return atomic_write_json(path, self.to_dict())


@dataclass(frozen=True)
class NeuronIndex:
    """Identity of every neuron of a flat, layer-major column layout: (model, layer, unit) per column."""

    models: tuple[str, ...]
    layers: tuple[str, ...]
    model: np.ndarray  # per column: index into models
    layer: np.ndarray  # per column: index into layers
    unit: np.ndarray  # per column: unit within its layer

    @classmethod
    def from_widths(cls, models: Sequence[str], widths: Sequence[int], layer: str = "") -> NeuronIndex:
        """One layer per model (named ``layer``), widths side by side."""
        return cls.from_layers([(m, [(layer, w)]) for m, w in zip(models, widths)])

    @classmethod
    def from_layers(cls, spec: Sequence[tuple[str, Sequence[tuple[str, int]]]]) -> NeuronIndex:
        """From ``[(model, [(layer, width), ...]), ...]`` in column order (layer-major within a model)."""
        models, layers, model_ids, layer_ids, units = [], [], [], [], []
        for model_name, model_layers in spec:
            models.append(model_name)
            for layer_name, width in model_layers:
                if layer_name not in layers:
                    layers.append(layer_name)
                model_ids.append(np.full(width, len(models) - 1))
                layer_ids.append(np.full(width, layers.index(layer_name)))
                units.append(np.arange(width))
        cat = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
        return cls(tuple(models), tuple(layers), cat(model_ids), cat(layer_ids), cat(units))

    def __len__(self) -> int:
        return len(self.unit)

    def label(self, i: int) -> str:
        """``model/layer/unit`` (the layer is omitted when unnamed)."""
        layer = self.layers[self.layer[i]]
        parts = [self.models[self.model[i]], layer, str(self.unit[i])] if layer else [
            self.models[self.model[i]], str(self.unit[i])]
        return "/".join(parts)

    def record(self, i: int) -> dict:
        """The identity of neuron ``i`` as a plain dict."""
        return {
            "index": int(i),
            "model": self.models[self.model[i]],
            "layer": self.layers[self.layer[i]],
            "unit": int(self.unit[i]),
            "label": self.label(i),
        }

    def records(self) -> list[dict]:
        """Every neuron's identity, in column order (see :meth:`record`)."""
        return [self.record(i) for i in range(len(self))]

    def model_slice(self, model: int) -> slice:
        """The contiguous columns of one model."""
        columns = np.flatnonzero(self.model == model)
        return slice(int(columns[0]), int(columns[-1]) + 1)


@dataclass(frozen=True)
class Ranking(Result):
    """Neurons scored by one method and ordered best first (ties broken by the lower flat index).

    Attributes:
      method: the method's name, e.g. ``"maxcorr"``.
      scores: one score per neuron (flat, layer-major index).
      neurons: the identity of every neuron.
      descending: whether a higher score ranks first.
      dead: flat indices of constant neurons (:mod:`jneuron.streaming.constant`): given the method's neutral
        score and ranked last.
      details: per-method arrays keyed by name, first axis over neurons (e.g. best partners).
    """

    method: str
    scores: np.ndarray
    neurons: NeuronIndex
    descending: bool = True
    dead: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    details: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def order(self) -> np.ndarray:
        """Flat neuron indices, best first; equal scores keep index order; constant neurons come last."""
        key = -self.scores if self.descending else self.scores
        last = np.zeros(len(self.scores), bool)
        last[np.asarray(self.dead, np.int64)] = True
        return np.lexsort((np.arange(len(self.scores)), key, last))

    def top(self, k: int) -> list[dict]:
        """The best ``k`` neurons as records: identity, score and per-method details."""
        return [self._record(int(i), rank) for rank, i in enumerate(self.order[:k])]

    def _record(self, i: int, rank: int) -> dict:
        record = {"rank": rank, **self.neurons.record(i), "score": float(self.scores[i])}
        record.update({name: to_plain(values[i]) for name, values in self.details.items()})
        return record

    def to_dict(self) -> dict:
        """Everything, as JSON-ready plain Python."""
        return {
            "method": self.method,
            "descending": self.descending,
            "models": list(self.neurons.models),
            "layers": list(self.neurons.layers),
            "neurons": [self._record(int(i), rank) for rank, i in enumerate(self.order)],
            "dead": [self.neurons.record(int(i)) for i in self.dead],
        }

