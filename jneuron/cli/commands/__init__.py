"""Subcommands of the ``jneuron`` command line.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; list it
here to make it a subcommand.
"""

from jneuron.cli import studies
from jneuron.cli.commands import (
                                  ablate,
                                  convert,
                                  extract,
                                  information,
                                  linreg,
                                  match,
                                  maxcorr,
                                  mincorr,
                                  probe,
                                  report,
                                  similarity,
)

COMMANDS = (studies.demo, maxcorr, mincorr, linreg, similarity, match, probe, ablate, information,
            studies.information, studies.rejuvenation, studies.crosslm, studies.probing, convert, extract,
            report)
