"""Gather result JSON files into one HTML report: ``jneuron report results/ --out results``.

Writes ``OUT/report/index.html`` with its plots in ``OUT/report/img/``; open it in any browser.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jneuron.cli.options import add_out_argument
from jneuron.report import Report

NAME = "report"
HELP = "build report/index.html from result JSON files (rankings, matrices, curves, class counts)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", type=Path, help="result .json files, or folders of them")
    parser.add_argument("--title", default="jneuron report", help="the page title")
    add_out_argument(parser)


def run(args: argparse.Namespace) -> int:
    report = Report(args.title)
    for file in report.add_results(args.results):
        print(f"note: skipped {file}: no report section for its shape")
    print(f"wrote {report.write(args.out / 'report')}")
    return 0
