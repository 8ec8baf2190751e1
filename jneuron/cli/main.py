"""The ``jneuron`` command line: one subcommand per analysis, each in ``jneuron.cli.commands``.

A user mistake (bad path, bad input, an ``--out`` that cannot be written) is one clear line on stderr and
exit code 2, never a traceback; Ctrl-C at any moment is one line and exit code 130 (see
:mod:`jneuron._interrupts` for the start-up). A command's results reach ``--out`` as one set or not at all
(:mod:`jneuron.cli.outputs`).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Iterator, Sequence

from jneuron import _interrupts
from jneuron.errors import JNeuronError


def build_parser() -> argparse.ArgumentParser:
    from jneuron.cli.commands import COMMANDS

    parser = Parser(
        prog="jneuron",
        description="JAX-accelerated neuron-level analysis of neural networks.",
        formatter_class=HelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.NAME, help=command.HELP, description=plain_text(command.__doc__ or ""),
                                    formatter_class=HelpFormatter)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


class Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake (unknown option, bad value) as one line on stderr and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their paragraphs; every option's help ends with its default (unless it names it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is argparse.SUPPRESS or not action.option_strings or "default" in text:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction)):
            return text
        return f"{text} (default: {'none' if action.default is None else '%(default)s'})"


def plain_text(doc: str) -> str:
    """A docstring as plain text: reStructuredText roles and literals become their words.

    >>> plain_text("See :func:`jneuron.open_activations` and ``--out``; `x` too.")
    'See jneuron.open_activations and --out; x too.'
    """
    text = re.sub(r":[a-z]+:`~?([^`<]+?)(?:\s*<[^>]+>)?`", r"\1", doc)
    text = text.replace("``", "").replace("`", "")
    lines = text.strip("\n").splitlines()
    indent = min((len(l) - len(l.lstrip()) for l in lines[1:] if l.strip()), default=0)
    return "\n".join([lines[0].strip()] + [l[indent:] for l in lines[1:]]) if lines else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (0, 2 for bad input, 130 when interrupted)."""
    name, shown = "jneuron", {}
    try:
        _interrupts.hand_back()
        argv = list(sys.argv[1:] if argv is None else argv)
        args = build_parser().parse_args(argv)
        args.command_line = " ".join(["jneuron", *(_quoted(a) for a in argv)])
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
    from jneuron.cli.options import check_refused
    from jneuron.cli.outputs import OutputSet, prepare_parent, shown_as_out

    check_refused(args)
    if not getattr(args, "out_set", False):
        if getattr(args, "out", None) is not None:  # a file or store to write (convert): fail before reading
            prepare_parent(args.out)
        with _one_line_warnings():
            return int(args.run(args) or 0)
    with OutputSet(args.out) as outputs, shown_as_out(outputs):
        shown[str(outputs.folder)] = str(outputs.out)
        staged = argparse.Namespace(**{**vars(args), "out": outputs.folder})
        with _one_line_warnings():
            code = int(args.run(staged) or 0)
        if code == 0:
            _write_run_record(args, staged, outputs.folder)
            outputs.commit()
    return code


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Every warning an analysis gives (constant neurons, few tokens, float64 unavailable, an unsuitable
    quantization) as one line on stderr, each time it is given."""
    import warnings

    from jneuron import errors

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        for category in (errors.DeadNeuronWarning, errors.FewTokensWarning, errors.Float64UnavailableWarning,
                         errors.StaleCheckpointWarning, errors.QuantizationWarning):
            warnings.simplefilter("always", category)
        yield


def _write_run_record(args: argparse.Namespace, staged: argparse.Namespace, folder) -> None:
    """``run_<command>.json``: what ran (version, date, command line, settings, data shape), for the report."""
    import datetime

    from jneuron import __version__
    from jneuron.data.atomic import atomic_write_json

    hidden = {"run", "out_set", "uses_labels", "refused_options", "command", "command_line", "data_shape"}
    settings = {k: _setting(v) for k, v in sorted(vars(args).items()) if k not in hidden}
    record = {"command": args.command_line, "jneuron": __version__,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
              "settings": settings}
    if getattr(staged, "data_shape", None):
        record["data"] = staged.data_shape
    atomic_write_json(folder / f"run_{args.command}.json", {"jneuron_run": record})


def _setting(value):
    """An option's value for the run record: numbers, flags and None as they are, lists item by item, the rest
    (paths) as text.

    >>> _setting([1e-05, 0.001]), _setting(3), _setting(None)
    ([1e-05, 0.001], 3, None)
    """
    if isinstance(value, (list, tuple)):
        return [_setting(v) for v in value]
    return value if isinstance(value, (int, float, bool, type(None))) else str(value)


def _quoted(word: str) -> str:
    import shlex

    return shlex.quote(str(word))


def _one_line(error: BaseException, shown: dict[str, str]) -> str:
    """The error's message on one line, with staged paths shown at their places in ``--out``."""
    text = " ".join(str(error).split())
    for staging, out in shown.items():
        text = text.replace(staging, out)
    return text


if __name__ == "__main__":
    sys.exit(main())
