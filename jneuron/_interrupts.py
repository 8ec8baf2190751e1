"""Ctrl-C while the ``jneuron`` command starts up: one line on stderr and exit code 130, not a traceback.

The console script imports the package, and with it JAX and Flax (seconds), before
:func:`jneuron.cli.main.main` can catch anything. ``jneuron/__init__`` imports this module first; in the
``jneuron`` command (and only there: a program importing jneuron keeps Python's own KeyboardInterrupt)
it installs a SIGINT handler for that window, and :func:`hand_back` restores Python's handler once
``main`` is ready to catch KeyboardInterrupt itself.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

MESSAGE = b"jneuron: interrupted\n"


def _interrupted(signum, frame) -> None:
    """Nothing is written yet: say so in one line and leave at once."""
    os.write(2, MESSAGE)
    os._exit(130)


def _is_command_line() -> bool:
    """Whether this process is the ``jneuron`` console script."""
    argv = getattr(sys, "argv", None) or [""]
    return os.path.basename(argv[0]) in ("jneuron", "jneuron.exe")


def install() -> None:
    """In the ``jneuron`` command, answer SIGINT with one line and exit code 130 until :func:`hand_back`."""
    if (_is_command_line() and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
        signal.signal(signal.SIGINT, _interrupted)


def hand_back() -> None:
    """Give SIGINT back to Python (KeyboardInterrupt) if :func:`install` took it."""
    if signal.getsignal(signal.SIGINT) is _interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)


install()
