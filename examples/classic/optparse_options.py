"""optparse: a program's options - a flag, a file, a level, a choice, a pair, constants.

Classic: ``OptionParser`` with ``-v/--verbose`` (store_true), ``-o/--output
FILE``, ``-d/--debug`` (an int), ``-m/--mode`` (a choice of slow / fast /
ludicrous that rejects anything else with a usage error), ``-p/--point``
(``nargs=2, type="int"``) and ``--quiet`` / ``--noisy`` storing constants into
one destination, with ``set_defaults``.  optparse is deprecated; changed: the
same options on argparse (as the ``anycore`` command parses its own), plus
``anycore.add_standard_options`` for the loop, log level/format and workers,
applied with ``apply_standard_options``.

    python examples/classic/optparse_options.py -v -o out.txt -d 2 -m fast -p 3 4 --quiet
    python examples/classic/optparse_options.py -m warp     # a usage error, exit 2
"""

from __future__ import annotations

import argparse
import sys

import anycore


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="optparse_options", description="The optparse example.")
    p.add_argument("-v", "--verbose", action="store_true", help="say more")
    p.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE")
    p.add_argument("-d", "--debug", type=int, default=0, metavar="LEVEL", help="debug level")
    p.add_argument(
        "-m", "--mode", choices=["slow", "fast", "ludicrous"], default="slow", help="how fast"
    )
    p.add_argument("-p", "--point", nargs=2, type=int, metavar=("X", "Y"), default=(0, 0))
    p.add_argument("--quiet", dest="noise", action="store_const", const=0, help="noise 0")
    p.add_argument("--noisy", dest="noise", action="store_const", const=2, help="noise 2")
    p.set_defaults(noise=1)
    anycore.add_standard_options(p, workers=True)
    return p


async def main(args: argparse.Namespace) -> None:
    for name in ("verbose", "output", "debug", "mode", "point", "noise", "workers", "loop"):
        value = getattr(args, name)
        print(f"{name} = {list(value) if isinstance(value, tuple | list) else value!r}")


if __name__ == "__main__":
    arguments = parser().parse_args(sys.argv[1:])
    anycore.run(main, arguments, **anycore.apply_standard_options(arguments))
