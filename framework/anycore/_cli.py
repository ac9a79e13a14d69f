"""The ``anycore`` command line (argparse, with its conventions).

Subcommands register themselves in :func:`build_parser`; usage errors exit
with status 2 as argparse does.  Commands import what they need lazily so
``anycore --help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ._version import __version__


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="anycore",
        description="anycore: asyncio networking and process orchestration.",
    )
    parser.add_argument("--version", action="version", version=f"anycore {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    result: int = handler(args)
    return result
