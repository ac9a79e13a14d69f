"""Logging from coroutines on uvloop: throughput, loop-side cost, loop lag.

For each contender, ``records`` records are logged by coroutines (4 of them,
yielding every 5 records) while a 1 ms ticker measures how late the loop
runs it (the lag: max and p99).  Reported per contender:

* records/s: from the first record until everything is on disk (flushed);
* loop us/rec: wall time spent inside the log calls on the loop, per record;
* lag max / p99 of the ticker, in ms.

Contenders: the stdlib ``FileHandler`` called in the loop, ``QueueHandler`` +
``QueueListener``, structlog writing directly (``WriteLogger``), aiologger,
anycore's structlog pipeline (``configure(format="json")``), and anycore's
``FileHandler`` under a stdlib logger.  Then the same with a slow sink that
takes 1 ms per write.  Median of several repeats; ratios against the stdlib
``FileHandler`` and structlog-direct baselines.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import json
import logging
import logging.handlers
import os
import queue
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import uvloop

import anycore.logging as alog

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
SLOW_WRITE = 0.001


@dataclass
class Result:
    rate: float  # records/s
    cost_us: float  # loop-side us per record
    lag_max_ms: float
    lag_p99_ms: float
    lost: int  # records logged but not in the file after the contender's shutdown


class SlowFile(io.TextIOWrapper):
    """A text file whose every write takes an extra millisecond."""

    def write(self, s: str) -> int:
        time.sleep(SLOW_WRITE)
        return super().write(s)


def _open_text(path: str, slow: bool) -> io.TextIOWrapper:
    raw = open(path, "ab")  # noqa: SIM115 - closed by the contender's finish()
    cls = SlowFile if slow else io.TextIOWrapper
    return cls(raw, encoding="utf-8", write_through=False)


class _SlowAnycoreFile(alog.FileHandler):
    def _write_bytes(self, data: bytes) -> None:
        time.sleep(SLOW_WRITE)
        super()._write_bytes(data)


# Each setup returns (log(i) -> maybe-awaitable, async finish()).
Setup = Callable[[str, bool], tuple[Callable[[int], Any], Callable[[], Any]]]


def _stdlib_logger(name: str, handler: logging.Handler) -> logging.Logger:
    lg = logging.getLogger(name)
    lg.handlers.clear()
    lg.propagate = False
    lg.setLevel(logging.INFO)
    lg.addHandler(handler)
    return lg


def setup_nothing(path: str, slow: bool) -> tuple[Callable[[int], Any], Callable[[], Any]]:
    """The floor: render a JSON line per record, write nothing (the file stays empty).

    Its lag is what producing the records costs the ticker by itself; the
    contenders' lag above it is what their I/O and threads add.
    """
    open(path, "wb").close()
    dumps = json.dumps

    def log(i: int) -> None:
        dumps({"event": "record", "i": i, "user": "ann", "level": "info"})

    async def finish() -> None:
        return None

    return log, finish


def setup_stdlib_file(path: str, slow: bool) -> tuple[Callable[[int], Any], Callable[[], Any]]:
    handler = logging.StreamHandler(_open_text(path, slow))
    handler.setFormatter(logging.Formatter(FORMAT))
    lg = _stdlib_logger("bench.stdlib", handler)

    def log(i: int) -> None:
        lg.info("record %d user=%s", i, "ann")

    async def finish() -> None:
        handler.flush()
        handler.stream.close()
        lg.removeHandler(handler)

    return log, finish


def setup_queue_listener(path: str, slow: bool) -> tuple[Callable[[int], Any], Callable[[], Any]]:
    target = logging.StreamHandler(_open_text(path, slow))
    target.setFormatter(logging.Formatter(FORMAT))
    q: queue.Queue[logging.LogRecord] = queue.Queue(-1)
    listener = logging.handlers.QueueListener(q, target)
    listener.start()
    lg = _stdlib_logger("bench.queue", logging.handlers.QueueHandler(q))

    def log(i: int) -> None:
        lg.info("record %d user=%s", i, "ann")

    async def finish() -> None:
        listener.stop()  # drains the queue
        target.flush()
        target.stream.close()
        lg.handlers.clear()

    return log, finish


def setup_structlog_direct(path: str, slow: bool) -> tuple[Callable[[int], Any], Callable[[], Any]]:
    fh = _open_text(path, slow)
    log = structlog.wrap_logger(
        structlog.WriteLogger(fh),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )

    def emit(i: int) -> None:
        log.info("record", i=i, user="ann")

    async def finish() -> None:
        fh.flush()
        fh.close()

    return emit, finish


def setup_aiologger(path: str, slow: bool) -> tuple[Callable[[int], Any], Callable[[], Any]]:
    from aiologger import Logger
    from aiologger.formatters.base import Formatter
    from aiologger.handlers.files import AsyncFileHandler

    lg = Logger(name="bench.aiologger")
    handler = AsyncFileHandler(path)
    handler.formatter = Formatter(FORMAT)
    lg.add_handler(handler)

    def log(i: int) -> Any:
        return lg.info("record %d user=%s" % (i, "ann"))  # noqa: UP031 - aiologger API

    async def finish() -> None:
        await lg.shutdown()

    return log, finish


def setup_anycore_structlog(
    path: str, slow: bool
) -> tuple[Callable[[int], Any], Callable[[], Any]]:
    handler = (_SlowAnycoreFile if slow else alog.FileHandler)(path, queue_size=400_000)
    alog.configure("INFO", "json", stream=False, handlers=[handler], capture_warnings=False)
    log = alog.get_logger("bench.anycore")

    def emit(i: int) -> None:
        log.info("record", i=i, user="ann")

    async def finish() -> None:
        await handler.aflush(60)
        logging.getLogger().removeHandler(handler)
        await handler.aclose()

    return emit, finish


def setup_anycore_stdlib(path: str, slow: bool) -> tuple[Callable[[int], Any], Callable[[], Any]]:
    handler = (_SlowAnycoreFile if slow else alog.FileHandler)(path, queue_size=400_000)
    handler.setFormatter(logging.Formatter(FORMAT))
    lg = _stdlib_logger("bench.anycore.stdlib", handler)

    def log(i: int) -> None:
        lg.info("record %d user=%s", i, "ann")

    async def finish() -> None:
        await handler.aflush(60)
        lg.removeHandler(handler)
        await handler.aclose()

    return log, finish


# (name, setup, has a slow-sink variant).  aiologger writes through aiofiles'
# thread pool; there is no honest way to slow its file down the same way.
CONTENDERS: list[tuple[str, Setup, bool]] = [
    ("render only (floor)", setup_nothing, True),
    ("stdlib FileHandler", setup_stdlib_file, True),
    ("QueueHandler+Listener", setup_queue_listener, True),
    ("structlog direct", setup_structlog_direct, True),
    ("aiologger", setup_aiologger, False),
    ("anycore (structlog)", setup_anycore_structlog, True),
    ("anycore (stdlib)", setup_anycore_stdlib, True),
]


def _available(name: str) -> bool:
    if name != "aiologger":
        return True
    try:
        import aiofiles  # noqa: F401 - aiologger's file handler needs it
        import aiologger  # noqa: F401
    except ImportError:
        print("  (aiologger skipped: pip install 'aiologger[aiofiles]')")
        return False
    return True


async def _run_one(setup: Setup, records: int, slow: bool, directory: str) -> Result:
    path = os.path.join(directory, f"log-{time.monotonic_ns()}.txt")
    log, finish = setup(path, slow)
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    pending: list[asyncio.TimerHandle] = []

    def tick(expected: float) -> None:
        now = time.perf_counter()
        lags.append(max(0.0, now - expected))
        pending[0] = loop.call_later(0.001, tick, time.perf_counter() + 0.001)

    pending.append(loop.call_later(0.001, tick, time.perf_counter() + 0.001))
    await asyncio.sleep(0.005)
    spent = 0.0
    # 4 coroutines x 5 records per loop iteration: about 20 records between
    # two ticks, so the ticker's lag shows what logging adds, not our loop.
    workers = 4
    per_worker = records // workers
    chunk = 5

    async def producer(base: int) -> None:
        nonlocal spent
        i = 0
        while i < per_worker:
            n = min(chunk, per_worker - i)
            t0 = time.perf_counter()
            pending = [log(base + i + k) for k in range(n)]
            spent += time.perf_counter() - t0
            for p in pending:
                if p is not None and asyncio.isfuture(p):
                    await p
            i += n
            await asyncio.sleep(0)

    gc.collect()
    started = time.perf_counter()
    await asyncio.gather(*(producer(w * per_worker) for w in range(workers)))
    pending[0].cancel()  # lag is measured while records are produced, not at shutdown
    await finish()
    elapsed = time.perf_counter() - started
    with open(path, "rb") as fh:
        lines = sum(1 for _ in fh)
    lags.sort()
    p99 = lags[int(len(lags) * 0.99)] if lags else 0.0
    return Result(
        rate=workers * per_worker / elapsed,
        cost_us=spent / (workers * per_worker) * 1e6,
        lag_max_ms=(lags[-1] if lags else 0.0) * 1000,
        lag_p99_ms=p99 * 1000,
        lost=0 if setup is setup_nothing else workers * per_worker - lines,
    )


def _median(results: list[Result]) -> Result:
    return Result(
        rate=statistics.median(r.rate for r in results),
        cost_us=statistics.median(r.cost_us for r in results),
        lag_max_ms=statistics.median(r.lag_max_ms for r in results),
        lag_p99_ms=statistics.median(r.lag_p99_ms for r in results),
        lost=max(r.lost for r in results),
    )


def _table(title: str, rows: dict[str, Result]) -> None:
    base = rows["stdlib FileHandler"]
    slog = rows["structlog direct"]
    print(title)
    print(
        f"  {'contender':<22} {'records/s':>10} {'vs file':>8} {'loop us/rec':>12}"
        f" {'vs structlog':>13} {'lag max ms':>11} {'lag p99 ms':>11} {'lost':>6}"
    )
    for name, r in rows.items():
        if name.startswith("render only"):
            print(
                f"  {name:<22} {'-':>10} {'':>8} {'-':>12} {'':>13}"
                f" {r.lag_max_ms:11.2f} {r.lag_p99_ms:11.2f} {'':>6}"
            )
            continue
        print(
            f"  {name:<22} {r.rate:10.0f} {r.rate / base.rate:7.2f}x {r.cost_us:12.2f}"
            f" {r.cost_us / slog.cost_us:12.2f}x {r.lag_max_ms:11.2f} {r.lag_p99_ms:11.2f}"
            f" {r.lost:6d}"
        )


def main(quick: bool) -> None:
    """Run the logging benchmark and print the tables (quick: CI smoke sizes)."""
    records = 5_000 if quick else 200_000
    slow_records = 1_000 if quick else 10_000
    repeats = 1 if quick else 3
    directory = tempfile.mkdtemp(prefix="anycore-bench-logging-")
    saved_root = list(logging.getLogger().handlers)
    try:
        for title, n, slow in (
            (
                f"{records} records logged from coroutines on uvloop (median of {repeats})",
                records,
                False,
            ),
            (f"slow sink (1 ms per write), {slow_records} records", slow_records, True),
        ):
            chosen = [
                (name, setup)
                for name, setup, has_slow in CONTENDERS
                if (has_slow or not slow) and _available(name)
            ]
            runs: dict[str, list[Result]] = {name: [] for name, _ in chosen}
            # Round-robin over the contenders so that a change in the
            # machine's load during the run hits all of them alike.
            for _ in range(repeats):
                for name, setup in chosen:
                    runs[name].append(uvloop.run(_run_one(setup, n, slow, directory)))
            rows = {name: _median(results) for name, results in runs.items()}
            _table(title, rows)
            ours = rows["anycore (structlog)"]
            if quick:
                print("  (quick mode: the lag columns come from a few ticks; indicative only)")
            if slow:
                verdict = "ok" if ours.lag_p99_ms < 1.0 else "MISSED"
                print(
                    f"  anycore loop-lag p99 under a slow sink: {ours.lag_p99_ms:.2f} ms"
                    f" (target < 1 ms: {verdict})"
                )
            else:
                cost_ok = ours.cost_us <= rows["structlog direct"].cost_us
                rate_ok = ours.rate >= rows["stdlib FileHandler"].rate
                print(
                    f"  targets: loop cost <= structlog direct: {'ok' if cost_ok else 'MISSED'};"
                    f" throughput >= stdlib FileHandler: {'ok' if rate_ok else 'MISSED'}"
                )
    finally:
        root = logging.getLogger()
        for h in list(root.handlers):
            if h not in saved_root:
                root.removeHandler(h)
                with contextlib.suppress(Exception):
                    h.close()
        structlog.reset_defaults()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    import sys

    main("--quick" in sys.argv)
