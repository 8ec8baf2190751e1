"""Gather results into one self-contained HTML file: plots embedded, no network, no server.

A :class:`Report` is a list of sections. Add them directly (``add_ranking``, ``add_heatmap``,
``add_curves``, ``add_class_counts``, ``add_neuron_view``, ``add_table``, ``add_html``) or from result
objects and result JSON files with :meth:`Report.add_result`, which knows the shape of every result a
jneuron command writes:

- rankings (a :class:`~jneuron.results.Ranking` or its ``to_dict()``: MaxCorr, MinCorr, LinReg, the
  information measures, probe ordering, probeless, conductance): top neurons as bars and a table;
- similarity matrices (``{"metric", "names_a", "names_b", "values"}``, or ``{"matrix", "rows",
  "columns"}``): a heatmap;
- matches (``{"method", "total", "pairs"}``), probes (``{"grid", "ordering", ...}`` and the demo's
  ``{"keep", "retrain"}`` ablation tables), information measures (``{"unit", "label_entropy",
  "neurons"}``), cumulative ablation (``{"ks", "curves": [...]}``), ablation curves (``{"ks", "values",
  "scope"}`` and a mapping of them), the studies' summaries and the rejuvenation history;
- the generic ``{"curves": {name: {"x", "y"}}}``, ``{"class_counts": {...}}`` and ``{"neuron_view": {...}}``;
- a command's run record (``{"jneuron_run": {...}}``): shown in the run metadata table.

Every shape may carry ``"title"`` and ``"caption"``; further shapes plug in with :func:`register`. Every
string that comes from data is escaped. The page has sortable tables, a neuron search box and a view of
every neuron a table or chart shows (its rank in each analysis; its top tokens in context with
:meth:`Report.add_store_views`), opened by the neuron's links, in plain JavaScript.

>>> import numpy as np, tempfile, os
>>> report = Report("demo")
>>> report.add_heatmap("similarity", np.eye(2), ["a", "b"], ["a", "b"])
>>> path = report.write(os.path.join(tempfile.mkdtemp(), "report.html"))
>>> path.name, "data:image/png;base64," in path.read_text()
('report.html', True)
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jneuron import config
from jneuron.data.labels import counted
from jneuron.errors import JNeuronError
from jneuron.report import plots
from jneuron.report.neuron_view import neuron_view_html

_HANDLERS: list[tuple[Callable[[dict], bool], Callable[[Report, dict, str], None]]] = []
TOP = 20  # neurons in every ranking's chart and table

# What each method measures, shown under its section (the first sentence names the paper).
CAPTIONS = {
    "maxcorr": "MaxCorr (Bau et al., 2019): a neuron's highest |Pearson correlation| with any neuron of any other "
               "model. High: the feature it carries is learned again by other models.",
    "mincorr": "MinCorr (Bau et al., 2019): over the other models, the lowest of the neuron's best |correlation| in "
               "each. High only when every other model has a close partner.",
    "linreg_min": "LinReg (Bau et al., 2019): R\u00b2 of predicting the neuron linearly from all neurons of another "
                  "model, the worst over the other models.",
    "linreg_max": "LinReg (Bau et al., 2019): R\u00b2 of predicting the neuron linearly from all neurons of another "
                  "model, the best over the other models.",
    "mutual_information": "Mutual information I(T; Y) between the neuron's quantized output T and the label Y "
                          "(Amjad et al., 2018), at most H(Y).",
    "kl_selectivity": "KL selectivity (Amjad et al., 2018): the largest, over classes y, divergence "
                      "D(P(T | y) || P(T)) of the neuron's output distribution.",
    "entropy": "Entropy H(T) of the neuron's quantized output (Amjad et al., 2018); 0 for a neuron in one bin.",
    "selectivity": "Class selectivity (Morcos et al., 2018): (largest class mean - mean of the other class means) / "
                   "their sum. In [0, 1] for non-negative outputs only; on signed activations the denominator can be "
                   "near 0 and the index unbounded.",
    "probe_ordering": "Elastic-net probe ordering (Dalvi et al., 2019): neurons in the order they join the top set as "
                      "the weight-mass share grows; the bar is 1 - that share (longer: joins earlier).",
    "probe_ordering_granular": "Elastic-net probe ordering, granular (Dalvi et al., 2019); the bar is 1 - the "
                               "weight-mass share at which the neuron joins.",
    "probeless": "Probeless ranking (Antverg & Belinkov, 2022): the summed distance between the neuron's class means, "
                 "no probe trained.",
    "conductance": "Conductance (Dhamdhere et al., 2019): the neuron's share of the integrated-gradients attribution "
                   "of the output, summed over inputs.",
    "svcca": "SVCCA (Raghu et al., 2017): mean canonical correlation after keeping the top singular directions of "
             "each layer (99% of the variance by default).",
    "cca": "CCA: mean canonical correlation between the two layers' activations (Raghu et al., 2017).",
    "pwcca": "PWCCA (Morcos et al., 2018): canonical correlations weighted by how much of the row layer each "
             "direction explains.",
    "cka": "Linear CKA (Kornblith et al., 2019): similarity of the layers' token-by-token Gram matrices, "
           "invariant to rotation and isotropic scaling.",
    "cka_debiased": "Debiased linear CKA (Kornblith et al., 2019; Song et al., 2012): CKA with the finite-sample "
                    "bias of HSIC removed (can fall below 0).",
    "match": "Neuron matching (Li et al., 2016, convergent learning): units of two networks paired by correlation, "
             "one-to-one (bipartite) or each to its best partner (semi).",
    "cumulative_ablation": "Cumulative ablation (Amjad et al., 2018): accuracy as neurons are removed in the order "
                           "of each measure, zeroed (zero) or replaced by their mean with the bias balanced (mean).",
    "ablation_curve": "Ablation (Bau et al., 2019): accuracy as neurons are removed in ranking order, top first vs "
                      "bottom first.",
    "rejuvenation": "Neural Rejuvenation (Qiao et al., 2019): utilization (share of live BatchNorm scales) and test "
                    "accuracy per epoch; dead neurons are revived at the dashed line.",
}


def register(accepts: Callable[[dict], bool], add: Callable[[Report, dict, str], None]) -> None:
    """Teach :meth:`Report.add_result` a new result shape: ``add(report, result, name)`` when ``accepts(result)``."""
    _HANDLERS.insert(0, (accepts, add))


def escape(value) -> str:
    """Any value as HTML text, quotes included (for element text and attribute values alike)."""
    return html.escape(str(value), quote=True)


@dataclass
class _Section:
    title: str
    body: str  # HTML; image k is referenced as {img:k}
    images: list[bytes] = field(default_factory=list)
    kind: str = "section"


class Report:
    """Sections of plots and tables gathered into one page; see the module docstring.

    Args:
      title: the page title.
      intro: a paragraph under the title.
      metadata: run facts shown in a table (version, date and command are added).
    """

    def __init__(self, title: str = "jneuron report", intro: str = "", metadata: Mapping | None = None):
        self.title = title
        self.intro = intro
        self.metadata = dict(metadata or {})
        self.runs: list[dict] = []
        self.sections: list[_Section] = []
        self.neurons: dict[str, dict[str, str]] = {}  # label -> analysis -> "rank r of n, score s"
        self.views: dict[str, str] = {}  # label -> top-tokens HTML
        self.covered: set[str] = set()  # ranking methods already shown (information.json's measures)
        self.shown: dict[str, str] = {}  # label -> anchor of its view: every neuron the page shows, in order

    def neuron_link(self, label, *, partner: bool = False) -> str:
        """A link to the view of neuron ``label`` (the page gets that view); ``partner``: a link that does not
        name its table row for the search box (a partner listed beside the row's neuron)."""
        label = str(label)
        if label not in self.shown:
            taken, anchor, k = set(self.shown.values()), _anchor(label), 1
            while anchor in taken:  # "m0/3" and "m0-3" both clean to n-m0-3
                k += 1
                anchor = f"{_anchor(label)}-{k}"
            self.shown[label] = anchor
        kind = "neuron-link partner" if partner else "neuron-link"
        return f'<a class="{kind}" href="#{escape(self.shown[label])}">{escape(label)}</a>'

    # --- sections -------------------------------------------------------------------------------------
    def _add(self, kind: str, title: str, caption: str | None, images: Sequence[bytes] = (), html_body: str = ""):
        body = f'<p class="caption">{escape(caption)}</p>' if caption else ""
        for k, _ in enumerate(images):
            body += f'<img class="plot" src="{{img:{k}}}" alt="{escape(title)}">'
        self.sections.append(_Section(title, body + html_body, list(images), kind))

    def add_ranking(self, ranking, *, title: str | None = None, top: int = TOP, caption: str | None = None,
                    chart: bool = True) -> None:
        """Bars (unless not ``chart``) and a sortable table of the ``top`` neurons of a ranking (a Ranking or its
        ``to_dict()``)."""
        if hasattr(ranking, "top"):  # a Ranking object: only its top records are built
            data = {"method": ranking.method, "descending": ranking.descending, "neurons": ranking.top(top),
                    "total": len(ranking.scores)}
        else:
            data = ranking
        every = list(data["neurons"])
        records = every[:top]
        if not records:
            raise JNeuronError("cannot plot an empty ranking")
        method = str(data.get("method", "ranking"))
        total = int(data.get("total", len(every)))
        title = title or data.get("title") or f"{_display(method)}: top {len(records)} of {total} neurons"
        for r in every:
            self.neurons.setdefault(str(r["label"]), {})[_display(method)] = \
                f"rank {r.get('rank', 0) + 1} of {total}, score {_number(r.get('score'))}"
        scores = np.array([np.nan if r["score"] is None else float(r["score"]) for r in records])
        xlabel, score_name = f"{_display(method)} score", "score"
        if not data.get("descending", True) and method.startswith("probe_ordering"):
            scores, xlabel = 1.0 - scores, "1 - weight-mass share at entry (longer: joins earlier)"
            score_name = "weight-mass share at entry"
        pngs = [plots.bars([str(r["label"]) for r in records], scores, title=title, xlabel=xlabel,
                           groups=[str(r.get("model", "")) for r in records])] if chart else []
        extra = [k for k in ("step", "mutual_information", "kl_selectivity", "entropy", "selectivity")
                 if k in records[0] and k != method]
        partners = any(r.get("partners") for r in records)
        header = ["rank", "neuron", score_name, *extra] + (["partners (every other model)"] if partners else [])
        rows = [[r.get("rank", i) + 1, self.neuron_link(r["label"]), _number(r["score"]),
                 *(_number(r.get(k)) for k in extra)] + ([self._partners(r)] if partners else [])
                for i, r in enumerate(records)]
        dead = len(data.get("dead") or ())
        note = f'<p class="note">The top {len(records)} of {total}; every neuron is in the result files.' + (
            f" {dead} constant neurons (every value within {config.CONSTANT_ROUNDINGS} roundings of their magnitude)"
            " get the method's neutral score and rank last, as in every analysis." if dead
            else "") + "</p>"
        self._add("ranking", title, caption or data.get("caption") or CAPTIONS.get(method), pngs,
                  _table(header, rows) + note)

    def _partners(self, record: Mapping) -> str:
        return ", ".join(f"{self.neuron_link(p['label'], partner=True)} ({_number(p.get('rho'))})"
                         for p in record.get("partners") or [])

    def add_heatmap(self, title: str, matrix, rows: Sequence[str], columns: Sequence[str], *,
                    caption: str | None = None, vmin: float | None = None, vmax: float | None = None) -> None:
        """A labelled matrix (e.g. similarity between layers or models)."""
        values = np.asarray(matrix, float)
        if values.shape != (len(rows), len(columns)):
            raise JNeuronError(f"heatmap '{title}': matrix {values.shape} but {len(rows)} rows, {len(columns)} columns")
        png = plots.heatmap(values, [str(r) for r in rows], [str(c) for c in columns], title=title, vmin=vmin,
                            vmax=vmax)
        self._add("heatmap", title, caption, [png])

    def add_curves(self, title: str, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                   xlabel: str = "", ylabel: str = "", caption: str | None = None, baseline: float | None = None) -> None:
        """Line plots (e.g. accuracy against the fraction of neurons ablated)."""
        png = plots.curves(series, title=title, xlabel=xlabel, ylabel=ylabel, baseline=baseline)
        self._add("curves", title, caption, [png])

    def add_class_counts(self, title: str, counts: Mapping[str, float | Mapping[str, float]], *,
                         caption: str | None = None, ylabel: str = "neurons", xlabel: str = "class") -> None:
        """Neurons per class (values may be a count, or counts per group such as a model)."""
        grouped = {str(c): (dict(v) if isinstance(v, Mapping) else {"": v}) for c, v in counts.items()}
        self._add("class-counts", title, caption,
                  [plots.grouped_counts(grouped, title=title, ylabel=ylabel, xlabel=xlabel)])

    def add_neuron_view(self, neuron: str, tokens: Sequence[str], values, *, title: str | None = None,
                        caption: str | None = None, **options) -> None:
        """Top-activating tokens of one neuron in context (options: sentence, labels, images, top, window)."""
        body = neuron_view_html(neuron, tokens, values, **options)
        self.neuron_link(neuron)  # listed with the other neurons, found by the search box
        self.views[str(neuron)] = body
        self._add("neuron-view", title or f"Top inputs of {neuron}", caption, (), body)

    def add_table(self, title: str, header: Sequence[str], rows: Sequence[Sequence], *, caption: str | None = None,
                  images: Sequence[bytes] = ()) -> None:
        """A sortable table of plain values (escaped), optionally under plots."""
        cells = [[_number(v) if isinstance(v, float) else escape(v) for v in row] for row in rows]
        self._add("table", title, caption, images, _table([escape(h) for h in header], cells, escaped=True))

    def add_html(self, title: str, body: str, *, caption: str | None = None) -> None:
        """A section of ready HTML (trusted: it is inserted as it is)."""
        self._add("html", title, caption, (), body)

    # --- results --------------------------------------------------------------------------------------
    def add_result(self, result, name: str = "") -> None:
        """Add a result object or dict by its shape (see the module docstring)."""
        data = result.to_dict() if hasattr(result, "to_dict") else result
        if not isinstance(data, Mapping):
            raise JNeuronError(f"result '{name}': expected a mapping or an object with to_dict(), got {type(data).__name__}")
        handler = _handler(data)
        if handler is None:
            raise JNeuronError(f"result '{name}': no report section knows this shape (keys {sorted(data)[:8]})")
        handler(self, data, name)

    def add_results(self, paths: Sequence[str | Path]) -> list[Path]:
        """Add every result JSON file given; a folder adds its ``*.json`` files (sorted), skipping files that
        are not jneuron results (returned). A folder holding no result at all is an error."""
        skipped = []
        for path in paths:
            path = Path(path)
            if not path.exists():
                raise JNeuronError(f"no such file or folder: {path}")
            files = sorted(path.glob("*.json"), key=_reading_order) if path.is_dir() else [path]
            loaded = [(file, _read(file)) for file in files]
            nested = [v for _, d in loaded if isinstance(d, Mapping) for v in d.values() if isinstance(v, Mapping)]
            added = 0
            for file, data in loaded:
                known = isinstance(data, Mapping) and _handler(data) is not None
                if not known and path.is_dir():
                    skipped.append(file)
                    continue
                if path.is_dir() and _is_curve(data) and any(data == v for v in nested):
                    continue  # drawn with the file that holds it (ablate's summary.json)
                if _is_ranking(data) and data["method"] in self.covered:
                    continue  # shown with information.json
                self.add_result(data, file.stem)
                added += 1
            if path.is_dir() and not added:
                raise JNeuronError(f"{path}: holds no jneuron result files (.json from maxcorr, similarity, probe, ...)")
        return skipped

    def add_store_views(self, store: str | Path, *, top: int = 8) -> None:
        """Top ``top`` tokens in context of every neuron the page shows (that has no view yet), from an
        activation store with token text; each of the store's layers is read once."""
        from jneuron.data.files import open_activations

        source = open_activations(store)
        if source.text is None:
            return
        text = source.text()
        wanted = [label for label in self.shown if label not in self.views]
        for column in source.columns:
            units = {int(unit): label for label, (layer, _, unit) in ((l, l.rpartition("/")) for l in wanted)
                     if layer == column.label and unit.isdigit() and int(unit) < column.width}
            if not units:
                continue
            values = column.read(0, source.tokens)
            for unit, label in units.items():
                self.views[label] = neuron_view_html(label, text.tokens, values[:, unit], sentence=text.sentence,
                                                     labels=text.labels, top=top, window=4)

    # --- page -----------------------------------------------------------------------------------------
    def html(self) -> str:
        """The page, images embedded as data URIs."""
        parts, toc = [], []
        for number, section in enumerate(self.sections, start=1):
            body = section.body
            for k, png in enumerate(section.images):
                body = body.replace(f"{{img:{k}}}", "data:image/png;base64," + base64.b64encode(png).decode("ascii"))
            anchor = f"s{number}"
            toc.append(f'<li><a href="#{anchor}">{escape(section.title)}</a></li>')
            parts.append(f'<section id="{anchor}" class="{section.kind}"><h2>{escape(section.title)}</h2>'
                         f"{body}</section>")
        intro = f"<p>{escape(self.intro)}</p>" if self.intro else ""
        example = next(iter(self.shown), "a neuron's label")
        return _PAGE.format(title=escape(self.title), intro=intro, meta=self._metadata_html(), toc="".join(toc),
                            body="\n".join(parts), neurons=self._neurons_html(), script=_SCRIPT, style=_STYLE,
                            script_hash=_SCRIPT_HASH, example=escape(example))

    def _metadata_html(self) -> str:
        from jneuron import __version__

        facts = {"jneuron": __version__, "written": datetime.datetime.now(datetime.timezone.utc)
                 .strftime("%Y-%m-%d %H:%M UTC"), **self.metadata}
        rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(_fact(v))}</td></tr>" for k, v in facts.items()
                       if v not in (None, ""))
        page = f'<table class="meta"><caption>This page</caption>{rows}</table>'
        for run in self.runs:
            cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(_fact(v))}</td></tr>" for k, v in run.items())
            page += f'<table class="meta"><caption>Run of {escape(run.get("command", "a command"))}</caption>{cells}</table>'
        return f'<details class="metadata" open><summary>Run metadata</summary>{page}</details>'

    def _neurons_html(self) -> str:
        """The view of every neuron the page shows: its rank and score in every analysis, its top inputs."""
        if not self.shown:
            return ""
        items = []
        for label, anchor in self.shown.items():
            ranks = "".join(f"<li>{escape(a)}: {escape(v)}</li>" for a, v in self.neurons.get(label, {}).items())
            ranks = f"<ul>{ranks}</ul>" if ranks else '<p class="note">In none of the rankings on this page.</p>'
            items.append(f'<details class="neuron" id="{escape(anchor)}" data-neuron="{escape(label)}">'
                         f"<summary>{escape(label)}</summary>{ranks}{self.views.get(label, '')}</details>")
        more = len(self.neurons.keys() - self.shown.keys())
        tail = f'<p class="note">{counted(more, "more ranked neuron")} not shown here: see the result files.</p>' \
            if more else ""
        return (f'<section id="neurons" class="neurons"><h2>Neurons</h2><p class="caption">The '
                f"{counted(len(items), 'neuron')} the tables and charts above show: each one's rank and score in "
                "every analysis, and its top inputs where the activations came with text. A neuron's link opens "
                f"its view; type in the search box to find one.</p>{''.join(items)}{tail}</section>")

    def write(self, path: str | Path) -> Path:
        """Write the page to ``path`` (``.html``; any other path is a folder, given ``index.html``), atomically."""
        from jneuron.data.atomic import atomic_write_text

        path = Path(path)
        if path.suffix.lower() not in (".html", ".htm"):
            path = path / "index.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, self.html())


def _handler(data: Mapping):
    for accepts, add in _HANDLERS:
        try:
            if accepts(data):
                return add
        except (KeyError, TypeError, AttributeError, IndexError):
            continue
    return None


# Sections of a folder come in this order (by file name), the rest alphabetically after them.
_ORDER = ("run_", "maxcorr", "mincorr", "model_similarity", "linreg", "similarity", "match", "neuron_view", "probe",
          "information", "ranking_", "cumulative_ablation", "curves", "study_summary", "summary", "ablation",
          "top_first", "bottom_first", "conductance", "rejuvenation")


def _reading_order(file: Path) -> tuple[int, str]:
    return next((i for i, prefix in enumerate(_ORDER) if file.stem.startswith(prefix)), len(_ORDER)), file.stem


def _read(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise JNeuronError(f"{file}: not a readable result JSON file: {' '.join(str(error).split())}") from None


def _display(method: str) -> str:
    names = {"maxcorr": "MaxCorr", "mincorr": "MinCorr", "linreg_min": "LinReg (min)", "linreg_max": "LinReg (max)",
             "probe_ordering": "Probe ordering", "probe_ordering_granular": "Probe ordering",
             "mutual_information": "Mutual information", "kl_selectivity": "KL selectivity", "entropy": "Entropy",
             "selectivity": "Class selectivity", "conductance": "Conductance", "probeless": "Probeless"}
    return names.get(method, method)


def _number(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    value = float(value)
    return "n/a" if not np.isfinite(value) else f"{value:.4f}"


def _fact(value) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fact(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_fact(v) for v in value)
    return str(value)


def _anchor(label) -> str:
    return "n-" + "".join(c if c.isalnum() else "-" for c in str(label))


def _table(header: Sequence[str], rows: Sequence[Sequence], *, escaped: bool = True) -> str:
    """A sortable table; ``header`` and ``rows`` are already HTML (escaped by the caller)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# --- result shapes ------------------------------------------------------------------------------------
def _is_ranking(data: Mapping) -> bool:
    neurons = data.get("neurons")
    return "method" in data and isinstance(neurons, list) and all("score" in n and "label" in n for n in neurons[:1])


def _is_curve(data) -> bool:
    return isinstance(data, Mapping) and {"ks", "values", "scope"} <= set(data) and "curves" not in data


def _similarity(report: Report, data: Mapping, name: str) -> None:
    metric = str(data["metric"])
    values = np.array([[np.nan if v is None else v for v in row] for row in data["values"]], float)
    title = data.get("title") or f"{metric.upper() if metric != 'cka' else 'Linear CKA'} between layers" + \
        (f" ({data['tokens']} tokens)" if "tokens" in data else "")
    low = min(0.0, float(np.nanmin(values))) if np.isfinite(values).any() else 0.0
    report.add_heatmap(title, values, data["names_a"], data["names_b"], vmin=low, vmax=1.0,
                       caption=data.get("caption") or CAPTIONS.get(metric))


def _match(report: Report, data: Mapping, name: str) -> None:
    pairs = sorted(data["pairs"], key=lambda p: -abs(p["rho"]))
    rows = [[report.neuron_link(p["x"]["label"]), report.neuron_link(p["y"]["label"]), _number(float(p["rho"]))]
            for p in pairs[:TOP]]
    png = plots.histogram([p["rho"] for p in pairs], title="correlation of the matched pairs", xlabel="rho",
                          ylabel="pairs")
    images = [png]
    sparse = data.get("sparse_prediction")
    if sparse:
        nonzero = np.array(sparse["nonzero"], float).mean(axis=1)
        r2 = np.array([[np.nan if v is None else v for v in row] for row in sparse["r2"]], float)
        images.append(plots.curves({"mean R\u00b2": (nonzero, np.nanmean(r2, axis=1))},
                                   title="sparse prediction: R\u00b2 against units used",
                                   xlabel="mean units used per prediction", ylabel="mean R\u00b2"))
    note = f'<p class="note">The {len(rows)} pairs of highest |rho| of {len(pairs)}; every pair is in the result ' \
        "files.</p>"
    report._add("table", data.get("title") or f"Neuron matching ({data['method']}), total rho {data['total']:.3f}",
                data.get("caption") or CAPTIONS["match"], images, _table(["x unit", "y unit", "rho"], rows) + note)


def _probe(report: Report, data: Mapping, name: str) -> None:
    grid = data["grid"]
    best = grid["best"]
    ordering = data["ordering"]
    which = "" if name == "probe" else f" ({name})"  # probe_<model>_<layer>: one probe per layer
    report.add_ranking(ordering, title=f"Probe neuron ordering{which}: top {min(TOP, len(ordering['neurons']))} of "
                                       f"{len(ordering['neurons'])} neurons (held-out accuracy {best['accuracy']:.3f})")
    top = data.get("top_neurons") or {}
    if top.get("counts"):
        report.add_class_counts(f"Neurons per class{which} ({100 * top['percentage']:g}% of each class's weight mass)",
                                top["counts"], caption="How many neurons hold each class's weight mass: few for a "
                                "focused class, many for a distributed one.", xlabel="class")
    rows = [[f"{l1:g}", f"{l2:g}", _cell(grid["accuracy"][i][j]), grid["neurons_needed"][i][j]]
            for i, l1 in enumerate(grid["l1"]) for j, l2 in enumerate(grid["l2"])]
    report.add_table(f"Probe penalty grid{which}", ["l1", "l2", "held-out accuracy", "neurons needed"], rows,
                     caption=f"Chosen: l1={best['l1']:g}, l2={best['l2']:g} (the sparsest setting within "
                             f"{grid['tolerance']:g} of the best accuracy).")


def _cell(value):
    return "n/a" if value is None else float(value)


def _probe_ablation(report: Report, data: Mapping, name: str) -> None:
    series = {}
    for key in ("keep", "retrain"):
        table = data.get(key)
        if not table:
            continue
        x = 100 * np.asarray(table["percentages"], float)
        for kind in ("top", "bottom", "random"):
            series[f"{table['mode']}: {kind} neurons"] = (x, table[kind])
    accuracy = data.get("accuracy")
    report.add_curves(data.get("title") or "Probe accuracy keeping a share of its neurons", series,
                      xlabel="% of neurons kept", ylabel="test accuracy", baseline=accuracy,
                      caption=data.get("caption") or "Elastic-net probe (Dalvi et al., 2019) restricted to the top, "
                      "bottom or random neurons of its ordering: zeroed out in the trained probe (keep) or a fresh "
                      "probe trained on them (retrain). Dashed: all neurons.")


def _information(report: Report, data: Mapping, name: str) -> None:
    """The four measures, each with its own cautions: a cut meant for sigmoid outputs under the quantized
    measures, the unbounded index on signed activations under class selectivity (a table, no chart)."""
    from jneuron.information import MEASURES

    neurons = data["neurons"]
    notes = [n if n.rstrip().endswith(".") else n.rstrip() + "." for n in map(str, data.get("warnings") or [])]
    cautions = {"selectivity": [n for n in notes if "class selectivity" in n]}
    cautions["quantized"] = [n for n in notes if n not in cautions["selectivity"]]
    if "selectivity" in neurons[0] and not cautions["selectivity"] and \
            any(not -1e-9 <= (n.get("selectivity") or 0) <= 1.0 + 1e-9 for n in neurons):
        cautions["selectivity"].append("Some class selectivity values lie outside [0, 1]: the activations are signed, "
                                       "where the index is unbounded.")
    facts = f" Unit: {data.get('unit', 'bits')}; H(Y) = {_number(data.get('label_entropy'))}; quantization: " \
        f"{_fact(data.get('quantization') or {})}."
    for measure in MEASURES:
        if measure not in neurons[0]:
            continue
        ranked = sorted(range(len(neurons)), key=lambda i: (-(neurons[i][measure] if neurons[i][measure] is not None
                                                              else -np.inf), i))
        records = [{**neurons[i], "rank": r, "score": neurons[i][measure]} for r, i in enumerate(ranked)]
        selectivity = measure == "selectivity"
        caution = cautions["selectivity" if selectivity else "quantized"]
        caption = CAPTIONS[measure] + ("" if selectivity else facts) + \
            (" Caution: " + " ".join(caution) if caution else "") + \
            (" No chart: the largest values of an unbounded index say little." if selectivity and caution else "")
        report.add_ranking({"method": measure, "neurons": records, "total": len(records)}, caption=caption,
                           chart=not (selectivity and caution))
        report.covered.add(measure)


def _cumulative(report: Report, data: Mapping, name: str) -> None:
    ks = data["ks"]
    for scope in ("network",):
        if scope not in ks:
            continue
        fraction = np.asarray(ks[scope], float) / max(float(ks[scope][-1]), 1.0)
        series = {}
        for curve in data["curves"]:
            if curve["scope"] != scope:
                continue
            label = curve["measure"] if curve["measure"] == curve["direction"] else \
                f"{curve['measure']}, {'highest' if curve['direction'] == 'descending' else 'lowest'} first"
            series[f"{label} ({curve['mode']})"] = (fraction, curve["values"])
        report.add_curves(data.get("title") or "Cumulative ablation over the whole network", series,
                          xlabel="fraction of neurons removed", ylabel=f"test {data.get('metric', 'accuracy')}",
                          baseline=data.get("baseline"), caption=data.get("caption") or CAPTIONS["cumulative_ablation"])


def _curve_series(curve: Mapping, name: str) -> dict:
    values = np.asarray(curve["values"], float)
    ks = np.asarray(curve["ks"], float)
    if values.ndim == 1:
        return {name: (ks, values)}
    return {f"{name}, {layer}": (ks, row) for layer, row in zip(curve.get("layers", []), values)}


def _ablation_curve(report: Report, data: Mapping, name: str) -> None:
    report.add_curves(data.get("title") or f"Ablation: {name.replace('_', ' ')}", _curve_series(data, name),
                      xlabel=f"neurons removed ({data['mode']}, {data['scope']})",
                      ylabel=str(data.get("metric", "accuracy")), baseline=data.get("baseline"),
                      caption=data.get("caption") or CAPTIONS["ablation_curve"])


def _ablation_curves(report: Report, data: Mapping, name: str) -> None:
    curves = {k: v for k, v in data.items() if _is_curve(v)}
    series = {}
    for key, curve in curves.items():
        series.update(_curve_series(curve, key.replace("_", " ")))
    first = next(iter(curves.values()))
    report.add_curves(data.get("title") or "Ablation curves", series,
                      xlabel=f"neurons removed ({first['mode']}, {first['scope']})",
                      ylabel=str(first.get("metric", "accuracy")), baseline=first.get("baseline"),
                      caption=data.get("caption") or CAPTIONS["ablation_curve"])


def _study_summary(report: Report, data: Mapping, name: str) -> None:
    rows = [[r["scope"], r["mode"], r["measure"], *(_cell(r.get(k)) for k in ("descending", "ascending", "gap", "random"))]
            for mode, table in data["summary"].items() for r in ({**row, "mode": mode} for row in table)]
    facts = ", ".join(f"{k}: {_fact(v)}" for k, v in data.items() if k != "summary")
    report.add_table("Information study: which measure predicts the accuracy drop",
                     ["scope", "mode", "measure", "highest first", "lowest first", "gap", "random"], rows,
                     caption=f"Mean test accuracy over the removal steps; the gap is lowest-first minus "
                             f"highest-first (larger: the measure tells important neurons apart better). {facts}.")


def _rejuvenation(report: Report, data: Mapping, name: str) -> None:
    history = data["history"]
    epochs = [h["epoch"] for h in history]
    series = {"test accuracy": (epochs, [h["accuracy"] for h in history]),
              "utilization": (epochs, [h["utilization"] for h in history])}
    report.add_curves("Neural Rejuvenation: accuracy and utilization per epoch", series, xlabel="epoch",
                      ylabel="share", caption=CAPTIONS["rejuvenation"] + f" Settings: {_fact(data.get('config', {}))}.",
                      baseline=None)


def _run(report: Report, data: Mapping, name: str) -> None:
    report.runs.append(dict(data["jneuron_run"]))


def _legacy_matrix(report: Report, d: Mapping, n: str) -> None:
    report.add_heatmap(d.get("title", n or "matrix"), d["matrix"], d["rows"], d["columns"], caption=d.get("caption"),
                       vmin=d.get("vmin"), vmax=d.get("vmax"))


def _neuron_view(report: Report, d: Mapping, n: str) -> None:
    view = d["neuron_view"]
    report.add_neuron_view(view["neuron"], view["tokens"], view["values"], title=d.get("title"),
                           caption=d.get("caption"),
                           **{k: view[k] for k in ("sentence", "labels", "top", "window", "images") if k in view})


for _accepts, _add in [
    (lambda d: "class_counts" in d and "neurons" not in d,
     lambda r, d, n: r.add_class_counts(d.get("title", n or "neurons per class"), d["class_counts"],
                                        caption=d.get("caption"), ylabel=d.get("ylabel", "neurons"),
                                        xlabel=d.get("xlabel", "class"))),
    (lambda d: isinstance(d.get("curves"), Mapping),
     lambda r, d, n: r.add_curves(d.get("title", n or "curves"), {k: (v["x"], v["y"]) for k, v in d["curves"].items()},
                                  xlabel=d.get("xlabel", ""), ylabel=d.get("ylabel", ""), caption=d.get("caption"))),
    (lambda d: "matrix" in d and "rows" in d, _legacy_matrix),
    (lambda d: "neuron_view" in d, _neuron_view),
    (lambda d: "jneuron_run" in d, _run),
    (lambda d: {"metric", "names_a", "names_b", "values"} <= set(d), _similarity),
    (lambda d: {"method", "total", "pairs"} <= set(d), _match),
    (lambda d: {"grid", "ordering"} <= set(d), _probe),
    (lambda d: "keep" in d or "retrain" in d, _probe_ablation),
    (lambda d: {"unit", "label_entropy", "neurons"} <= set(d), _information),
    (lambda d: isinstance(d.get("curves"), list) and "ks" in d, _cumulative),
    (_is_curve, _ablation_curve),
    (lambda d: bool(d) and all(_is_curve(v) for k, v in d.items() if k not in ("title", "caption")), _ablation_curves),
    (lambda d: isinstance(d.get("summary"), Mapping) and "zero" in d["summary"], _study_summary),
    (lambda d: d.get("study") == "neural-rejuvenation", _rejuvenation),
    (_is_ranking, lambda r, d, n: r.add_ranking(d)),
]:
    register(_accepts, _add)

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
section { border-top: 1px solid #ddd; padding: 0.5em 0 1em; }
img.plot { max-width: 100%; display: block; margin: 0.5em 0; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
td, th { border-bottom: 1px solid #eee; padding: 2px 8px; text-align: left; vertical-align: top; }
table.sortable th { cursor: pointer; background: #f4f4f4; user-select: none; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
table.meta th { background: #f4f4f4; } table.meta caption { text-align: left; font-weight: bold; }
.caption { color: #444; } .note { color: #777; font-size: 0.85em; }
#search { position: sticky; top: 0; background: #fff; padding: 0.5em 0; z-index: 1; }
section, details.neuron { scroll-margin-top: 3.5em; }  /* anchors land below the search bar */
#search input { width: 22em; font-size: 1em; padding: 3px 6px; }
tr.hidden, table.hidden, details.neuron.hidden { display: none; }
details.neuron { margin: 0.2em 0; } details.neuron summary { cursor: pointer; font-family: ui-monospace, monospace; }
ol.contexts li { margin: 0.4em 0; }
.neuron-view.images ol.contexts { display: flex; flex-wrap: wrap; gap: 0.3em 2.5em; padding-left: 2em; }
.line { font-family: ui-monospace, monospace; line-height: 2.2; }
.tok { padding: 2px 3px; border-radius: 3px; }
.tok.peak { font-weight: bold; outline: 1px solid #333; }
.tokimg { width: 40px; height: 40px; image-rendering: pixelated; vertical-align: middle; margin-right: 2px; }
.value { font-family: ui-monospace, monospace; } .where, .label { color: #666; font-size: 0.85em; }
"""

_SCRIPT = """
(function () {
  "use strict";
  var status = document.getElementById("status");
  window.addEventListener("error", function () {
    status.dataset.errors = String(Number(status.dataset.errors || 0) + 1);
  });
  var each = function (list, f) { Array.prototype.forEach.call(list, f); };
  var NUMBER = /^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$/;
  function key(cell) {
    var text = cell.textContent.trim();
    return NUMBER.test(text) ? parseFloat(text) : text;
  }
  function compare(x, y) {  // numbers first; text in natural order (m0/2 before m0/10)
    if (typeof x !== typeof y) { return typeof x === "number" ? -1 : 1; }
    if (typeof x === "number") { return x < y ? -1 : x > y ? 1 : 0; }
    return x.localeCompare(y, undefined, {numeric: true, sensitivity: "base"});
  }
  var tables = Array.prototype.slice.call(document.querySelectorAll("table.sortable"));
  tables.forEach(function (table) {
    each(table.tHead.rows[0].cells, function (th, column) {
      th.addEventListener("click", function () {
        var down = th.getAttribute("aria-sort") !== "descending";
        each(table.tHead.rows[0].cells, function (o) { o.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", down ? "descending" : "ascending");
        var rows = Array.prototype.slice.call(table.tBodies[0].rows);
        rows.sort(function (a, b) {
          var order = compare(key(a.cells[column]), key(b.cells[column]));
          return down ? -order : order;
        });
        rows.forEach(function (row) { table.tBodies[0].appendChild(row); });
      });
    });
    var none = document.createElement("p");  // said in place of a table the search empties
    none.className = "note no-match";
    none.hidden = true;
    none.textContent = "No row of this table matches the search.";
    table.parentNode.insertBefore(none, table.nextSibling);
  });
  var box = document.getElementById("neuron-search");
  var bar = document.getElementById("search");
  function matches(texts, query) {
    return query === "" || texts.some(function (t) { return t.toLowerCase().indexOf(query) >= 0; });
  }
  function search() {
    var query = box.value.trim().toLowerCase();
    tables.forEach(function (table) {
      var left = 0;
      each(table.tBodies[0].rows, function (row) {  // rows of neurons: match the row's neurons, not partners
        var names = Array.prototype.map.call(row.querySelectorAll("a.neuron-link:not(.partner)"),
                                             function (a) { return a.textContent; });
        var hide = !matches(names.length ? names : [row.textContent], query);
        row.classList.toggle("hidden", hide);
        left += hide ? 0 : 1;
      });
      var empty = left === 0 && table.tBodies[0].rows.length > 0;
      table.classList.toggle("hidden", empty);
      table.nextSibling.hidden = !empty;
    });
    var shown = 0;
    each(document.querySelectorAll("details.neuron"), function (item) {
      var hide = !matches([item.dataset.neuron], query);
      item.classList.toggle("hidden", hide);
      shown += hide ? 0 : 1;
    });
    document.getElementById("search-count").textContent = query === "" ? "" : shown === 0 ?
      "no neuron on this page matches (every neuron is in the result files)" :
      shown === 1 ? "1 neuron matches" : shown + " neurons match";
  }
  box.addEventListener("input", search);
  function reveal(id) {  // open a neuron's view and scroll it to just below the search bar
    var view = document.getElementById(id);
    if (!view || !view.classList.contains("neuron")) { return false; }
    if (view.classList.contains("hidden")) { box.value = ""; search(); }
    view.open = true;
    window.scrollTo(0, view.getBoundingClientRect().top + window.pageYOffset - bar.offsetHeight - 8);
    return true;
  }
  document.addEventListener("click", function (event) {
    var link = event.target.closest ? event.target.closest("a.neuron-link") : null;
    var id = link ? decodeURIComponent(link.hash.slice(1)) : "";
    if (link && reveal(id)) {
      event.preventDefault();
      history.pushState(null, "", "#" + id);  // the back button returns to the table
    }
  });
  function follow() {  // report.html#find=m0/3 searches; report.html#n-m0-3 opens that view
    if (location.hash.indexOf("#find=") === 0) {
      box.value = decodeURIComponent(location.hash.slice(6));
      search();
    } else if (location.hash.length > 1) {
      reveal(decodeURIComponent(location.hash.slice(1)));
    }
  }
  window.addEventListener("hashchange", follow);
  window.addEventListener("load", function () {
    follow();
    var images = Array.prototype.slice.call(document.images);
    status.dataset.imagesTotal = images.length;
    status.dataset.imagesLoaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
    status.dataset.sections = document.querySelectorAll("section").length;
  });
})();
"""

# Only this script may run (Content-Security-Policy by hash): even a string that escaped escaping could not.
_SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; \
script-src '{script_hash}'">
<style>{style}</style></head>
<body><h1>{title}</h1>{intro}{meta}
<div id="search"><label>Find a neuron: <input id="neuron-search" type="search" placeholder="e.g. {example}">\
</label> <span id="search-count"></span></div>
<ul class="toc">{toc}</ul>
{body}
{neurons}
<div id="status" hidden data-images-total="-1" data-images-loaded="-1" data-errors="0"></div>
<script>{script}</script>
</body></html>
"""
