"""Your own command line with anycore's standard options (--loop, --log-*, --workers).

``python examples/standard_options.py --loop asyncio --log-level debug --workers 2``
parses its own ``--jobs`` option beside anycore's, configures logging from
``--log-level`` / ``--log-format``, runs its main on the chosen loop and
squares ``--jobs`` numbers on a pool of ``--workers`` threads.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import anycore

log = logging.getLogger("standard_options")


def square(n: int) -> int:
    return n * n


async def main(args: argparse.Namespace) -> None:
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    log.debug("debug logging is on")
    print(f"loop={loop} workers={args.workers} level={args.log_level}", flush=True)
    async with anycore.WorkerPool("threads", workers=args.workers) as pool:
        squares = await pool.map(square, range(args.jobs))
    print("squares", *squares, flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Square some numbers on a pool.")
    parser.add_argument("--jobs", type=int, default=4, help="how many numbers (default: 4)")
    anycore.add_standard_options(parser, workers=True)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    anycore.run(main, arguments, **anycore.apply_standard_options(arguments))
