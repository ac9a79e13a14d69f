"""Foundation benchmarks: import cost, signal delivery, periodic-timer drift.

* ``import anycore`` against ``import asyncio, uvloop`` (the floor any asyncio
  framework pays), anyio, structlog and trio -- each in a fresh interpreter,
  minus the cost of an empty interpreter.
* Signal delivery: ``os.kill(self)`` to callback, through a raw
  ``loop.add_signal_handler`` against anycore's ``on_signal`` and
  ``open_signals`` receiver, on uvloop.
* Periodic timers: where the last of N ticks lands against its ideal time, for
  a naive ``await sleep(interval)`` loop and for ``anycore.every``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time

import uvloop

import anycore


def _import_ms(statement: str, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def bench_imports(quick: bool) -> None:
    repeats = 3 if quick else 15
    empty = _import_ms("pass", repeats)
    rows = [
        ("asyncio + uvloop", "import asyncio, uvloop"),
        ("anyio", "import anyio"),
        ("structlog", "import structlog"),
        ("trio", "import trio"),
        ("anycore", "import anycore"),
        ("anycore + run()", "import anycore; anycore.run"),
    ]
    results = {name: _import_ms(stmt, repeats) - empty for name, stmt in rows}
    floor = results["asyncio + uvloop"]
    print(f"import cost (ms above an empty interpreter, median of {repeats}):")
    print(f"  {'module':<18} {'ms':>8} {'vs asyncio+uvloop':>18}")
    for name, ms in results.items():
        print(f"  {name:<18} {ms:8.1f} {ms / floor:17.2f}x")


async def _signal_latency(kind: str, rounds: int) -> float:
    loop = asyncio.get_running_loop()
    samples: list[float] = []
    sent = 0.0
    got = asyncio.Event()

    def callback(*_: object) -> None:
        samples.append(time.perf_counter() - sent)
        got.set()

    if kind == "raw":
        loop.add_signal_handler(signal.SIGUSR1, callback)
        try:
            for _ in range(rounds):
                got.clear()
                sent = time.perf_counter()
                os.kill(os.getpid(), signal.SIGUSR1)
                await got.wait()
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
    elif kind == "on_signal":
        with anycore.on_signal(signal.SIGUSR1, callback):
            for _ in range(rounds):
                got.clear()
                sent = time.perf_counter()
                os.kill(os.getpid(), signal.SIGUSR1)
                await got.wait()
    else:
        async with anycore.open_signals(signal.SIGUSR1) as receiver:
            for _ in range(rounds):
                sent = time.perf_counter()
                os.kill(os.getpid(), signal.SIGUSR1)
                await receiver.receive()
                samples.append(time.perf_counter() - sent)
    return statistics.median(samples) * 1e6


def bench_signals(quick: bool) -> None:
    rounds = 200 if quick else 5000

    async def all_kinds() -> dict[str, float]:
        kinds = ("raw", "on_signal", "receiver")
        return {kind: await _signal_latency(kind, rounds) for kind in kinds}

    results = uvloop.run(all_kinds())
    raw = results["raw"]
    print(f"signal delivery on uvloop (median of {rounds}, us):")
    for kind, us in results.items():
        print(f"  {kind:<10} {us:8.1f} us {us / raw:6.2f}x raw add_signal_handler")


async def _naive_periodic(interval: float, ticks: int) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(ticks - 1):
        await asyncio.sleep(interval)
        sum(range(200))  # a little work per tick
    return loop.time() - (start + (ticks - 1) * interval)


async def _every_periodic(interval: float, ticks: int) -> float:
    last = None
    async for tick in anycore.every(interval, limit=ticks):
        sum(range(200))
        last = tick
    assert last is not None
    start = last.scheduled - last.index * interval
    return last.now - (start + (ticks - 1) * interval)


def bench_timers(quick: bool) -> None:
    interval, ticks = 0.001, (200 if quick else 2000)
    naive = uvloop.run(_naive_periodic(interval, ticks))
    ours = uvloop.run(_every_periodic(interval, ticks))
    print(f"periodic timer, {ticks} ticks of {interval * 1000:.0f} ms on uvloop: last tick's drift")
    print(f"  naive sleep loop  {naive * 1000:8.2f} ms")
    print(f"  anycore.every     {ours * 1000:8.2f} ms   (lateness does not accumulate)")


def main(quick: bool) -> None:
    bench_imports(quick)
    bench_signals(quick)
    bench_timers(quick)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
