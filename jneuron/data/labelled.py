"""A source and its labels as one source: each row's class id travels as one more column.

Labelled analyses (information measures, probeless class means, probe evaluation) fold the class ids in
the same pass as the activations; a file or store source stays on disk and is read chunk by chunk.

>>> import numpy as np, jneuron as jn
>>> labelled = LabelledSource(jn.as_source([np.arange(6.0).reshape(3, 2)]), np.array([1, 0, 1]))
>>> labelled.names, labelled.widths, next(labelled.rows(2)).parts.tolist()
(('model0', 'labels'), (2, 1), [[0.0, 1.0, 1.0], [2.0, 3.0, 0.0]])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from jneuron.data.checks import as_2d, check_valid
from jneuron.data.models import parse_layers
from jneuron.data.source import ArraySource, Rows, float_dtype, is_source, requested_dtype, source_rows
from jneuron.errors import JNeuronError
from jneuron.results import NeuronIndex

LABELS = "labels"  # the name of the class-id column


@dataclass(frozen=True)
class LabelledSource:
    """``source``'s models, then ``labels``: the class id of every row (``ids``, one per token)."""

    source: object
    ids: np.ndarray

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.source.names) + (LABELS,)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.source.widths) + (1,)

    @property
    def tokens(self) -> int:
        return self.source.tokens

    @property
    def dtype(self) -> np.dtype:
        return self.source.dtype

    @property
    def valid(self) -> np.ndarray | None:
        return getattr(self.source, "valid", None)

    @property
    def layers(self) -> dict:
        return getattr(self.source, "layers", {})

    reiterable = True

    def rows(self, chunk_tokens: int, start: int = 0) -> Iterator[Rows]:
        """The source's chunks from token ``start`` on, each with its rows' class ids as the last column."""
        row = start
        for rows in source_rows(self.source, chunk_tokens, start):
            values = np.asarray(rows.parts)
            ids = self.ids[row : row + len(values)].astype(values.dtype)[:, None]
            row += len(values)
            yield Rows(np.concatenate([values, ids], axis=1), rows.valid)

    def chunks(self, chunk_tokens: int, start: int = 0) -> Iterator[np.ndarray]:
        for rows in self.rows(chunk_tokens, start):
            yield rows.parts


def activation_source(data, names: Sequence[str] | None, valid, *, lone_name: str | None = None):
    """The activations a labelled analysis reads, as a source, and who its columns are: a file or store source
    as given (``valid`` applied to it), or arrays side by side (one array, several models, models of layers;
    ``lone_name`` names a single array given without ``names``) read in the requested dtype."""
    if is_source(data):  # files and stores stay on disk
        source = data if valid is None else data.with_valid(valid)
        return source, source_neurons(source, names)
    if hasattr(data, "shape") and names is None and lone_name is not None:
        names = [lone_name]
    layers = parse_layers(data, names, what="activations")
    arrays = [as_2d(a, f"model '{layers.models[m]}'" + (f", layer '{l}'" if l else ""))
              for a, m, l in zip(layers.data, layers.model_of, layers.layers)]
    tokens = sorted({a.shape[0] for a in arrays})
    if len(tokens) != 1:
        raise JNeuronError(f"all activation arrays must cover the same tokens; token counts differ: {tokens}")
    mask = None if valid is None else check_valid(valid, tokens[0])
    dtype = requested_dtype(float_dtype(np.result_type(*[np.dtype(a.dtype) for a in arrays])))
    return ArraySource(tuple(arrays), tuple(layers.labels), mask, out_dtype=dtype), layers.neurons()


def source_neurons(source, names: Sequence[str] | None = None) -> NeuronIndex:
    """Who a source's columns are: its models (renamed by ``names``) with their layers where the source
    knows them (files and stores), else one unnamed layer per model."""
    models = tuple(names) if names is not None else tuple(source.names)
    if len(models) != len(source.names):
        raise JNeuronError(f"got {len(models)} names for {len(source.names)} models")
    layers = getattr(source, "layers", None)
    if isinstance(layers, dict) and all(m in layers for m in source.names):
        return NeuronIndex.from_layers([(n, list(layers[m])) for n, m in zip(models, source.names)])
    return NeuronIndex.from_widths(models, source.widths)
