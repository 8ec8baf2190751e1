"""Read the "models, model -> layer -> activations" forms every analysis accepts, in one place.

An analysis over several models takes one ``(tokens, neurons)`` array, a sequence of arrays (one per
model), a mapping of model name to array, or a mapping of model name to a mapping of layer name to array
(a model's layers side by side, layer-major). :func:`parse_layers` turns any of them into
:class:`Layers`: one column group per (model, layer), in column order.

>>> import numpy as np
>>> parsed = parse_layers({"a": {"l0": np.ones((4, 2)), "l1": np.ones((4, 1))}, "b": np.ones((4, 3))})
>>> parsed.labels, parsed.model_of
(('a/l0', 'a/l1', 'b'), (0, 0, 1))
>>> [parsed.neurons().label(i) for i in (0, 2, 5)]
['a/l0/0', 'a/l1/0', 'b/2']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from jneuron.errors import JNeuronError
from jneuron.results import NeuronIndex


@dataclass(frozen=True)
class Layers:
    """Column groups over the same tokens, one per (model, layer), in column order.

    Attributes:
      models: model names, in order.
      model_of: the model (index into ``models``) of each group.
      layers: each group's layer name (``""`` where a model was given as one array).
      data: each group's activations (an array, or whatever the caller passed: iterables of chunks).
    """

    models: tuple[str, ...]
    model_of: tuple[int, ...]
    layers: tuple[str, ...]
    data: tuple

    @property
    def labels(self) -> tuple[str, ...]:
        """``"model/layer"`` of every group (``"model"`` for an unnamed layer)."""
        return tuple(f"{self.models[m]}/{layer}" if layer else self.models[m]
                     for m, layer in zip(self.model_of, self.layers))

    @property
    def groups(self) -> list[tuple[str, object]]:
        """``(label, data)`` of every group."""
        return list(zip(self.labels, self.data))

    def members(self, model: int) -> list[int]:
        """The groups of model ``model``."""
        return [g for g, m in enumerate(self.model_of) if m == model]

    def widths(self) -> tuple[int, ...]:
        """Every group's neurons (its arrays' second axis)."""
        return tuple(int(np.shape(d)[1]) for d in self.data)

    def model_widths(self, widths: Sequence[int] | None = None) -> tuple[int, ...]:
        """Every model's neurons, its layers side by side (``widths`` per group; default :meth:`widths`)."""
        widths = self.widths() if widths is None else widths
        return tuple(sum(widths[g] for g in self.members(m)) for m in range(len(self.models)))

    def neurons(self, widths: Sequence[int] | None = None) -> NeuronIndex:
        """The (model, layer, unit) of every column (``widths`` per group; default :meth:`widths`)."""
        widths = self.widths() if widths is None else widths
        return NeuronIndex.from_layers([(name, [(self.layers[g], widths[g]) for g in self.members(m)])
                                        for m, name in enumerate(self.models)])


def parse_layers(models, names: Sequence[str] | None = None, *, prefix: str = "model",
                 what: str = "models") -> Layers:
    """Column groups of an array, a sequence or mapping of arrays, or a mapping of model to layer to array.

    Args:
      models: the activations (see the module docstring); values may also be iterables of chunks.
      names: model names (default: the mapping's keys, or ``{prefix}0, {prefix}1, ...``).
      prefix: the stem of default names.
      what: the argument, for messages.
    """
    if hasattr(models, "shape"):
        values, default = [models], (f"{prefix}0",)
    elif isinstance(models, Mapping):
        values, default = list(models.values()), tuple(str(k) for k in models)
    elif isinstance(models, Sequence) and not isinstance(models, str):
        values = list(models)
        default = tuple(f"{prefix}{i}" for i in range(len(values)))
    else:
        raise JNeuronError(f"{what}: expected arrays, a sequence or a mapping of them, got {type(models).__name__}")
    if not values:
        raise JNeuronError(f"{what}: no activations given")
    model_names = tuple(str(n) for n in names) if names is not None else default
    if len(model_names) != len(values):
        raise JNeuronError(f"{what}: got {len(model_names)} names for {len(values)} models")
    if len(set(model_names)) != len(model_names):
        raise JNeuronError(f"{what}: model names must be unique, got {model_names}")
    model_of, layers, data = [], [], []
    for k, value in enumerate(values):
        parts = value if isinstance(value, Mapping) else {"": value}
        if not parts:
            raise JNeuronError(f"{what}: model '{model_names[k]}' has no layers")
        for layer, array in parts.items():
            model_of.append(k)
            layers.append(str(layer))
            data.append(array)
    return Layers(model_names, tuple(model_of), tuple(layers), tuple(data))
