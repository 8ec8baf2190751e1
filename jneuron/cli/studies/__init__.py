"""Studies: whole experiments end to end (train, analyse, write results and a report), one command each."""

from jneuron.cli.studies import crosslm, demo, information, probing, rejuvenation

__all__ = ["crosslm", "demo", "information", "probing", "rejuvenation"]
