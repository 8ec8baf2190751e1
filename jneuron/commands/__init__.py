"""Subcommands of the ``jneuron`` command line.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; list it
here to make it a subcommand.
"""

from jneuron.commands import (ablate, convert, demo, information, maxcorr, mincorr, probe, report,
                               study_information, study_rejuvenation)

COMMANDS = (demo, maxcorr, mincorr, probe, ablate, information, study_information, study_rejuvenation, convert,
            report)
