"""Gather results into one self-contained ``index.html`` (PNG plots beside it, no server needed).

A :class:`Report` is a list of sections. Add them directly (``add_ranking``, ``add_heatmap``,
``add_curves``, ``add_class_counts``, ``add_neuron_view``, ``add_html``) or from result objects and
result JSON files with :meth:`Report.add_result`, which recognises these shapes:

- a ranking (a :class:`~jneuron.results.Ranking`, or a dict with ``"method"`` and ``"neurons"``
  records holding ``"label"`` and ``"score"``): a bar chart of the top neurons, coloured by model;
- ``{"matrix": [[...]], "rows": [...], "columns": [...]}``: a heatmap (e.g. layer similarities);
- ``{"curves": {name: {"x": [...], "y": [...]}}, "xlabel": ..., "ylabel": ...}``: line plots
  (e.g. ablation curves);
- ``{"class_counts": {class: count or {group: count}}}``: per-class neuron counts;
- ``{"neuron_view": {"neuron": label, "tokens": [...], "values": [...], "sentence": [...]}}``: a
  neuron's top tokens in context (optional ``labels``, ``top``, ``window``);
- anything with a ``to_dict()`` method giving one of these.

Every shape may carry ``"title"`` and ``"caption"``. Further shapes plug in with :func:`register`.

>>> import numpy as np, tempfile, os
>>> report = Report("demo")
>>> report.add_heatmap("similarity", np.eye(2), ["a", "b"], ["a", "b"])
>>> path = report.write(os.path.join(tempfile.mkdtemp(), "report"))
>>> path.name, sorted(os.listdir(path.parent / "img"))
('index.html', ['01-similarity.png'])
"""

from __future__ import annotations

import html
import json
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jneuron.errors import JNeuronError
from jneuron.report import plots
from jneuron.report.neuron_view import neuron_view_html

_HANDLERS: list[tuple[Callable[[dict], bool], Callable[[Report, dict, str], None]]] = []


def register(accepts: Callable[[dict], bool], add: Callable[[Report, dict, str], None]) -> None:
    """Teach :meth:`Report.add_result` a new result shape: ``add(report, result, name)`` when ``accepts(result)``."""
    _HANDLERS.insert(0, (accepts, add))


@dataclass
class _Section:
    title: str
    body: str  # HTML; images are referenced as {img:N}
    images: list[bytes] = field(default_factory=list)
    kind: str = "section"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "plot"


class Report:
    """Sections of plots and HTML gathered into one page; see the module docstring."""

    def __init__(self, title: str = "jneuron report", intro: str = ""):
        self.title = title
        self.intro = intro
        self.sections: list[_Section] = []

    def _add(self, kind: str, title: str, caption: str | None, image: bytes | None = None, html_body: str = ""):
        body = f'<p class="caption">{html.escape(caption)}</p>' if caption else ""
        images = []
        if image is not None:
            images.append(image)
            body += f'<img class="plot" src="{{img:0}}" alt="{html.escape(title)}">'
        self.sections.append(_Section(title, body + html_body, images, kind))

    def add_ranking(self, ranking, *, title: str | None = None, top: int = 20, caption: str | None = None) -> None:
        """Bar chart of the ``top`` neurons of a ranking (a Ranking or its ``to_dict()``), coloured by model."""
        if hasattr(ranking, "top"):  # a Ranking object: only its top records are built
            data = {"method": ranking.method, "neurons": ranking.top(top)}
        else:
            data = ranking
        records = list(data["neurons"])[:top]
        if not records:
            raise JNeuronError("cannot plot an empty ranking")
        method = str(data.get("method", "ranking"))
        title = title or data.get("title") or f"{method}: top {len(records)} neurons"
        png = plots.bars([r["label"] for r in records], [r["score"] if r["score"] is not None else np.nan for r in records],
                         title=title, xlabel=f"{method} score", groups=[r.get("model", "") for r in records])
        rows = "".join(
            f"<tr><td>{r.get('rank', i) + 1}</td><td>{html.escape(r['label'])}</td><td>{_number(r['score'])}</td>"
            f"<td>{html.escape(_partners(r))}</td></tr>"
            for i, r in enumerate(records[:10])
        )
        table = (f'<table class="ranking"><tr><th>rank</th><th>neuron</th><th>score</th><th>partners</th></tr>'
                 f"{rows}</table>")
        self._add("ranking", title, caption or data.get("caption"), png, table)

    def add_heatmap(self, title: str, matrix, rows: Sequence[str], columns: Sequence[str], *,
                    caption: str | None = None, vmin: float | None = None, vmax: float | None = None) -> None:
        """A labelled matrix (e.g. similarity between layers or models)."""
        values = np.asarray(matrix, float)
        if values.shape != (len(rows), len(columns)):
            raise JNeuronError(f"heatmap '{title}': matrix {values.shape} but {len(rows)} rows, {len(columns)} columns")
        self._add("heatmap", title, caption, plots.heatmap(values, rows, columns, title=title, vmin=vmin, vmax=vmax))

    def add_curves(self, title: str, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                   xlabel: str = "", ylabel: str = "", caption: str | None = None) -> None:
        """Line plots (e.g. accuracy against the fraction of neurons ablated)."""
        self._add("curves", title, caption, plots.curves(series, title=title, xlabel=xlabel, ylabel=ylabel))

    def add_class_counts(self, title: str, counts: Mapping[str, float | Mapping[str, float]], *,
                         caption: str | None = None, ylabel: str = "neurons") -> None:
        """Neurons per class (values may be a count, or counts per group such as a model)."""
        grouped = {str(c): (dict(v) if isinstance(v, Mapping) else {"": v}) for c, v in counts.items()}
        self._add("class-counts", title, caption, plots.grouped_counts(grouped, title=title, ylabel=ylabel))

    def add_neuron_view(self, neuron: str, tokens: Sequence[str], values, *, title: str | None = None,
                        caption: str | None = None, **options) -> None:
        """Top-activating tokens of one neuron in context (options: sentence, labels, images, top, window)."""
        body = neuron_view_html(neuron, tokens, values, **options)
        self._add("neuron-view", title or f"Top tokens of {neuron}", caption, None, body)

    def add_html(self, title: str, body: str, *, caption: str | None = None) -> None:
        """A section of ready HTML (trusted: it is inserted as it is)."""
        self._add("html", title, caption, None, body)

    def add_result(self, result, name: str = "") -> None:
        """Add a result object or dict by its shape (see the module docstring)."""
        data = result.to_dict() if hasattr(result, "to_dict") else result
        if not isinstance(data, Mapping):
            raise JNeuronError(f"result '{name}': expected a mapping or an object with to_dict(), got {type(data).__name__}")
        for accepts, add in _HANDLERS:
            if accepts(data):
                add(self, data, name)
                return
        raise JNeuronError(f"result '{name}': no report section knows this shape (keys {sorted(data)[:8]})")

    def add_results(self, paths: Sequence[str | Path]) -> list[Path]:
        """Add every result JSON file given; a folder adds its ``*.json`` files (sorted), skipping shapes
        no section knows. Returns the skipped files."""
        skipped = []
        for path in paths:
            path = Path(path)
            if not path.exists():
                raise JNeuronError(f"no such file or folder: {path}")
            files = sorted(path.glob("*.json")) if path.is_dir() else [path]
            for file in files:
                try:
                    data = json.loads(file.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                    raise JNeuronError(f"{file}: not a readable result JSON file: {error}") from None
                if path.is_dir() and not any(accepts(data) for accepts, _ in _HANDLERS if isinstance(data, Mapping)):
                    skipped.append(file)
                    continue
                self.add_result(data, file.stem)
        return skipped

    def html(self, image_names: list[list[str]]) -> str:
        """The page, with each section's images at the given relative paths."""
        parts, toc = [], []
        for number, (section, names) in enumerate(zip(self.sections, image_names), start=1):
            body = section.body
            for k, name in enumerate(names):
                body = body.replace(f"{{img:{k}}}", html.escape(name))
            anchor = f"s{number}"
            toc.append(f'<li><a href="#{anchor}">{html.escape(section.title)}</a></li>')
            parts.append(f'<section id="{anchor}" class="{section.kind}"><h2>{html.escape(section.title)}</h2>'
                         f"{body}</section>")
        intro = f"<p>{html.escape(self.intro)}</p>" if self.intro else ""
        return _PAGE.format(title=html.escape(self.title), intro=intro, toc="".join(toc), body="\n".join(parts))

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/index.html`` and ``folder/img/*.png`` atomically (built aside, then renamed)."""
        from jneuron.data.atomic import (
            aside,
            clean_leftovers,
            make_folder,
            replace_path,
        )

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(folder)
        temporary = make_folder(aside(folder))
        try:
            (temporary / "img").mkdir()
            names = []
            for number, section in enumerate(self.sections, start=1):
                section_names = []
                for k, png in enumerate(section.images):
                    suffix = f"-{k}" if k else ""
                    name = f"img/{number:02d}-{_slug(section.title)}{suffix}.png"
                    (temporary / name).write_bytes(png)
                    section_names.append(name)
                names.append(section_names)
            (temporary / "index.html").write_text(self.html(names), encoding="utf-8")
            replace_path(temporary, folder)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        return folder / "index.html"


def _number(value) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"


def _partners(record: Mapping) -> str:
    partners = record.get("partners") or []
    return ", ".join(f"{p['label']} ({_number(p.get('rho'))})" for p in partners[:4])


def _is_ranking(data: Mapping) -> bool:
    neurons = data.get("neurons")
    return "method" in data and isinstance(neurons, list) and all("score" in n and "label" in n for n in neurons[:1])


register(lambda d: "class_counts" in d,
         lambda r, d, n: r.add_class_counts(d.get("title", n or "neurons per class"), d["class_counts"],
                                            caption=d.get("caption"), ylabel=d.get("ylabel", "neurons")))
register(lambda d: "curves" in d,
         lambda r, d, n: r.add_curves(d.get("title", n or "curves"),
                                      {k: (v["x"], v["y"]) for k, v in d["curves"].items()},
                                      xlabel=d.get("xlabel", ""), ylabel=d.get("ylabel", ""), caption=d.get("caption")))
register(lambda d: "matrix" in d,
         lambda r, d, n: r.add_heatmap(d.get("title", n or "matrix"), d["matrix"], d["rows"], d["columns"],
                                       caption=d.get("caption"), vmin=d.get("vmin"), vmax=d.get("vmax")))
register(_is_ranking, lambda r, d, n: r.add_ranking(d))
register(lambda d: "neuron_view" in d,
         lambda r, d, n: r.add_neuron_view(
             d["neuron_view"]["neuron"], d["neuron_view"]["tokens"], d["neuron_view"]["values"],
             title=d.get("title"), caption=d.get("caption"),
             **{k: d["neuron_view"][k] for k in ("sentence", "labels", "top", "window") if k in d["neuron_view"]}))

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222; }}
section {{ border-top: 1px solid #ddd; padding: 0.5em 0 1em; }}
img.plot {{ max-width: 100%; display: block; margin: 0.5em 0; }}
table.ranking {{ border-collapse: collapse; font-size: 0.85em; }}
table.ranking td, table.ranking th {{ border-bottom: 1px solid #eee; padding: 2px 8px; text-align: left; }}
.caption {{ color: #555; }}
ol.contexts li {{ margin: 0.4em 0; }}
.neuron-view.images ol.contexts {{ display: flex; flex-wrap: wrap; gap: 0.3em 2.5em; padding-left: 2em; }}
.line {{ font-family: ui-monospace, monospace; line-height: 2.2; }}
.tok {{ padding: 2px 3px; border-radius: 3px; }}
.tok.peak {{ font-weight: bold; outline: 1px solid #333; }}
.tokimg {{ width: 40px; height: 40px; image-rendering: pixelated; vertical-align: middle; margin-right: 2px; }}
.value {{ font-family: ui-monospace, monospace; }} .where, .label {{ color: #666; font-size: 0.85em; }}
</style></head>
<body><h1>{title}</h1>{intro}<ul class="toc">{toc}</ul>
{body}
<p id="status" data-images-total="-1" data-images-loaded="-1"></p>
<script>
window.addEventListener("load", function () {{
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  var status = document.getElementById("status");
  status.dataset.imagesTotal = images.length;
  status.dataset.imagesLoaded = loaded;
  status.textContent = loaded + " of " + images.length + " images loaded";
}});
</script>
</body></html>
"""
