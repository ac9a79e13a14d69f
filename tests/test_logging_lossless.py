"""No anycore log handler loses a record unless a lossy policy was chosen.

The workloads are the ones that broke the previous design: many coroutines
logging in a burst on one loop (the writer thread starved of the GIL and the
bounded queue dropped most records), a thread and a child process logging at
the same time, SIGTERM in the middle of a burst, a slow sink, and a burst to a
network peer that is up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import anycore
import anycore.logging as alog
from anycore.logging import FileHandler, SocketHandler
from test_logging_sink import BlockingSink  # a sink whose writer waits for the test

COROUTINES = 10
PER_COROUTINE = 5_000
LINE = re.compile(r"^user \d+ did \w+ \d+$")


@pytest.fixture
def logger(request: pytest.FixtureRequest) -> Iterator[logging.Logger]:
    lg = logging.getLogger(f"test.lossless.{request.node.name}")
    lg.setLevel(logging.INFO)
    lg.propagate = False
    yield lg
    for h in list(lg.handlers):
        lg.removeHandler(h)
        h.close()


async def _burst(
    log: Any, coroutines: int = COROUTINES, per: int = PER_COROUTINE, between: int = 1
) -> None:
    # ``between`` records per coroutine between two yields to the loop.
    async def produce(k: int) -> None:
        for i in range(per):
            log(k, i)
            if i % between == between - 1:
                await asyncio.sleep(0)

    await asyncio.gather(*(produce(k) for k in range(coroutines)))


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


async def test_a_burst_from_ten_coroutines_loses_nothing(
    tmp_path: Path, logger: logging.Logger
) -> None:
    path = tmp_path / "burst.log"
    handler = FileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    await _burst(lambda k, i: logger.info("user %s did %s %d", k, "login", i))
    await handler.aclose()
    lines = _lines(path)
    assert len(lines) == COROUTINES * PER_COROUTINE
    assert handler.dropped == 0
    assert all(LINE.match(line) for line in lines)
    for k in range(COROUTINES):  # each coroutine's records in its own order
        mine = [int(line.split()[-1]) for line in lines if line.startswith(f"user {k} ")]
        assert mine == list(range(PER_COROUTINE))


async def test_a_burst_through_configure_json_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "burst.json"
    saved = list(logging.getLogger().handlers)
    installed = alog.configure("INFO", "json", file=path, stream=False, capture_warnings=False)
    try:
        log = alog.get_logger("test.lossless.json")
        await _burst(lambda k, i: log.info("did", user=k, i=i))
    finally:
        root = logging.getLogger()
        for h in installed:
            root.removeHandler(h)
            await h.aclose()  # type: ignore[attr-defined]
        for h in saved:
            if h not in root.handlers:
                root.addHandler(h)
    events = [json.loads(line) for line in _lines(path)]
    assert len(events) == COROUTINES * PER_COROUTINE
    assert {(e["user"], e["i"]) for e in events} == {
        (k, i) for k in range(COROUTINES) for i in range(PER_COROUTINE)
    }


def log_many_in_child(name: str, count: int) -> int:
    lg = logging.getLogger(name)
    lg.setLevel(logging.INFO)
    for i in range(count):
        lg.info("child did %d", i)
    return count


async def test_a_burst_with_a_thread_and_a_child_process_logging_too(tmp_path: Path) -> None:
    path = tmp_path / "mixed.log"
    handler = FileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    name = "test.lossless.mixed"
    lg = logging.getLogger(name)
    per_thread = 20_000
    child_records = 5_000

    def from_thread() -> None:
        for i in range(per_thread):
            lg.info("thread did %d", i)

    thread = threading.Thread(target=from_thread)
    try:
        async with anycore.ChildProcess(log_many_in_child, name, child_records) as child:
            thread.start()
            await _burst(lambda k, i: lg.info("user %s did %s %d", k, "login", i))
            assert await child.result() == child_records
            await asyncio.to_thread(thread.join, 30)
        assert not thread.is_alive()
        # The child's records travel through the parent's listener; wait
        # (bounded) until they have all been handed to our handler.
        deadline = time.monotonic() + 30
        expected = COROUTINES * PER_COROUTINE + per_thread + child_records
        while handler.written + handler.queued < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        await handler.aclose()
    lines = _lines(path)
    assert sum(1 for x in lines if x.startswith("user ")) == COROUTINES * PER_COROUTINE
    assert [int(x.split()[-1]) for x in lines if x.startswith("thread ")] == list(range(per_thread))
    assert [int(x.split()[-1]) for x in lines if x.startswith("child ")] == list(
        range(child_records)
    )
    assert handler.dropped == 0


_SIGTERM_CHILD = textwrap.dedent(
    """
    import asyncio, logging, sys
    import anycore
    from anycore.logging import FileHandler

    handler = FileHandler(sys.argv[1])
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("burst")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    count = 0

    async def produce(k):
        global count
        i = 0
        while True:
            log.info("user %d did %s %d", k, "x" * (i % 200), i)
            count += 1
            i += 1
            if count == 20_000:
                print("READY", flush=True)
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(*(produce(k) for k in range(10)))

    try:
        anycore.run(main, loop=sys.argv[2])
    finally:
        print("LOGGED", count, handler.dropped, flush=True)
    """
)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sigterm_in_the_middle_of_a_burst_keeps_every_record_whole(
    tmp_path: Path, loop: str
) -> None:
    path = tmp_path / "term.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_CHILD, str(path), loop],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    match = re.search(r"LOGGED (\d+) (\d+)", out)
    assert match, (out, err)
    logged, dropped = int(match[1]), int(match[2])
    lines = _lines(path)
    assert dropped == 0
    assert len(lines) == logged
    whole = re.compile(r"^user \d did x* \d+$")
    assert all(whole.match(line) for line in lines), [x for x in lines if not whole.match(x)][:3]


# -- the policies ---------------------------------------------------------------


async def test_drop_newest_drops_and_counts_exactly(logger: logging.Logger) -> None:
    sink = BlockingSink(queue_size=10, overflow="drop_newest")
    logger.addHandler(sink)
    logger.info("rec first")
    assert await asyncio.to_thread(sink.entered.wait, 10)
    for i in range(100):
        logger.info("rec %d", i)
    assert sink.dropped == 90
    sink.release.set()
    assert await sink.aflush(10)
    assert sink.lines[:11] == ["rec first", *(f"rec {i}" for i in range(10))]
    assert re.match(
        r"90 log records dropped by BlockingSink \(overflow=drop_newest", sink.lines[11]
    )
    assert len(sink.lines) == 12  # the notice is written once


async def test_the_byte_bound_holds_whatever_the_record_count(logger: logging.Logger) -> None:
    sink = BlockingSink(max_bytes=10_000, overflow="drop_oldest")
    logger.addHandler(sink)
    logger.info("rec first")
    assert await asyncio.to_thread(sink.entered.wait, 10)
    for i in range(1_000):
        logger.info("%04d %s", i, "y" * 995)  # 1,000 bytes each
        assert sink.queued_bytes <= 10_000
    assert sink.queued == 10
    assert sink.dropped == 990
    sink.release.set()
    assert await sink.aflush(10)
    assert [line[:4] for line in sink.lines[1:11]] == [f"{i:04d}" for i in range(990, 1000)]


async def test_the_default_policy_never_drops_behind_a_stuck_sink(
    logger: logging.Logger,
) -> None:
    sink = BlockingSink(queue_size=10)
    logger.addHandler(sink)
    logger.info("rec first")
    assert await asyncio.to_thread(sink.entered.wait, 10)

    def produce() -> None:
        for i in range(100):
            logger.info("rec %d", i)  # waits for the sink once the buffer is full

    producer = threading.Thread(target=produce)
    producer.start()
    assert await asyncio.to_thread(_wait_until, lambda: sink.queued == 10)
    assert producer.is_alive()
    sink.release.set()
    await asyncio.to_thread(producer.join, 20)
    assert await sink.aflush(10)
    assert sink.lines == ["rec first", *(f"rec {i}" for i in range(100))]
    assert sink.dropped == 0


def _wait_until(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_unknown_policy_and_the_old_block_argument_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="overflow must be one of"):
        FileHandler(tmp_path / "x.log", overflow="lose")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="overflow="):
        FileHandler(tmp_path / "x.log", block=True)


class _SlowFile(FileHandler):
    def _write_bytes(self, data: bytes) -> None:
        time.sleep(0.001)
        super()._write_bytes(data)


async def test_a_slow_sink_is_written_from_the_thread_and_loses_nothing(
    tmp_path: Path, logger: logging.Logger
) -> None:
    path = tmp_path / "slow.log"
    handler = _SlowFile(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    await _burst(lambda k, i: logger.info("user %s did %s %d", k, "login", i), per=200)
    # The writes were measured slow: the writer thread took them over.
    assert handler.threaded
    await handler.aclose()
    assert len(_lines(path)) == COROUTINES * 200
    assert handler.dropped == 0


class _SwitchableSlowFile(FileHandler):
    write_delay = 0.05

    def _write_bytes(self, data: bytes) -> None:
        if self.write_delay:
            time.sleep(self.write_delay)
        super()._write_bytes(data)


async def test_the_loop_never_waits_for_a_slow_first_write(
    tmp_path: Path, logger: logging.Logger
) -> None:
    # Nothing tells in advance that a regular file is slow: its first write
    # is a probe made by a helper thread while the loop waits slow_write at
    # most, so the loop never waits for the 50 ms write.
    path = tmp_path / "slow-first.log"
    handler = _SwitchableSlowFile(path)
    handler.setFormatter(logging.Formatter("rec %(message)s"))
    logger.addHandler(handler)
    longest = 0.0
    deadline = time.monotonic() + 20
    i = 0
    while not handler.threaded:
        assert time.monotonic() < deadline, "the slow file was never handed to the writer"
        logger.info("%d", i)
        i += 1
        started = time.perf_counter()
        await asyncio.sleep(0)  # the loop writes (or probes) at the end of this iteration
        longest = max(longest, time.perf_counter() - started)
    assert longest < handler.write_delay / 2
    for j in range(i, i + 100):
        logger.info("%d", j)
        await asyncio.sleep(0)
    await handler.aclose()
    assert _lines(path) == [f"rec {n}" for n in range(i + 100)]


async def test_a_sink_fast_again_is_written_from_the_loop_again(
    tmp_path: Path, logger: logging.Logger
) -> None:
    path = tmp_path / "slow-then-fast.log"
    handler = _SwitchableSlowFile(path, slow_hold=0.05)
    handler.write_delay = 0.005
    handler.setFormatter(logging.Formatter("rec %(message)s"))
    logger.addHandler(handler)
    n = 0
    deadline = time.monotonic() + 20
    while not handler.threaded:
        assert time.monotonic() < deadline, "the slow file was never handed to the writer"
        logger.info("%d", n)
        n += 1
        await asyncio.sleep(0.001)
    handler.write_delay = 0.0
    # A probe at the end of the hold (or a fast write of the writer thread)
    # gives the writing back to the loop.
    while handler.threaded:
        assert time.monotonic() < deadline, "the fast sink stayed with the writer thread"
        logger.info("%d", n)
        n += 1
        await asyncio.sleep(0.002)
    loop_writes = handler._loop_writes
    for _ in range(20):
        logger.info("%d", n)
        n += 1
        await asyncio.sleep(0)
    assert handler._loop_writes > loop_writes
    await handler.aclose()
    assert _lines(path) == [f"rec {i}" for i in range(n)]


async def test_a_fast_file_is_written_from_the_loop_once_per_iteration(
    tmp_path: Path, logger: logging.Logger
) -> None:
    path = tmp_path / "fast.log"
    handler = FileHandler(path, slow_write=10.0)  # never counts as slow here
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.info("first")
    assert await handler.aflush(10)
    assert not handler.threaded  # a fast file: the loop writes
    await _burst(lambda k, i: logger.info("user %s did %s %d", k, "login", i), per=100)
    # The first loop write was a probe (by the helper thread, while the loop
    # waited), the others the loop's own: one per iteration (10 records
    # each), not one per record.
    assert handler._probe_writes == 1
    assert 0 < handler._loop_writes <= 110
    await handler.aclose()
    assert len(_lines(path)) == COROUTINES * 100 + 1


async def test_a_pipe_without_a_reader_moves_the_writing_off_the_loop(
    logger: logging.Logger,
) -> None:
    r, w = os.pipe()
    stream = os.fdopen(w, "w", encoding="utf-8")
    handler = alog.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    total = 3_000
    await _burst(lambda k, i: logger.info("%d %d %s", k, i, "p" * 100), coroutines=3, per=1_000)
    assert handler.threaded  # the full pipe was noticed; the loop never waited
    chunks: list[bytes] = []

    def collect() -> None:
        while data := os.read(r, 65536):
            chunks.append(data)

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        logger.removeHandler(handler)
        await handler.aclose()
        stream.close()
        await asyncio.to_thread(collector.join, 20)
    finally:
        os.close(r)
    assert len(b"".join(chunks).decode().splitlines()) == total


# -- network handlers -----------------------------------------------------------


async def test_a_burst_to_a_reachable_tcp_peer_loses_nothing(logger: logging.Logger) -> None:
    received = 0
    total = COROUTINES * 2_000
    finished = asyncio.Event()

    async def receive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        try:
            while True:
                head = await reader.readexactly(4)
                await reader.readexactly(struct.unpack(">L", head)[0])
                received += 1
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()
            finished.set()

    server = await asyncio.start_server(receive, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # A small buffer: the burst overflows it many times over while the peer
    # is up, so the records must go straight into the connection.
    handler = SocketHandler("127.0.0.1", port, buffer_size=200)
    logger.addHandler(handler)
    try:
        await handler.start()
        logger.info("hello")
        assert await handler.aflush(10)
        assert handler.connected
        # 500 records per loop iteration: more than the buffer holds.
        await _burst(
            lambda k, i: logger.info("user %s did %s %d", k, "login", i), per=2_000, between=50
        )
        await handler.aclose()
        with anyio.fail_after(20):
            await finished.wait()  # the handler closed its connection: EOF
    finally:
        logger.removeHandler(handler)
        server.close()
        await server.wait_closed()
    assert handler.dropped == 0
    assert received == total + 1
