"""What every field's commands share: the help formatter, the common flags, and terminal output."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

PRECISIONS = ["fp32", "bf16", "fp16", "auto"]
PRECISION_HELP = "numeric mode; auto = bf16 where the CPU/GPU computes it natively, else fp32"


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option's help; descriptions and epilogs keep their line breaks."""


def common_flags() -> argparse.ArgumentParser:
    """``--debug`` and ``-v`` accepted after any command name too (``papernotes reproduce --debug``).

    SUPPRESS keeps the top-level value unless the flag is given after the command.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log progress"
    )
    return common


def echo(*parts: Any, sep: str = " ", end: str = "\n", err: bool = False) -> None:
    """Write to the terminal (stderr with ``err``), flushed so that streamed replies show as they come.

    The one place where the CLI writes; library code logs instead.
    """
    stream = sys.stderr if err else sys.stdout
    stream.write(sep.join(str(p) for p in parts) + end)
    stream.flush()


def echo_json(summary: Any) -> int:
    """Print a command's summary as indented JSON; returns the exit code 0."""
    echo(json.dumps(summary, indent=2, default=str))
    return 0
