"""Subcommands of the ``jneuron`` command line.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; list it
here to make it a subcommand.
"""

from jneuron.commands import ablate, demo, information, maxcorr, study_information

COMMANDS = (demo, maxcorr, ablate, information, study_information)
