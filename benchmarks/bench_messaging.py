"""Pipe round trips to a child process: anycore.Pipe against multiprocessing.Pipe and os.pipe.

A child process echoes every message back; the parent times N round trips
(send, then receive the echo) of

* a small object (a pickled 3-tuple), and
* 1 MB of bytes,

over three channels, in the same run:

* **raw os.pipe** - two OS pipes, a 4-byte length and the bytes written and
  read with blocking ``os.write`` / ``os.read`` on both sides: the floor;
* **multiprocessing.Pipe** - the standard library's blocking Connection on
  both sides: the baseline the ratios are against;
* **anycore.Pipe** - the parent's end is an anycore Connection awaited on an
  event loop (asyncio, then uvloop); the child echoes with the standard
  library's Connection on the same fd (the framing is the same), so the
  difference to the baseline is the parent's async side.

The parent's CPU time per round trip is printed too (steadier than wall time on a
busy machine).  Every reply is checked; a lost or wrong reply prints FAILED for that row
instead of a figure.  ``main(quick)`` runs few round trips once; the full run
repeats each contender (round robin, median).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import resource
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from multiprocessing import connection as mpc

from anycore import Connection, Pipe
from benchmarks import _report

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

CTX = multiprocessing.get_context("spawn")
SMALL = ("ping", 12345, 3.25)
BIG = os.urandom(1 << 20)
_HEADER = struct.Struct("!i")
WARMUP = 5
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RAW_CHILD = (
    "import sys; from benchmarks.bench_messaging import echo_raw; "
    "echo_raw(int(sys.argv[1]), int(sys.argv[2]))"
)


Timing = tuple[float, float]  # (wall seconds, this process's CPU seconds)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _now() -> Timing:
    return time.perf_counter(), _cpu()


def _since(started: Timing) -> Timing:
    return time.perf_counter() - started[0], _cpu() - started[1]


class Lost(Exception):
    """A reply did not come back, or came back wrong."""


# -- child bodies ----------------------------------------------------------------------


def echo_stdlib(conn: mpc.Connection) -> None:
    """Echo messages on a standard library Connection until EOF."""
    try:
        while True:
            try:
                data = conn.recv_bytes()
            except EOFError:
                return
            conn.send_bytes(data)
    finally:
        conn.close()


def echo_anycore_fd(conn: Connection) -> None:
    """The child's end of an anycore Pipe, echoed by the standard library's Connection."""
    fd = conn.detach()
    os.set_blocking(fd, True)
    echo_stdlib(mpc.Connection(fd))


def _read_exact(fd: int, n: int) -> bytearray | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            return None
        got += k
    return buf


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def echo_raw(rfd: int, wfd: int) -> None:
    """Echo length-prefixed messages over two OS pipes until EOF."""
    try:
        while True:
            header = _read_exact(rfd, 4)
            if header is None:
                return
            (n,) = _HEADER.unpack(header)
            body = _read_exact(rfd, n)
            if body is None:
                return
            _write_all(wfd, header + body)
    finally:
        os.close(rfd)
        os.close(wfd)


# -- contenders: each returns seconds for n round trips -----------------------------


def _payload(kind: str) -> bytes:
    return pickle.dumps(SMALL) if kind == "small" else BIG


def run_raw(kind: str, n: int) -> Timing:
    payload = _payload(kind)
    p2c_r, p2c_w = os.pipe()
    c2p_r, c2p_w = os.pipe()
    # A plain child given the two fds (a multiprocessing child would not inherit them).
    proc = subprocess.Popen(
        [sys.executable, "-c", _RAW_CHILD, str(p2c_r), str(c2p_w)],
        pass_fds=(p2c_r, c2p_w),
        cwd=_ROOT,
    )
    os.close(p2c_r)
    os.close(c2p_w)
    frame = _HEADER.pack(len(payload)) + payload
    try:

        def trip() -> None:
            _write_all(p2c_w, frame)
            header = _read_exact(c2p_r, 4)
            if header is None:
                raise Lost("the child closed its pipe")
            body = _read_exact(c2p_r, _HEADER.unpack(header)[0])
            if kind == "small":
                if body is None or pickle.loads(body) != SMALL:
                    raise Lost("wrong reply")
            elif body is None or bytes(body) != payload:
                raise Lost("wrong reply")

        for _ in range(WARMUP):
            trip()
        started = _now()
        for _ in range(n):
            trip()
        return _since(started)
    finally:
        os.close(p2c_w)
        os.close(c2p_r)
        proc.wait(30)


def run_mp(kind: str, n: int) -> Timing:
    mine, theirs = CTX.Pipe()
    proc = CTX.Process(target=echo_stdlib, args=(theirs,))
    proc.start()
    theirs.close()
    try:

        def trip() -> None:
            if kind == "small":
                mine.send(SMALL)
                if mine.recv() != SMALL:
                    raise Lost("wrong reply")
            else:
                mine.send_bytes(BIG)
                if mine.recv_bytes() != BIG:
                    raise Lost("wrong reply")

        for _ in range(WARMUP):
            trip()
        started = _now()
        for _ in range(n):
            trip()
        return _since(started)
    except EOFError as exc:
        raise Lost("the child closed its end") from exc
    finally:
        mine.close()
        proc.join(30)


async def _anycore_trips(kind: str, n: int) -> Timing:
    mine, theirs = Pipe()
    proc = CTX.Process(target=echo_anycore_fd, args=(theirs,))
    proc.start()
    theirs.close()
    try:
        async with mine:

            async def trip() -> None:
                if kind == "small":
                    await mine.send(SMALL)
                    if await mine.recv() != SMALL:
                        raise Lost("wrong reply")
                else:
                    await mine.send_bytes(BIG)
                    if await mine.recv_bytes() != BIG:
                        raise Lost("wrong reply")

            for _ in range(WARMUP):
                await trip()
            started = _now()
            for _ in range(n):
                await trip()
            return _since(started)
    except EOFError as exc:
        raise Lost("the child closed its end") from exc
    finally:
        await asyncio.to_thread(proc.join, 30)


def run_anycore(factory: Callable[[], asyncio.AbstractEventLoop], kind: str, n: int) -> Timing:
    loop = factory()
    try:
        return loop.run_until_complete(asyncio.wait_for(_anycore_trips(kind, n), 300))
    finally:
        loop.close()


# -- reporting ---------------------------------------------------------------------


def measure(runs: dict[str, Callable[[], Timing]], repeats: int) -> dict[str, Timing | str]:
    """Median wall and CPU seconds per contender (round robin), or why it failed."""
    times: dict[str, list[Timing]] = {name: [] for name in runs}
    failed: dict[str, str] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            if name in failed:
                continue
            try:
                times[name].append(run())
            except (Lost, OSError, TimeoutError) as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"
    out: dict[str, Timing | str] = {}
    for name in runs:
        if name in failed:
            out[name] = failed[name]
        else:
            out[name] = (
                statistics.median(t[0] for t in times[name]),
                statistics.median(t[1] for t in times[name]),
            )
    return out


def report(title: str, label: str, n: int, results: dict[str, Timing | str], baseline: str) -> None:
    """Per round trip: wall time (ratio to *baseline*) and the parent's CPU time.

    The anycore rows also go to the run's summary (or its failures).
    """
    print(f"\n{title} ({n:,} round trips)")
    base = results.get(baseline)
    for name, result in results.items():
        if isinstance(result, str):
            print(f"  {name:<34} FAILED: {result}")
            if name.startswith("anycore"):
                _report.failure("messaging", f"{label} round trip, {name}: {result}")
            continue
        wall, cpu = (x / n * 1e6 for x in result)
        ratio = f"{base[0] / result[0]:5.2f}x" if isinstance(base, tuple) else "  -  "
        print(f"  {name:<34} {wall:9.1f} us/round trip {ratio}   parent CPU {cpu:7.1f} us")
        if name.startswith("anycore") and isinstance(base, tuple):
            _report.ratio(
                "messaging",
                f"{label} round trip, {name}",
                base[0] / result[0],
                baseline=baseline,
            )


def main(quick: bool) -> None:
    repeats = 1 if quick else 3
    sizes = {"small": 500 if quick else 20_000, "big": 10 if quick else 300}
    loops: list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]] = [
        ("asyncio", asyncio.new_event_loop)
    ]
    if uvloop is not None:
        loops.append(("uvloop", uvloop.new_event_loop))
    labels = {"small": "small object", "big": "1 MB bytes"}
    titles = {"small": f"small object {SMALL!r}", "big": "1 MB bytes"}
    for kind, n in sizes.items():
        runs: dict[str, Callable[[], Timing]] = {
            "raw os.pipe (blocking)": partial(run_raw, kind, n),
            "multiprocessing.Pipe (blocking)": partial(run_mp, kind, n),
        }
        for loop_name, factory in loops:
            runs[f"anycore.Pipe ({loop_name})"] = partial(run_anycore, factory, kind, n)
        report(
            f"{titles[kind]} to a child and back", labels[kind], n, measure(runs, repeats),
            "multiprocessing.Pipe (blocking)",
        )  # fmt: skip


if __name__ == "__main__":
    main(quick=False)
