"""Subcommands of the ``jneuron`` command line.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; list it
here to make it a subcommand.
"""

from jneuron.commands import convert, demo, maxcorr, mincorr, report

COMMANDS = (demo, maxcorr)
COMMANDS += (mincorr, convert, report)
