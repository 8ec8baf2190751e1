"""Gather result files into one HTML page: ``jneuron report results/ --out results``.

Reads every result any jneuron command writes (rankings, similarity matrices, matches, probes,
information measures, ablation curves, the studies) from the files or folders given, and writes
``OUT/report.html``: one self-contained file (plots embedded), with the run's metadata, sortable tables,
a neuron search box, a caption defining each method and a view of every neuron the page shows (its rank
in every analysis, and its top tokens in context when an activation store with text is given or found in
the folders). Open it in any browser; it needs no network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jneuron.cli.options import add_out_argument

NAME = "report"
HELP = "build one self-contained report.html from the results of any jneuron command"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", type=_existing, metavar="RESULT",
                        help="result .json files, or folders holding them")
    parser.add_argument("--title", default="jneuron report", help="the page title")
    parser.add_argument("--activations", nargs="+", type=Path, default=[], metavar="STORE",
                        help="activation stores with token text (from convert or extract): the view of every neuron "
                             "shown has its top tokens in context (default: the .zarr stores inside the result folders)")
    add_out_argument(parser)


def _existing(text: str) -> Path:
    """A path that exists, checked as the command line is read (before ``--out`` is made, which may be the same
    folder)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{path}: no such file or folder")
    return path


def run(args: argparse.Namespace) -> int:
    from jneuron.data.labels import counted
    from jneuron.report import Report

    report = Report(args.title, metadata={"command": getattr(args, "command_line", None)})
    skipped = report.add_results(args.results)
    for file in skipped:
        print(f"note: skipped {file}: not a jneuron result")
    stores = list(args.activations) or [store for folder in args.results if folder.is_dir()
                                        for store in sorted(folder.glob("*.zarr"))]
    for store in stores:
        report.add_store_views(store)
    path = report.write(args.out / "report.html")
    print(f"wrote {path} ({counted(len(report.sections), 'section')})")
    return 0
