"""Queue throughput: anycore.Queue against asyncio.Queue, anyio, trio and janus.

Three measurements, each the median of several repeats in one run:

* **In one loop** - a producer task puts N items, a consumer task gets them:
  ``anycore.Queue`` vs ``asyncio.Queue`` (target >= 1.0x), anyio's memory
  object stream and trio's memory channel (for scale).  Unbounded and
  bounded (1024, anycore's default), on the default loop and on uvloop.
* **Thread -> loop** - a plain thread puts, a task gets (and the reverse):
  ``anycore.Queue.sync_put`` / ``get`` vs janus (target: ahead).
* **Thread -> thread** - ``queue.Queue`` for reference.

``main(quick)`` prints items/s and ratios; quick mode moves 50,000 items once,
the full run 1,000,000 (thread runs: a fifth of that) with 5 repeats.
"""

from __future__ import annotations

import asyncio
import math
import queue as stdlib_queue
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial

import anyio

from anycore import Queue
from benchmarks import _report

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

try:
    import trio
except ImportError:  # pragma: no cover
    trio = None  # type: ignore[assignment]

try:
    import janus
except ImportError:  # pragma: no cover
    janus = None  # type: ignore[assignment]


# -- in one loop -----------------------------------------------------------------


async def run_asyncio_queue(n: int, maxsize: int) -> float:
    q: asyncio.Queue[int] = asyncio.Queue(maxsize)

    async def produce() -> None:
        for i in range(n):
            await q.put(i)

    async def consume() -> None:
        for _ in range(n):
            await q.get()

    t = time.perf_counter()
    await asyncio.gather(produce(), consume())
    return time.perf_counter() - t


async def run_anycore_queue(n: int, maxsize: int) -> float:
    q: Queue[int] = Queue(maxsize)

    async def produce() -> None:
        for i in range(n):
            await q.put(i)

    async def consume() -> None:
        for _ in range(n):
            await q.get()

    t = time.perf_counter()
    await asyncio.gather(produce(), consume())
    return time.perf_counter() - t


async def run_anyio_stream(n: int, maxsize: int) -> float:
    send, receive = anyio.create_memory_object_stream[int](maxsize or math.inf)

    async def produce() -> None:
        async with send:
            for i in range(n):
                await send.send(i)

    async def consume() -> None:
        async with receive:
            for _ in range(n):
                await receive.receive()

    t = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        tg.start_soon(consume)
    return time.perf_counter() - t


def run_trio_channel(n: int, maxsize: int) -> float:
    assert trio is not None

    async def main() -> float:
        send, receive = trio.open_memory_channel[int](maxsize or math.inf)

        async def produce() -> None:
            async with send:
                for i in range(n):
                    await send.send(i)

        async def consume() -> None:
            async with receive:
                for _ in range(n):
                    await receive.receive()

        t = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            nursery.start_soon(consume)
        return time.perf_counter() - t

    result: float = trio.run(main)
    return result


def on_loop(
    factory: Callable[[], asyncio.AbstractEventLoop], fn: Callable[[], Awaitable[float]]
) -> float:
    loop = factory()
    try:
        return loop.run_until_complete(fn())
    finally:
        loop.close()


# -- across threads -------------------------------------------------------------------


async def anycore_thread_to_loop(n: int, maxsize: int) -> float:
    q: Queue[int] = Queue(maxsize)

    def produce() -> None:
        for i in range(n):
            q.sync_put(i)

    t = time.perf_counter()
    th = threading.Thread(target=produce)
    th.start()
    for _ in range(n):
        await q.get()
    th.join()
    return time.perf_counter() - t


async def anycore_loop_to_thread(n: int, maxsize: int) -> float:
    q: Queue[int] = Queue(maxsize)

    def consume() -> None:
        for _ in range(n):
            q.sync_get()

    t = time.perf_counter()
    th = threading.Thread(target=consume)
    th.start()
    for i in range(n):
        await q.put(i)
    await asyncio.to_thread(th.join)
    return time.perf_counter() - t


async def janus_thread_to_loop(n: int, maxsize: int) -> float:
    assert janus is not None
    q: janus.Queue[int] = janus.Queue(maxsize)

    def produce() -> None:
        for i in range(n):
            q.sync_q.put(i)

    t = time.perf_counter()
    th = threading.Thread(target=produce)
    th.start()
    for _ in range(n):
        await q.async_q.get()
    th.join()
    elapsed = time.perf_counter() - t
    await q.aclose()
    return elapsed


async def janus_loop_to_thread(n: int, maxsize: int) -> float:
    assert janus is not None
    q: janus.Queue[int] = janus.Queue(maxsize)

    def consume() -> None:
        for _ in range(n):
            q.sync_q.get()

    t = time.perf_counter()
    th = threading.Thread(target=consume)
    th.start()
    for i in range(n):
        await q.async_q.put(i)
    await asyncio.to_thread(th.join)
    elapsed = time.perf_counter() - t
    await q.aclose()
    return elapsed


def stdlib_thread_to_thread(n: int, maxsize: int) -> float:
    q: stdlib_queue.Queue[int] = stdlib_queue.Queue(maxsize)

    def produce() -> None:
        for i in range(n):
            q.put(i)

    t = time.perf_counter()
    th = threading.Thread(target=produce)
    th.start()
    for _ in range(n):
        q.get()
    th.join()
    return time.perf_counter() - t


# -- reporting ---------------------------------------------------------------------------


def median_rates(n: int, repeats: int, runs: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Items/s per contender: the median of ``repeats`` runs.

    The contenders take turns (round robin), so a burst of load on the
    machine hits all of them alike instead of one.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    return {name: n / statistics.median(ts) for name, ts in times.items()}


def report(title: str, n: int, rates: dict[str, float], baseline: str) -> None:
    print(f"\n{title} ({n:,} items)")
    base = rates[baseline]
    for name, rate in rates.items():
        print(f"  {name:<34} {rate / 1e6:7.3f} M items/s   {rate / base:5.2f}x")


def main(quick: bool) -> None:
    n = 50_000 if quick else 1_000_000
    n_threads = n // 5
    repeats = 1 if quick else 5

    loops: list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]] = [
        ("asyncio", asyncio.new_event_loop)
    ]
    if uvloop is not None:
        loops.append(("uvloop", uvloop.new_event_loop))
    # Quick (CI smoke) mode: one loop, the default bound only.
    sizes = (1024,) if quick else (0, 1024)
    if quick:
        loops = loops[-1:]

    for loop_name, factory in loops:
        for maxsize in sizes:
            bound = f"maxsize={maxsize}" if maxsize else "unbounded"
            contenders = {
                "asyncio.Queue": run_asyncio_queue,
                "anycore.Queue": run_anycore_queue,
                "anyio memory object stream": run_anyio_stream,
            }
            runs: dict[str, Callable[[], float]] = {
                name: partial(on_loop, factory, partial(fn, n, maxsize))
                for name, fn in contenders.items()
            }
            if trio is not None and loop_name == "asyncio":
                runs["trio memory channel (trio.run)"] = partial(run_trio_channel, n, maxsize)
            rates = median_rates(n, repeats, runs)
            report(
                f"producer -> consumer in one loop, {loop_name}, {bound}",
                n,
                rates,
                "asyncio.Queue",
            )
            _report.ratio(
                "queues",
                f"one loop ({loop_name}, {bound}): items/s",
                rates["anycore.Queue"] / rates["asyncio.Queue"],
                baseline=f"asyncio.Queue ({bound})",
                target=1.2 if not maxsize else 1.0,
            )

    loop_name, factory = loops[-1]
    for maxsize in sizes:
        bound = f"maxsize={maxsize}" if maxsize else "unbounded"
        threaded: dict[str, Callable[[int, int], Awaitable[float]]] = {}
        if janus is not None:
            threaded["janus thread -> loop"] = janus_thread_to_loop
        threaded["anycore thread -> loop"] = anycore_thread_to_loop
        if janus is not None:
            threaded["janus loop -> thread"] = janus_loop_to_thread
        threaded["anycore loop -> thread"] = anycore_loop_to_thread
        thread_runs: dict[str, Callable[[], float]] = {
            name: partial(on_loop, factory, partial(fn, n_threads, maxsize))
            for name, fn in threaded.items()
        }
        thread_runs["queue.Queue thread -> thread"] = partial(
            stdlib_thread_to_thread, n_threads, maxsize
        )
        rates = median_rates(n_threads, repeats, thread_runs)
        baseline = "janus thread -> loop" if janus is not None else "queue.Queue thread -> thread"
        report(f"across threads ({loop_name}), {bound}", n_threads, rates, baseline)
        if janus is not None:
            _report.ratio(
                "queues",
                f"thread -> loop ({loop_name}, {bound}): items/s",
                rates["anycore thread -> loop"] / rates["janus thread -> loop"],
                baseline=f"janus ({bound})",
                target=4.0 if not maxsize else 1.0,
            )


if __name__ == "__main__":
    import sys

    main("--quick" in sys.argv)
