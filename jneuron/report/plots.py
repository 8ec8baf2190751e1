"""Static plots for reports and the command line, as PNG bytes (matplotlib, no display needed).

>>> png = bars(["a/0", "b/3"], [0.9, 0.4], title="MaxCorr")
>>> png[:4] == b"\\x89PNG"
True
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - depends on the installed extras
        from jneuron.errors import JNeuronError

        raise JNeuronError("plots need matplotlib (a jneuron dependency): pip install matplotlib") from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def bars(labels: Sequence[str], values: Sequence[float], *, title: str = "", xlabel: str = "score",
         groups: Sequence[str] | None = None) -> bytes:
    """Horizontal bars, best at the top, one per labelled neuron (coloured by ``groups``, e.g. model)."""
    plt = _pyplot()
    count = len(labels)
    figure, axes = plt.subplots(figsize=(7, 0.28 * count + 1.2))
    palette = plt.get_cmap("tab10")
    keys = sorted(set(groups)) if groups is not None else []  # stable colours per group across charts
    colours = [palette(keys.index(g) % 10) for g in groups] if groups is not None else [palette(0)] * count
    axes.barh(np.arange(count), np.asarray(values, float), color=colours)
    axes.set_yticks(np.arange(count), labels=list(labels), fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    if groups is not None and 1 < len(keys) <= 12:
        handles = [plt.Rectangle((0, 0), 1, 1, color=palette(i % 10)) for i in range(len(keys))]
        axes.legend(handles, keys, fontsize=7, loc="lower right")
    return _png(figure)


def heatmap(matrix, rows: Sequence[str], columns: Sequence[str], *, title: str = "",
            vmin: float | None = None, vmax: float | None = None) -> bytes:
    """A labelled matrix with a colour bar and the values written in small matrices."""
    plt = _pyplot()
    values = np.asarray(matrix, float)
    height = max(2.5, 0.35 * len(rows) + 1.5)
    figure, axes = plt.subplots(figsize=(max(3.5, 0.45 * len(columns) + 2.5), height))
    image = axes.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    axes.set_xticks(np.arange(len(columns)), labels=list(columns), rotation=45, ha="right", fontsize=8)
    axes.set_yticks(np.arange(len(rows)), labels=list(rows), fontsize=8)
    if values.size <= 144:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                axes.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white")
    figure.colorbar(image, ax=axes)
    axes.set_title(title)
    return _png(figure)


def curves(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "",
           xlabel: str = "", ylabel: str = "") -> bytes:
    """Line plots, one per named ``(x, y)`` series (e.g. accuracy as neurons are ablated)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 3.8))
    for name, (x, y) in series.items():
        axes.plot(np.asarray(x, float), np.asarray(y, float), marker="o", markersize=3, label=name)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if series:
        axes.legend(fontsize=8)
    return _png(figure)


def grouped_counts(counts: Mapping[str, Mapping[str, float]], *, title: str = "", ylabel: str = "neurons") -> bytes:
    """Bars per class, one bar per group (e.g. neurons per class, per model)."""
    plt = _pyplot()
    classes = list(counts)
    groups = list(dict.fromkeys(g for per_class in counts.values() for g in per_class))
    figure, axes = plt.subplots(figsize=(max(4.5, 0.5 * len(classes) * max(1, len(groups)) + 2), 3.8))
    width = 0.8 / max(1, len(groups))
    for k, group in enumerate(groups):
        heights = [float(counts[c].get(group, 0)) for c in classes]
        axes.bar(np.arange(len(classes)) + k * width - 0.4 + width / 2, heights, width, label=group)
    axes.set_xticks(np.arange(len(classes)), labels=classes, rotation=45 if len(classes) > 12 else 0)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if len(groups) > 1:
        axes.legend(fontsize=8)
    return _png(figure)


def image_png(image, *, scale: int = 1) -> bytes:
    """A small grayscale image (e.g. an 8x8 digit) as PNG bytes, each pixel ``scale`` pixels wide."""
    plt = _pyplot()
    pixels = np.asarray(image, float)
    pixels = np.kron(pixels, np.ones((scale, scale))) if scale > 1 else pixels
    buffer = io.BytesIO()
    plt.imsave(buffer, pixels, cmap="gray_r", format="png", vmin=0.0, vmax=max(1e-12, float(pixels.max())))
    return buffer.getvalue()
