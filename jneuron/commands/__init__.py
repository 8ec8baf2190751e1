"""Subcommands of the ``jneuron`` command line.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; list it
here to make it a subcommand.
"""

from jneuron.commands import (ablate, convert, demo, information, linreg, match, maxcorr, mincorr, probe,
                               report, similarity, study_information, study_rejuvenation)

COMMANDS = (demo, maxcorr, mincorr, linreg, similarity, match, probe, ablate, information, study_information,
            study_rejuvenation, convert, report)
