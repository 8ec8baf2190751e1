"""Heatmaps of similarity matrices (matplotlib, imported only when used).

>>> import numpy as np, jneuron as jn
>>> from jneuron.report import plot_similarity
>>> layers = jn.NeuronIndex.from_layers([("a", [("a", 3), ("b", 3)])])
>>> m = jn.SimilarityMatrix("cka", np.eye(2), ("a", "b"), ("a", "b"), 10, layers, layers)
>>> fig = plot_similarity(m)
>>> fig.axes[0].get_title()
'cka, 10 tokens'
"""

from __future__ import annotations

import io
from pathlib import Path

from jneuron.data.atomic import atomic_write_bytes
from jneuron.errors import JNeuronError


def plot_similarity(matrix, path: str | Path | None = None, *, ax=None, cmap: str = "viridis",
                    annotate: bool | None = None):
    """Draw a :class:`~jneuron.similarity.matrix.SimilarityMatrix` as a heatmap; write a PNG if ``path`` is given.

    Args:
      matrix: the similarity matrix.
      path: where to write the PNG (atomically); ``None`` writes nothing.
      ax: a matplotlib ``Axes`` to draw into (default: a new figure).
      cmap: the colour map (values span ``[0, 1]``).
      annotate: print the value in each cell (default: when the matrix has at most 16 x 16 cells).

    Returns:
      The matplotlib ``Figure`` (built without pyplot, so no GUI backend is touched).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise JNeuronError("plotting needs matplotlib (a dependency of jneuron): pip install matplotlib") from None
    values = matrix.values
    if ax is None:
        rows, cols = values.shape
        fig = Figure(figsize=(2.0 + 0.45 * cols, 1.2 + 0.4 * rows), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap=cmap, origin="upper")
    ax.set_xticks(range(values.shape[1]), matrix.names_b, rotation=90)
    ax.set_yticks(range(values.shape[0]), matrix.names_a)
    ax.set_title(f"{matrix.metric}, {matrix.tokens} tokens")
    if annotate if annotate is not None else max(values.shape) <= 16:
        from jneuron.report.plots import text_colour

        for (i, j), value in _cells(values):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color=text_colour(image.cmap(image.norm(value))))
    fig.colorbar(image, ax=ax)
    if path is not None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120)
        atomic_write_bytes(path, buffer.getvalue())
    return fig


def _cells(values):
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            yield (i, j), float(values[i, j])
