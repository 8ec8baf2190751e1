"""The report section of ``jneuron study-probing``: its ``probing.json`` as a table, plots and a summary.

:func:`add_probing` is registered with :func:`jneuron.report.register` for dicts with ``"study": "probing"``,
so ``jneuron report OUT`` picks the file up; the study writes the same plots and summary beside it.
"""

from __future__ import annotations

import html
from collections.abc import Mapping

import numpy as np

from jneuron.report.figures import png


def is_probing(data: Mapping) -> bool:
    """Whether a result dict is a ``study-probing`` result."""
    return data.get("study") == "probing"


def add_probing(report, data: Mapping, name: str = "") -> None:
    """Add the probing study's section to ``report`` (a :class:`jneuron.report.Report`)."""
    report.add_html("Probing study" + (f" ({name})" if name else ""),
                    "<pre>" + html.escape(render_summary(data)) + "</pre>")
    header = ("property", "accuracy", "control accuracy", "majority", "selectivity")
    rows = [(v["title"], v["accuracy"], v["control_accuracy"], v["majority"], v["selectivity"])
            for v in data["properties"].values()]
    report.add_table("Probing study: probes against the control task", header, rows,
                     caption="Held-out accuracy of elastic-net probes on MLP neurons (Dalvi et al., 2019) "
                             "against the same probe on Hewitt & Liang's control task (labels drawn per word "
                             "type) and the majority class; selectivity = accuracy - control accuracy.",
                     images=list(plots(data).values()))


def plots(result: dict) -> dict[str, bytes]:
    """``probing_accuracy.png`` (accuracy, control accuracy, majority per property), ``probing_overlap.png``
    (Jaccard overlap of the top sets) and ``probing_ablation.png`` (1 - cosine per neuron set and mode)."""
    from jneuron.report import plots as p

    props = result["properties"]
    accuracy = {name: {"probe": v["accuracy"], "control task": v["control_accuracy"], "majority": v["majority"]}
                for name, v in props.items()}
    names = result["overlap"]["names"]
    return {
        "probing_accuracy.png": p.grouped_counts(accuracy, title="Held-out probe accuracy", ylabel="accuracy"),
        "probing_overlap.png": p.heatmap(result["overlap"]["jaccard"], names, names, vmin=0, vmax=1,
                                         title=f"Overlap (Jaccard) of the top {result['top_count']} neurons"),
        "probing_ablation.png": _ablation_plot(result),
    }


def _ablation_plot(result: dict) -> bytes:
    """1 - cosine per property's top and bottom set and the random sets, one panel per mode, log scale."""
    from matplotlib.figure import Figure

    ablation = result["ablation"]
    figure = Figure(figsize=(10, 3.8))
    panels = figure.subplots(1, 2, sharey=True)
    for axes, mode in zip(panels, ("zero", "mean")):
        props = ablation[mode]["properties"]
        spots = np.arange(len(props))
        for k, which in enumerate(("top", "bottom")):
            axes.bar(spots + (k - 0.5) * 0.4, [1 - v[which] for v in props.values()], 0.4, label=which)
        for r, value in enumerate(ablation[mode]["random"]):
            axes.axhline(1 - value, color="gray", linewidth=0.8, label="random sets" if r == 0 else None)
        axes.set_yscale("log")
        axes.set_xticks(spots, labels=list(props))
        axes.set_title(f"{mode} ablation of {result['top_count']} MLP neurons")
        axes.legend(fontsize=8)
    panels[0].set_ylabel("1 - cosine to the intact embedding")
    return png(figure)


def render_summary(result: dict) -> str:
    """The written summary (Markdown), every number from ``result``."""
    props, ablation = result["properties"], result["ablation"]
    lines = [
        "# Probing study: word properties in a transformer's MLP neurons (generated)",
        "",
        (f"Model {result['checkpoint']}: {result['neurons']} MLP neurons after GELU ({len(result['layers'])} layers). "
        f"{result['sentences']['train']} training and {result['sentences']['test']} held-out sentences of Python's "
        f"help text ({result['words']['train']} and {result['words']['test']} words), seed {result['seed']}. "
        f"Elastic-net probes (l1 {result['probe']['l1']:g}, l2 {result['probe']['l2']:g}, "
        f"{result['probe']['epochs']} epochs, Adam 1e-3, batch 32). Control task: labels drawn per word type "
        "(Hewitt & Liang 2019); selectivity = accuracy - control accuracy."),
        "",
        ("| property | classes | held-out words | accuracy | majority | control accuracy | selectivity |"
        " neurons for 50% of the weight |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, v in props.items():
        lines.append(f"| {v['title']} | {len(v['classes'])} | {v['test_words']} | {v['accuracy']:.3f} | "
                     f"{v['majority']:.3f} | {v['control_accuracy']:.3f} | {v['selectivity']:+.3f} | "
                     f"{v['neurons_for_half_mass']} |")
    lines += ["", f"## Ablating {result['top_count']} neurons inside the model", "",
              ("Mean cosine between the ablated and the intact model's sentence embeddings (mean pooling) on the "
              "held-out sentences; lower moves the embedding more."), "",
              "| neurons | zero ablation | mean ablation |", "| --- | --- | --- |"]
    for name in props:
        for which in ("top", "bottom"):
            lines.append(f"| {name} {which} | {ablation['zero']['properties'][name][which]:.4f} | "
                         f"{ablation['mean']['properties'][name][which]:.4f} |")
    lines.append(f"| random (mean of {len(ablation['zero']['random'])}; min) | {ablation['zero']['random_mean']:.4f}; "
                 f"{ablation['zero']['random_min']:.4f} | {ablation['mean']['random_mean']:.4f}; "
                 f"{ablation['mean']['random_min']:.4f} |")
    off = result["off_word_means"]
    hit = {name: n for name, n in off["per_set"].items() if n}
    lines += ["", f"{len(off['neurons'])} neurons have a mean over all valid positions (special tokens included) "
              "more than 5 standard deviations + 0.05 away from their mean over words (large values on [CLS]/[SEP] "
              "only); mean ablation puts that value at every word. Sets holding such neurons: "
              + (", ".join(f"{name} ({n})" for name, n in hit.items()) or "none") + "."]
    lines += ["", "## Top neurons", ""]
    for name, v in props.items():
        lines.append(f"- {v['title']}: per layer {v['top_per_layer']}; first {', '.join(v['top_neurons'][:8])}")
    lines += ["", (f"Finished in {result['wall_seconds']:.0f} s wall, {result['cpu_seconds']:.0f} s CPU. Plots: "
              "`probing_accuracy.png`, `probing_overlap.png`, `probing_ablation.png`; numbers: `probing.json`."), ""]
    return "\n".join(lines)


