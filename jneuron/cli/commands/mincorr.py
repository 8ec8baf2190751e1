"""Rank neurons by MinCorr across models: ``jneuron mincorr acts.zarr --out results/``.

Writes ``mincorr.json``, ``mincorr.csv`` and a ``mincorr.png`` bar chart to ``--out``.
"""

from __future__ import annotations

import argparse

from jneuron.cli.commands import _crossmodel

NAME = "mincorr"
HELP = "rank neurons by MinCorr: the worst, over other models, of the best |correlation| in that model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _crossmodel.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return _crossmodel.run(args, "mincorr")
