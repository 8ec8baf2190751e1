"""Figures of results: one function per result kind, each returning a matplotlib ``Figure``.

Result types do not draw themselves (see :mod:`jneuron.results`); their figures live here. Every function
builds its figure without pyplot (no GUI backend is touched) and, given ``path``, also writes it atomically
in the format of the file's suffix (PNG, SVG or PDF). :func:`png` gives a figure's PNG bytes.

>>> import numpy as np, jneuron as jn
>>> from jneuron.report import figures
>>> m = jn.similarity_matrix({"a": np.eye(4)[[0, 1, 2, 3, 0, 1]], "b": np.eye(4)[[1, 0, 2, 3, 1, 0]]}, metric="cka")
>>> figures.similarity_figure(m).axes[0].get_title()
'cka, 6 tokens'
>>> figures.png(figures.similarity_figure(m))[:4] == b"\\x89PNG"
True
"""

from __future__ import annotations

import io
from pathlib import Path

from jneuron.data.atomic import atomic_write_bytes
from jneuron.errors import JNeuronError
from jneuron.report.heatmap import plot_similarity

_DPI = 110


def _figure(size: tuple[float, float]):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the install
        raise JNeuronError("plotting needs matplotlib (a dependency of jneuron): pip install matplotlib") from None
    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    return figure


def png(figure, *, dpi: int = _DPI) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save(figure, path: str | Path, *, dpi: int = _DPI) -> Path:
    """Write the figure atomically, in the format of ``path``'s suffix (PNG when it has none); returns the path."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)
    return atomic_write_bytes(path, buffer.getvalue())


def similarity_figure(matrix, path: str | Path | None = None, **kwargs):
    """A :class:`~jneuron.similarity.matrix.SimilarityMatrix` as a heatmap (see
    :func:`jneuron.report.heatmap.plot_similarity` for ``ax``, ``cmap`` and ``annotate``); written as PNG to
    ``path`` if given."""
    return plot_similarity(matrix, path, **kwargs)


def ablation_curve_figure(curve, path: str | Path | None = None, *, title: str | None = None):
    """An :class:`~jneuron.flax.curves.AblationCurve`: the metric against the neurons removed (one line per
    layer for ``scope="layer"``), the intact model dashed.

    Args:
      curve: the ablation curve.
      path: where to write the figure (PNG, SVG or PDF by suffix); ``None`` writes nothing.
      title: the title (default: the mode and the scope).

    >>> import numpy as np
    >>> from jneuron.flax import AblationCurve
    >>> curve = AblationCurve(np.array([0, 2]), np.array([0.9, 0.5]), 0.9, "accuracy", "zero", "network",
    ...                       ("h",), (2,), np.array([1, 0]))
    >>> [line.get_label() for line in ablation_curve_figure(curve).axes[0].lines]
    ['whole network', 'intact']
    """
    figure = _figure((5.5, 3.6))
    axes = figure.add_subplot()
    rows = curve.values[None] if curve.scope == "network" else curve.values
    names = ["whole network"] if curve.scope == "network" else list(curve.layers)
    for row, name in zip(rows, names):
        axes.plot(curve.ks, row, marker="o", markersize=3, label=name)
    axes.axhline(curve.baseline, color="grey", linestyle="--", linewidth=1, label="intact")
    axes.set_xlabel("neurons removed (k)")
    axes.set_ylabel(curve.metric if isinstance(curve.metric, str) else "metric")
    axes.set_title(title or f"{curve.mode} ablation, {curve.scope}")
    axes.legend(fontsize="small")
    figure.tight_layout()
    if path is not None:
        save(figure, path)
    return figure


def cumulative_ablation_figure(result, scope: str, mode: str, path: str | Path | None = None):
    """A :class:`~jneuron.flax.cumulative_ablation.CumulativeAblation`: the metric against the neurons removed,
    one line per measure and direction (random orders in black), one panel per layer for ``scope="layer"``,
    the intact model dashed.

    Args:
      result: the cumulative ablation.
      scope: ``"network"`` or ``"layer"``.
      mode: ``"zero"`` or ``"mean"`` (bias-balanced).
      path: where to write the figure (PNG, SVG or PDF by suffix); ``None`` writes nothing.
    """
    if scope not in result.ks or not any(key[2:] == (scope, mode) for key in result.curves):
        raise JNeuronError(f"no curves for scope {scope!r} and mode {mode!r}; computed: "
                           f"{sorted({key[2:] for key in result.curves})}")
    panels = ["whole network"] if scope == "network" else list(result.layers)
    figure = _figure((5.2 * len(panels), 3.8))
    colors = {name: f"C{i}" for i, name in enumerate(result.measures())}
    ks = result.ks[scope]
    for index, panel in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        shown = ks <= (sum(result.widths) if scope == "network" else result.widths[index])
        for (measure, direction, s, m), values in result.curves.items():
            if s != scope or m != mode:
                continue
            row = values if scope == "network" else values[index]
            style = {"color": "black", "linewidth": 2} if measure == "random" else {
                "color": colors[measure], "linestyle": "-" if direction == "descending" else ":"}
            first = "highest" if direction == "descending" else "lowest"
            label = "random" if measure == "random" else f"{measure}, {first} first"
            axes.plot(ks[shown], row[shown], label=label, **style)
        axes.axhline(result.baseline, color="grey", linestyle="--", linewidth=1)
        axes.set_xlabel("neurons removed")
        axes.set_ylabel(result.metric)
        axes.set_title(f"{panel}: {'bias-balanced' if mode == 'mean' else 'zero'} ablation")
    figure.axes[-1].legend(fontsize="x-small")
    figure.tight_layout()
    if path is not None:
        save(figure, path)
    return figure
