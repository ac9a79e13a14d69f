"""Logging from coroutines on uvloop: loss, loop-side cost, loop lag, memory.

The workload is the one that used to break anycore (issue 10): ``coroutines``
coroutines each log ``per`` records through a stdlib logger (``await
asyncio.sleep(0)`` after every record) while a 1 ms ticker measures how late
the loop runs it; then the handler is closed.  Every contender runs in a
fresh process (``python -m benchmarks.bench_logging --one NAME ...``), rounds
interleaved, and counts the lines in its file afterwards: a contender that
lost a record prints FAILED, not a figure.

Reported per contender (median of the rounds): loop-side us/record (time
spent inside the log calls), records/s until the end of close, ticker lag
p50 / p99 / max, lines written vs records, peak RSS.

Contenders: the stdlib ``FileHandler`` called in the loop, ``QueueHandler`` +
``QueueListener``, structlog writing directly to a file (``WriteLogger``),
aiologger, anycore's ``FileHandler`` under a stdlib logger and anycore's
``configure(format="json", file=...)`` with structlog.  Then the slow sink
(every write sleeps 1 ms) and, for anycore, a million records from 50
coroutines (nothing lost, RSS bounded).

Targets (printed as met / MISSED): every anycore row loses nothing; loop cost
<= 1.0x structlog writing directly; lag p99 < 0.5 ms and max < 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import logging.handlers
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks import _report

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
SLOW_WRITE = 0.001

# -- the contenders (each runs in its own process) --------------------------------

Setup = Callable[[str, bool], tuple[Callable[[int, int], Any], Callable[[], Any]]]


class SlowFile(io.FileIO):
    """A file whose every write takes an extra millisecond."""

    def write(self, b: Any) -> int:
        time.sleep(SLOW_WRITE)
        return super().write(b)


def _open_text(path: str, slow: bool) -> io.TextIOWrapper:
    raw = SlowFile(path, "a") if slow else io.FileIO(path, "a")
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8")


def _stdlib_logger(name: str, handler: logging.Handler) -> logging.Logger:
    lg = logging.getLogger(name)
    lg.handlers.clear()
    lg.propagate = False
    lg.setLevel(logging.INFO)
    lg.addHandler(handler)
    return lg


def setup_stdlib_file(path: str, slow: bool) -> tuple[Callable[[int, int], Any], Any]:
    handler = logging.StreamHandler(_open_text(path, slow))  # FileHandler's own write path
    handler.setFormatter(logging.Formatter(FORMAT))
    lg = _stdlib_logger("bench.stdlib", handler)

    def log(k: int, i: int) -> None:
        lg.info("user %s did %s %d", k, "login", i)

    async def finish() -> None:
        handler.flush()
        handler.stream.close()

    return log, finish


def setup_queue_listener(path: str, slow: bool) -> tuple[Callable[[int, int], Any], Any]:
    target = logging.StreamHandler(_open_text(path, slow))
    target.setFormatter(logging.Formatter(FORMAT))
    q: queue.Queue[logging.LogRecord] = queue.Queue(-1)
    listener = logging.handlers.QueueListener(q, target)
    listener.start()
    lg = _stdlib_logger("bench.queue", logging.handlers.QueueHandler(q))

    def log(k: int, i: int) -> None:
        lg.info("user %s did %s %d", k, "login", i)

    async def finish() -> None:
        listener.stop()  # drains the queue
        target.flush()
        target.stream.close()

    return log, finish


def setup_structlog_direct(path: str, slow: bool) -> tuple[Callable[[int, int], Any], Any]:
    import structlog

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

    def emit(k: int, i: int) -> None:
        log.info("did", user=k, action="login", i=i)

    async def finish() -> None:
        fh.flush()
        fh.close()

    return emit, finish


def setup_aiologger(path: str, slow: bool) -> tuple[Callable[[int, int], Any], Any]:
    from aiologger import Logger
    from aiologger.formatters.base import Formatter
    from aiologger.handlers.files import AsyncFileHandler

    lg = Logger(name="bench.aiologger")
    handler = AsyncFileHandler(path)
    handler.formatter = Formatter(FORMAT)
    lg.add_handler(handler)

    def log(k: int, i: int) -> Any:
        return lg.info("user %s did %s %d" % (k, "login", i))  # noqa: UP031 - aiologger API

    async def finish() -> None:
        await lg.shutdown()

    return log, finish


def _anycore_file(path: str, slow: bool) -> Any:
    import anycore.logging as alog

    class SlowFileHandler(alog.FileHandler):
        def _write_bytes(self, data: bytes) -> None:
            time.sleep(SLOW_WRITE)
            super()._write_bytes(data)

    return (SlowFileHandler if slow else alog.FileHandler)(path)


def setup_anycore_stdlib(path: str, slow: bool) -> tuple[Callable[[int, int], Any], Any]:
    handler = _anycore_file(path, slow)
    handler.setFormatter(logging.Formatter(FORMAT))
    lg = _stdlib_logger("bench.anycore.stdlib", handler)

    def log(k: int, i: int) -> None:
        lg.info("user %s did %s %d", k, "login", i)

    async def finish() -> None:
        handler.close()

    return log, finish


def setup_anycore_json(path: str, slow: bool) -> tuple[Callable[[int, int], Any], Any]:
    import anycore.logging as alog

    handler = _anycore_file(path, slow)
    alog.configure("INFO", "json", stream=False, handlers=[handler], capture_warnings=False)
    log = alog.get_logger("bench.anycore")

    def emit(k: int, i: int) -> None:
        log.info("did", user=k, action="login", i=i)

    async def finish() -> None:
        handler.close()

    return emit, finish


CONTROL = "no logging (control)"


def setup_control(path: str, slow: bool) -> tuple[Callable[[int, int], Any], Any]:
    """The workload with nothing logged: the message is built and thrown away.

    Its lag is the floor of the measurement itself: uvloop's timers run on a
    coarse millisecond clock, and a short run has few ticks, so a loop that
    does no I/O at all still reads a few tenths of a millisecond of lag.
    """

    def log(k: int, i: int) -> None:
        _ = "user %s did %s %d" % (k, "login", i)  # noqa: UP031 - the stdlib's own formatting

    async def finish() -> None:
        return None

    return log, finish


# (name, setup, has a slow variant, is anycore's).  aiologger writes through
# aiofiles' thread pool; there is no honest way to slow its file down alike.
CONTENDERS: dict[str, tuple[Setup, bool, bool]] = {
    CONTROL: (setup_control, True, False),
    "stdlib FileHandler": (setup_stdlib_file, True, False),
    "QueueHandler+Listener": (setup_queue_listener, True, False),
    "structlog direct": (setup_structlog_direct, True, False),
    "aiologger": (setup_aiologger, False, False),
    "anycore FileHandler": (setup_anycore_stdlib, True, True),
    "anycore configure(json)": (setup_anycore_json, True, True),
}


def _peak_rss_kib() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


async def _run_one(name: str, path: str, coroutines: int, per: int, slow: bool) -> dict[str, Any]:
    log, finish = CONTENDERS[name][0](path, slow)
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    stop = False

    async def ticker() -> None:
        while not stop:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(max(0.0, time.perf_counter() - t - 0.001))

    tick = loop.create_task(ticker())
    await asyncio.sleep(0.005)
    lags.clear()
    spent = 0.0

    async def produce(k: int) -> None:
        nonlocal spent
        for i in range(per):
            t0 = time.perf_counter()
            pending = log(k, i)
            spent += time.perf_counter() - t0
            if pending is not None and asyncio.isfuture(pending):
                await pending
            await asyncio.sleep(0)

    started = time.perf_counter()
    await asyncio.gather(*(produce(k) for k in range(coroutines)))
    await finish()  # the ticker keeps measuring: a close that stalls the loop counts
    elapsed = time.perf_counter() - started
    stop = True
    await tick
    with open(path, "rb") as fh:
        lines = sum(1 for _ in fh)
    lags.sort()
    records = coroutines * per
    return {
        "records": records,
        "lines": lines,
        "rate": records / elapsed,
        "cost_us": spent / records * 1e6,
        "lags_ms": [round(lag * 1000, 4) for lag in lags],
        "rss_mib": _peak_rss_kib() / 1024,
    }


def _child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", required=True)
    parser.add_argument("--coroutines", type=int, required=True)
    parser.add_argument("--per", type=int, required=True)
    parser.add_argument("--slow", action="store_true")
    args = parser.parse_args(argv)
    import uvloop

    with tempfile.TemporaryDirectory(prefix="anycore-bench-logging-") as directory:
        path = os.path.join(directory, "log.txt")
        open(path, "wb").close()
        result = uvloop.run(_run_one(args.one, path, args.coroutines, args.per, args.slow))
    print("RESULT " + json.dumps(result), flush=True)


# -- the orchestrator -------------------------------------------------------------


def _spawn(name: str, coroutines: int, per: int, slow: bool) -> dict[str, Any] | str:
    cmd = [sys.executable, "-m", "benchmarks.bench_logging", "--one", name]
    cmd += ["--coroutines", str(coroutines), "--per", str(per)]
    if slow:
        cmd.append("--slow")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        return "timed out"
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    return f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"


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


def _median(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    # Lag percentiles over the ticks of every round together: one short run
    # (a fast writer finishes the slow workload in ~20 ms) has too few ticks
    # for a p99 of its own.
    lags = sorted(lag for r in runs for lag in r["lags_ms"])
    out = {key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "lags_ms"}
    out["ticks"] = len(lags)
    out["lag_p50_ms"] = lags[len(lags) // 2] if lags else 0.0
    out["lag_p99_ms"] = lags[int(len(lags) * 0.99)] if lags else 0.0
    out["lag_max_ms"] = lags[-1] if lags else 0.0
    out["lines"] = min(r["lines"] for r in runs)  # the worst run counts for loss
    lost = sum(1 for r in runs if r["lines"] != r["records"])
    out["lost_runs"] = 0 if name == CONTROL else lost  # the control writes nothing
    return out


def _workload(
    title: str, names: list[str], coroutines: int, per: int, slow: bool, rounds: int
) -> dict[str, dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    failures: dict[str, str] = {}
    for _ in range(rounds):  # interleaved: a change in load hits every contender
        for name in names:
            if name in failures:
                continue
            result = _spawn(name, coroutines, per, slow)
            if isinstance(result, str):
                failures[name] = result
            else:
                runs[name].append(result)
    print(title)
    print(
        f"  {'contender':<24} {'lines/records':>15} {'us/rec':>7} {'vs structlog':>12}"
        f" {'rec/s':>8} {'lag p50':>8} {'p99':>6} {'max ms':>7} {'ticks':>6} {'RSS MiB':>8}"
    )
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        if name in failures:
            print(f"  {name:<24} FAILED: {failures[name]}")
            continue
        rows[name] = _median(name, runs[name])
    base = rows.get("structlog direct")
    for name, r in rows.items():
        lost = r["lost_runs"]
        counted = "-" if name == CONTROL else f"{r['lines']}/{r['records']}"
        if lost:
            print(f"  {name:<24} FAILED: lost records in {lost} of {rounds} runs ({counted})")
            continue
        vs = f"{r['cost_us'] / base['cost_us']:11.2f}x" if base else f"{'-':>12}"
        print(
            f"  {name:<24} {counted:>15} {r['cost_us']:7.2f} {vs} {r['rate']:8.0f}"
            f" {r['lag_p50_ms']:8.2f} {r['lag_p99_ms']:6.2f} {r['lag_max_ms']:7.2f}"
            f" {r['ticks']:6d} {r['rss_mib']:8.1f}"
        )
    return rows


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main(quick: bool) -> None:
    """Run the logging benchmark and print the tables (quick: CI smoke sizes)."""
    rounds = 1 if quick else 3
    per = 500 if quick else 20_000
    slow_per = 50 if quick else 200
    names = [n for n in CONTENDERS if _available(n)]
    ours = [n for n, (_, _, mine) in CONTENDERS.items() if mine]
    burst = _workload(
        f"10 coroutines x {per} records, 1 ms ticker, uvloop (median of {rounds}, fresh processes)",
        names,
        10,
        per,
        False,
        rounds,
    )
    slow = _workload(
        f"slow sink (1 ms per write), 10 coroutines x {slow_per} records",
        [n for n in names if CONTENDERS[n][1]],
        10,
        slow_per,
        True,
        rounds,
    )
    big_per = 400 if quick else 20_000
    big = _workload(
        f"{50 * big_per:,} records from 50 coroutines (anycore): nothing lost, RSS bounded",
        ours,
        50,
        big_per,
        False,
        1,
    )
    print("  targets:")
    base = burst.get("structlog direct")
    file_base = burst.get("stdlib FileHandler")
    for name in ours:
        for label, rows in (("burst", burst), ("slow", slow), ("1M", big)):
            r = rows.get(name)
            if r is None or r["lost_runs"]:
                print(f"    {name} {label}: lossless MISSED")
                _report.failure("logging", f"{name}, {label}: records lost")
                continue
            if label == "burst" and base:
                _report.ratio(
                    "logging",
                    f"{name}: loop-side cost per record, burst",
                    r["cost_us"] / base["cost_us"],
                    baseline="structlog writing directly",
                    target=1.0,
                    higher_is_better=False,
                )
            if label == "burst" and file_base:
                _report.ratio(
                    "logging",
                    f"{name}: records/s to the end of close, burst",
                    r["rate"] / file_base["rate"],
                    baseline="stdlib FileHandler",
                )
            parts = ["lossless met"]
            if label != "1M":
                floor = rows.get(CONTROL)
                seen = f" (no logging: {floor['lag_p99_ms']:.2f})" if floor else ""
                parts.append(f"lag p99 < 0.5 ms {_verdict(r['lag_p99_ms'] < 0.5)}{seen}")
                parts.append(f"max < 5 ms {_verdict(r['lag_max_ms'] < 5)}")
            if label == "burst" and base:
                ratio = r["cost_us"] / base["cost_us"]
                parts.append(f"cost {ratio:.2f}x structlog (<= 1.0x {_verdict(ratio <= 1.0)})")
            print(f"    {name} {label}: " + ", ".join(parts))
    if quick:
        print("  (quick mode: few ticks and records; the lag and cost columns are indicative only)")


if __name__ == "__main__":
    if "--one" in sys.argv:
        _child_main(sys.argv[1:])
    else:
        main("--quick" in sys.argv)
