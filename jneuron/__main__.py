"""``python -m jneuron``: the command line, as the ``jneuron`` script."""

import sys

from jneuron.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
