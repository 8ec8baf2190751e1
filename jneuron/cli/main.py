"""The ``jneuron`` command line: one subcommand per analysis, each in ``jneuron.cli.commands``.

A user mistake (bad path, bad input, an ``--out`` that cannot be written) is one clear line on stderr and
exit code 2, never a traceback; Ctrl-C at any moment is one line and exit code 130 (see
:mod:`jneuron._interrupts` for the start-up). A command's results reach ``--out`` as one set or not at all
(:mod:`jneuron.cli.outputs`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jneuron import _interrupts
from jneuron.errors import JNeuronError


def build_parser() -> argparse.ArgumentParser:
    from jneuron.cli.commands import COMMANDS

    parser = argparse.ArgumentParser(
        prog="jneuron",
        description="JAX-accelerated neuron-level analysis of neural networks.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.NAME, help=command.HELP, description=command.__doc__)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (0, 2 for bad input, 130 when interrupted)."""
    name, shown = "jneuron", {}
    try:
        _interrupts.hand_back()
        args = build_parser().parse_args(argv)
        name = f"jneuron {args.command}"
        return _run(args, shown)
    except (JNeuronError, OSError) as error:
        print(f"{name}: error: {_one_line(error, shown)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, shown: dict[str, str]) -> int:
    """Run the parsed command, its ``--out`` staged when it is a folder of results (``out_set``)."""
    from jneuron.cli.outputs import OutputSet, prepare_parent, shown_as_out

    if not getattr(args, "out_set", False):
        if getattr(args, "out", None) is not None:  # a file or store to write (convert): fail before reading
            prepare_parent(args.out)
        return int(args.run(args) or 0)
    with OutputSet(args.out) as outputs, shown_as_out(outputs):
        shown[str(outputs.folder)] = str(outputs.out)
        code = int(args.run(argparse.Namespace(**{**vars(args), "out": outputs.folder})) or 0)
        if code == 0:
            outputs.commit()
    return code


def _one_line(error: BaseException, shown: dict[str, str]) -> str:
    """The error's message on one line, with staged paths shown at their places in ``--out``."""
    text = " ".join(str(error).split())
    for staging, out in shown.items():
        text = text.replace(staging, out)
    return text


if __name__ == "__main__":
    sys.exit(main())
