"""Rank neurons by MaxCorr across models: ``jneuron maxcorr a.npy b.npy c.npy --out results/``.

Writes ``maxcorr.json``, ``maxcorr.csv`` and a ``maxcorr.png`` bar chart to ``--out``.
"""

from __future__ import annotations

import argparse

from jneuron.cli.commands import _crossmodel

NAME = "maxcorr"
HELP = "rank neurons by MaxCorr: best |correlation| with any neuron of any other model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _crossmodel.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return _crossmodel.run(args, "maxcorr")
