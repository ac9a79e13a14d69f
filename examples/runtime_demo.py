"""A small app on anycore's runtime: timers, signals, background tasks, shutdown.

Run it with ``make run`` or ``python examples/runtime_demo.py``.  It prints a
heartbeat every second from a drift-free periodic timer, reloads on SIGHUP,
and on Ctrl-C or SIGTERM shuts down in order (servers would stop accepting,
connections drain, main is cancelled, workers stop, logs flush) and exits 0.
A second Ctrl-C exits at once with status 130.

``--ticks N`` stops after N heartbeats (the tests use it); ``--interval``
changes the period.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import anycore
from anycore import Phase


def say(*parts: object) -> None:
    print(*parts, flush=True)


async def main(ticks: int | None, interval: float, hang_drain: bool) -> str:
    runtime = anycore.current_runtime()
    assert runtime is not None

    async def stop_accepting() -> None:
        say("shutdown: stop accepting")

    async def drain() -> None:
        say("shutdown: drain connections")
        if hang_drain:
            await anycore.next_signal(signal.SIGUSR2)  # only a forced exit ends this

    async def stop_workers() -> None:
        say("shutdown: stop workers")

    async def flush_logs() -> None:
        say("shutdown: flush logs")

    runtime.add_shutdown_step(Phase.STOP_ACCEPTING, "demo listener", stop_accepting)
    runtime.add_shutdown_step(Phase.DRAIN, "demo connections", drain)
    runtime.add_shutdown_step(Phase.POOLS, "demo workers", stop_workers)
    runtime.add_shutdown_step(Phase.LOGS, "demo log sink", flush_logs)
    runtime.add_reload_hook(lambda: say("reload: configuration reloaded"))

    async def background() -> None:
        async with anycore.open_signals(signal.SIGUSR1) as signals:
            async for sig in signals:
                say(f"background: got {signal.Signals(sig).name}")

    anycore.spawn(background, name="usr1-listener")
    say(f"ready pid={os.getpid()} (Ctrl-C or SIGTERM to stop, SIGHUP to reload)")
    try:
        async for tick in anycore.every(interval, limit=ticks):
            late = f" (skipped {tick.missed})" if tick.missed else ""
            say(f"tick {tick.index}{late}")
    except BaseException:
        say("main: cancelled")
        raise
    return f"finished after {ticks} ticks"


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=None, help="stop after N ticks")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between ticks")
    parser.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    parser.add_argument("--hang-drain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    result = anycore.run(
        main, args.ticks, args.interval, args.hang_drain, loop=args.loop, drain_timeout=30.0
    )
    say(result)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
