"""The top-activating-tokens view of one neuron: each top token in its context, coloured by activation.

Rows, sentences and words are counted from 1 on the page (row 1 is the first token).

>>> html = neuron_view_html("m/0", ["the", "cat", "sat"], [0.1, 2.0, -1.0], sentence=[0, 0, 0], top=1, window=1)
>>> 'class="tok peak"' in html and "cat" in html and "#1, row 2, sentence 1, word 2" in html
True
"""

from __future__ import annotations

import base64
import html as _html
from collections.abc import Sequence

import numpy as np


def _colour(value: float, scale: float) -> str:
    """Red for positive, blue for negative activations, opacity by size relative to ``scale``."""
    share = 0.0 if scale <= 0 else min(1.0, abs(value) / scale)
    rgb = "220,50,32" if value >= 0 else "30,90,200"
    return f"rgba({rgb},{share:.3f})"


def top_token_rows(values, top: int) -> np.ndarray:
    """Rows of the ``top`` largest activations, largest first (ties by row)."""
    values = np.asarray(values, float)
    return np.lexsort((np.arange(len(values)), -values))[:top]


def neuron_view_html(neuron: str, tokens: Sequence[str], values, *, sentence=None, labels=None,
                     images=None, top: int = 10, window: int = 6) -> str:
    """An HTML fragment: the ``top`` tokens by activation of one neuron, each with its context.

    Args:
      neuron: the neuron's label (e.g. ``"mlp0/layers/1/17"``).
      tokens: one string per row.
      values: the neuron's activation on every row.
      sentence: sentence id per row, counted from 0 (a store's ids: the line of the text file); context
        stays within a sentence and each top token says its sentence and word, counted from 1 (default:
        one long sequence, and only the row is said).
      labels: optional label per row, shown beside each top token.
      images: optional small image per row (e.g. a digit), drawn inside the token.
      top: how many top tokens to show; window: context tokens each side.
    """
    values = np.asarray(values, float)
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} tokens but {len(values)} activation values")
    given = None if sentence is None else np.asarray(sentence)
    sentence = np.zeros(len(values), np.int64) if given is None else given
    scale = float(np.max(np.abs(values))) if len(values) else 0.0
    rows = []
    for rank, row in enumerate(top_token_rows(values, top)):
        lo, hi = max(0, row - window), min(len(values), row + window + 1)
        context = [k for k in range(lo, hi) if sentence[k] == sentence[row]]
        spans = "".join(_token(k, k == row, tokens, values, scale, images) for k in context)
        label = f' <span class="label">{_html.escape(str(labels[row]))}</span>' if labels is not None else ""
        rows.append(
            f'<li class="context" data-row="{row + 1}"><span class="value">{values[row]:+.3f}</span> '
            f'<span class="where">#{rank + 1}, {_where(row, given)}</span>{label}<div class="line">{spans}</div></li>'
        )
    return (
        f'<div class="neuron-view{" images" if images is not None else ""}" data-neuron="{_html.escape(neuron)}">'
        f'<p>Neuron <b>{_html.escape(neuron)}</b>: '
        f"its top {len(rows)} tokens in context (red: positive, blue: negative; peak in bold).</p>"
        f'<ol class="contexts">{"".join(rows)}</ol></div>'
    )


def _where(row: int, sentence: np.ndarray | None) -> str:
    """Where a row is, counted from 1: ``"row 1260, sentence 49, word 7"`` (``"row 1260"`` without sentences)."""
    if sentence is None:
        return f"row {row + 1}"
    start = row
    while start > 0 and sentence[start - 1] == sentence[row]:
        start -= 1
    return f"row {row + 1}, sentence {int(sentence[row]) + 1}, word {row - start + 1}"


def _token(k: int, peak: bool, tokens, values, scale: float, images) -> str:
    title = f"row {k + 1}: {values[k]:+.4f}"
    picture = ""
    if images is not None:
        from jneuron.report.plots import image_png

        data = base64.b64encode(image_png(images[k])).decode("ascii")
        picture = f'<img class="tokimg" alt="token {k + 1}" src="data:image/png;base64,{data}">'
    text = _html.escape(str(tokens[k]))
    cls = "tok peak" if peak else "tok"
    return f'<span class="{cls}" title="{title}" style="background:{_colour(values[k], scale)}">{picture}{text}</span> '
