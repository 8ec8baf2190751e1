"""The report section of ``jneuron study-crosslm``: its ``crosslm.json`` as curves and tables.

:func:`add_crosslm` adds the erasure curves (one plot per ranking: held-out perplexity against the share
erased, top-ranked, bottom-ranked and random first), the perplexity and control tables and, for ON-LSTM
models, the tree agreement. It is registered with :func:`jneuron.report.register` for dicts with
``"study": "crosslm"``, so ``jneuron report OUT`` picks the file up.

>>> from jneuron.report import Report
>>> data = {"study": "crosslm", "fractions": [0.0, 0.2], "intact_mean": 100.0,
...         "models": [{"name": "lm0", "seed": 0, "heldout_perplexity": 100.0}],
...         "erasure_mean": {"maxcorr": {"top": [100.0, 130.0], "bottom": [100.0, 105.0], "random": [100.0, 115.0]}},
...         "at_20": {"maxcorr": {"top": 130.0, "bottom": 105.0, "random": 115.0}}, "control": [], "syntax": None}
>>> report = Report()
>>> report.add_result(data)
>>> [s.title for s in report.sections]
['Cross-LM erasure: maxcorr', 'Cross-LM study: perplexities, control']
"""

from __future__ import annotations

import html
from collections.abc import Mapping


def is_crosslm(data: Mapping) -> bool:
    """Whether a result dict is a ``study-crosslm`` result."""
    return data.get("study") == "crosslm"


def add_crosslm(report, data: Mapping, name: str = "") -> None:
    """Add the cross-LM study's sections to ``report`` (a :class:`jneuron.report.Report`)."""
    percent = [100 * f for f in data["fractions"]]
    for ranking, curves in data["erasure_mean"].items():
        what = "directions" if ranking == "svcca" else "neurons"
        report.add_curves(f"Cross-LM erasure: {ranking}",
                          {f"{kind} first": (percent, values) for kind, values in curves.items()},
                          xlabel=f"% of {what} erased", ylabel="held-out perplexity (mean over models)",
                          caption=f"Intact perplexity {data['intact_mean']:.1f}. Bau et al. (2019), Figure 4 shape.")
    rows = "".join(f"<tr><td>{html.escape(m['name'])}</td><td>{m['seed']}</td>"
                   f"<td>{m['heldout_perplexity']:.2f}</td></tr>" for m in data["models"])
    body = f'<table class="ranking"><tr><th>model</th><th>seed</th><th>held-out perplexity</th></tr>{rows}</table>'
    rows = "".join(f"<tr><td>{html.escape(r)}</td><td>{v['top']:.2f}</td><td>{v['bottom']:.2f}</td>"
                   f"<td>{v['random']:.2f}</td></tr>" for r, v in data["at_20"].items())
    body += ("<h3>Erasing 20%</h3><table class=\"ranking\"><tr><th>ranking</th><th>top</th><th>bottom</th>"
             f"<th>random (mean)</th></tr>{rows}</table>")
    if data["control"]:
        rows = "".join(
            f"<tr><td>{c['group']}</td><td>{report.neuron_link(c['neuron'])}</td><td>{c['v']:+g}</td>"
            f"<td>{c['kl']:.4f}</td>"
            f"<td>{html.escape(', '.join(p['word'] for p in c['promoted']))}</td>"
            f"<td>{html.escape(', '.join(p['word'] for p in c['demoted']))}</td>"
            f"<td>{html.escape(', '.join(c['highest_after']))}</td></tr>" for c in data["control"])
        body += ("<h3>Controlling single neurons (mean + v std)</h3><table class=\"ranking\"><tr><th>MaxCorr</th>"
                 "<th>neuron</th><th>v</th><th>KL</th><th>promoted words</th><th>demoted words</th>"
                 f"<th>highest after</th></tr>{rows}</table>")
    syntax = data.get("syntax")
    if syntax:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in syntax["mean"].items())
        body += (f"<h3>ON-LSTM trees on {syntax['sentences']} held-out sentences</h3>"
                 f'<table class="ranking">{rows}</table>')
        if syntax.get("example"):
            body += f"<p><code>{html.escape(syntax['example']['tree'])}</code></p>"
    report.add_html("Cross-LM study: perplexities, control", body)
