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
    """Horizontal bars, best at the top, one per labelled neuron (coloured by ``groups``, e.g. model).

    The axis spans the values (not from 0) when they are close together, so 0.90 and 0.97 look different;
    each bar carries its value, and the legend sits outside the bars.
    """
    plt = _pyplot()
    count = len(labels)
    values = np.asarray(values, float)
    figure, axes = plt.subplots(figsize=(8, 0.3 * count + 1.4))
    palette = plt.get_cmap("tab10")
    keys = list(dict.fromkeys(groups)) if groups is not None else []  # colours by first appearance
    colours = [palette(keys.index(g) % 10) for g in groups] if groups is not None else [palette(0)] * count
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    span = high - low
    start = 0.0
    if low > 0 and span < 0.5 * high:  # close together, far from 0: zoom in
        start = max(0.0, low - max(0.15 * span, 0.01 * high))
    elif high < 0 and span < 0.5 * abs(low):
        start = min(0.0, high + max(0.15 * span, 0.01 * abs(low)))
    axes.barh(np.arange(count), np.nan_to_num(values - start), left=start, color=colours)
    axes.set_yticks(np.arange(count), labels=list(labels), fontsize=8)
    axes.invert_yaxis()
    pad = 0.12 * (max(high, start) - min(low, start) or 1.0)
    axes.set_xlim(min(low, start) - (pad if low < 0 else 0), max(high, start) + pad)
    for y, v in enumerate(values):
        if np.isfinite(v):
            axes.text(v, y, f" {v:.3f}" if v >= 0 else f"{v:.3f} ", va="center", ha="left" if v >= 0 else "right",
                      fontsize=7)
    axes.set_xlabel(xlabel + (f" (axis from {start:.3g})" if start else ""))
    axes.set_title(title)
    if groups is not None and 1 < len(keys) <= 12:
        handles = [plt.Rectangle((0, 0), 1, 1, color=palette(i % 10)) for i in range(len(keys))]
        axes.legend(handles, keys, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(figure)


def text_colour(rgba) -> str:
    """Black on light colours, white on dark ones (by relative luminance).

    >>> text_colour((1.0, 1.0, 0.0, 1.0)), text_colour((0.1, 0.0, 0.3, 1.0))
    ('black', 'white')
    """
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3])
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "white"


def heatmap(matrix, rows: Sequence[str], columns: Sequence[str], *, title: str = "",
            vmin: float | None = None, vmax: float | None = None) -> bytes:
    """A labelled matrix with a colour bar and, in small matrices, each value in a colour readable on its cell."""
    plt = _pyplot()
    values = np.asarray(matrix, float)
    height = max(2.5, 0.4 * len(rows) + 1.5)
    figure, axes = plt.subplots(figsize=(max(3.5, 0.55 * len(columns) + 3.0), height))
    image = axes.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    axes.set_xticks(np.arange(len(columns)), labels=list(columns), rotation=45, ha="right", fontsize=8)
    axes.set_yticks(np.arange(len(rows)), labels=list(rows), fontsize=8)
    if values.size <= 196:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                axes.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                          color=text_colour(image.cmap(image.norm(v))))
    figure.colorbar(image, ax=axes)
    axes.set_title(title)
    return _png(figure)


def curves(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "",
           xlabel: str = "", ylabel: str = "", baseline: float | None = None) -> bytes:
    """Line plots, one per named ``(x, y)`` series (e.g. accuracy as neurons are ablated); the legend sits
    outside the plot, and ``baseline`` (e.g. the intact model's accuracy) is drawn dashed."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 4))
    for name, (x, y) in series.items():
        y = np.array([np.nan if v is None else v for v in np.ravel(np.asarray(y, dtype=object))], float)
        axes.plot(np.asarray(x, float), y, marker="o", markersize=3, label=name)
    if baseline is not None:
        axes.axhline(float(baseline), color="gray", linestyle="--", linewidth=1, label="intact")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if series:
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(figure)


def grouped_counts(counts: Mapping[str, Mapping[str, float]], *, title: str = "", ylabel: str = "neurons",
                   xlabel: str = "class") -> bytes:
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
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if len(groups) > 1:
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(figure)


def histogram(values: Sequence[float], *, title: str = "", xlabel: str = "", ylabel: str = "count",
              bins: int = 30) -> bytes:
    """A histogram of ``values``."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 3.2))
    axes.hist(np.asarray(values, float), bins=bins, color="#4c72b0")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    return _png(figure)


def image_png(image, *, scale: int = 1) -> bytes:
    """A small grayscale image (e.g. an 8x8 digit) as PNG bytes, each pixel ``scale`` pixels wide."""
    plt = _pyplot()
    pixels = np.asarray(image, float)
    pixels = np.kron(pixels, np.ones((scale, scale))) if scale > 1 else pixels
    buffer = io.BytesIO()
    plt.imsave(buffer, pixels, cmap="gray_r", format="png", vmin=0.0, vmax=max(1e-12, float(pixels.max())))
    return buffer.getvalue()
