"""Subcommands of the ``jneuron`` command line.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; list it
here to make it a subcommand.
"""

from jneuron.commands import ablate, demo, maxcorr, probe
from jneuron.commands import linreg, match, similarity

COMMANDS = (demo, maxcorr, probe, ablate)
COMMANDS += (similarity, linreg, match)
