"""The ``papernotes`` command line: one module per field, each with ``register(subparsers, common)``.

``reproduce`` runs the experiments; ``llm``, ``video``/``oad``, ``seg`` and ``calib`` map their commands to
library functions and print the summaries. User mistakes (any :class:`papernotes.errors.PapernotesError`)
print one red line and exit with code 2; ``--debug`` shows the traceback instead. Heavy imports happen inside
the command functions so that ``--help`` stays fast. The ``--help`` epilog lists every command from the
registrations themselves.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from papernotes.cli import geometry, llm, metrics, reproduce, video
from papernotes.cli.common import Formatter, common_flags, echo
from papernotes.errors import PapernotesError

FIELDS = (reproduce, llm, video, metrics, geometry)  # in the order --help lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="papernotes",
        description="Paper notes made real: video understanding and efficient-LLM methods, "
        "each tested against a reference library and measured.",
        formatter_class=Formatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_flags()
    for field in FIELDS:
        field.register(sub, common)
    parser.epilog = command_listing(parser) + "\n\nrun 'papernotes COMMAND --help' for a command's options."
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each sub-command, in registration order."""
    rows = []
    for action in parser._actions:  # argparse keeps sub-parsers and their help only here
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            rows += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return rows


def command_listing(parser: argparse.ArgumentParser) -> str:
    """Every command, two levels deep, with its help: ``papernotes --help``'s epilog."""
    lines = ["commands:"]
    for name, text, sub in _subcommands(parser):
        children = _subcommands(sub)
        if not children:
            lines.append(f"  {name:22s} {text}")
        for child, child_text, _ in children:
            lines.append(f"  {name + ' ' + child:22s} {child_text}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except PapernotesError as exc:
        if args.debug:
            raise
        red, reset = ("\033[31m", "\033[0m") if sys.stderr.isatty() else ("", "")
        echo(f"{red}error: {exc}{reset}", err=True)
        return 2
    except KeyboardInterrupt:
        echo("interrupted", err=True)
        return 130
