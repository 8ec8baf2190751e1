"""Studies: whole experiments end to end (train, analyse, write results and a report), one command each."""

from jneuron.cli.studies import demo, information, probing, rejuvenation

__all__ = ["demo", "information", "probing", "rejuvenation"]
