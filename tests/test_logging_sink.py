"""anycore.logging's non-blocking handlers: order, bounds, rotation, lifecycle."""

from __future__ import annotations

import asyncio
import glob
import io
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anycore.logging import (
    FileHandler,
    RotatingFileHandler,
    StreamHandler,
    ThreadedHandler,
    TimedRotatingFileHandler,
    WatchedFileHandler,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def logger(request: pytest.FixtureRequest) -> Iterator[logging.Logger]:
    lg = logging.getLogger(f"test.sink.{request.node.name}")
    lg.setLevel(logging.DEBUG)
    lg.propagate = False
    yield lg
    for h in list(lg.handlers):
        lg.removeHandler(h)
        h.close()


def numbers(path: str | Path) -> list[int]:
    out = []
    for line in Path(path).read_text().splitlines():
        m = re.fullmatch(r"rec (\d+)", line)
        if m:
            out.append(int(m.group(1)))
    return out


async def test_file_handler_keeps_order_and_every_record(
    tmp_path: Path, logger: logging.Logger
) -> None:
    path = tmp_path / "a.log"
    handler = FileHandler(path, queue_size=50_000)
    logger.addHandler(handler)
    for i in range(20_000):
        logger.info("rec %d", i)
        if i % 1000 == 0:
            await asyncio.sleep(0)
    assert await handler.aflush(10)
    assert numbers(path) == list(range(20_000))
    assert handler.dropped == 0
    assert handler.written == 20_000


class BlockingSink(ThreadedHandler):
    """A sink whose first write waits until the test releases it."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.setFormatter(logging.Formatter("%(message)s"))
        self.entered = threading.Event()
        self.release = threading.Event()
        self.lines: list[str] = []

    def _prepare(self, record: logging.LogRecord) -> str:
        return self.format(record)

    def _write_batch(self, batch: list[Any]) -> None:
        self.entered.set()
        released = self.release.wait(10)
        self.passed = True  # set only once the test released us (or gave up)
        assert released
        self.lines.extend(batch)

    passed = False


async def test_drop_oldest_on_the_loop_drops_and_counts_exactly(logger: logging.Logger) -> None:
    sink = BlockingSink(queue_size=10, overflow="drop_oldest")
    logger.addHandler(sink)
    logger.info("rec first")
    assert await asyncio.to_thread(sink.entered.wait, 10)
    for i in range(100):
        logger.info("rec %d", i)  # never waits although the writer is stuck
    assert not sink.passed  # we got here while the writer was still stuck
    assert sink.dropped == 90
    assert sink.queued == 10
    stats = sink.statistics()
    assert (stats.dropped, stats.queued, stats.written) == (90, 10, 0)
    assert stats.queued_bytes > 0
    sink.release.set()
    assert await sink.aflush(10)
    assert sink.statistics().queued == 0
    assert sink.statistics().written == sink.written >= 11
    assert sink.lines[0] == "rec first"
    assert sink.lines[1:11] == [f"rec {i}" for i in range(90, 100)]
    assert re.match(r"90 log records dropped by BlockingSink", sink.lines[11])


def test_by_default_a_full_buffer_makes_the_caller_wait(logger: logging.Logger) -> None:
    sink = BlockingSink(queue_size=10)
    logger.addHandler(sink)

    def produce() -> None:
        for i in range(50):
            logger.info("rec %d", i)

    producer = threading.Thread(target=produce)
    producer.start()
    assert sink.entered.wait(10)
    producer.join(0.2)
    assert producer.is_alive(), "the producer should wait for room"
    sink.release.set()
    producer.join(10)
    assert sink.wait_flushed(10)
    assert sink.lines == [f"rec {i}" for i in range(50)]
    assert sink.dropped == 0


def test_rotation_under_load_keeps_every_record(tmp_path: Path, logger: logging.Logger) -> None:
    path = tmp_path / "r.log"
    handler = RotatingFileHandler(
        path, maxBytes=8_000, backupCount=500, queue_size=100, max_batch=64
    )
    logger.addHandler(handler)
    per_thread = 5_000

    def produce(tag: int) -> None:
        for i in range(per_thread):
            logger.info("rec %d", tag * per_thread + i)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    handler.close()
    files = glob.glob(f"{path}*")
    assert len(files) > 10, "rotation should have happened many times"
    seen: list[int] = []
    for f in files:
        assert os.path.getsize(f) <= 8_000
        seen.extend(numbers(f))
    assert sorted(seen) == list(range(3 * per_thread))
    # Order per producer is kept across files (.N oldest first, then the live file).
    ordered: list[int] = []
    backups = sorted(files, key=lambda f: -int(f.rsplit(".", 1)[1]) if f[-1].isdigit() else 0)
    for f in backups:
        ordered.extend(numbers(f))
    for tag in range(3):
        mine = [n for n in ordered if n // per_thread == tag]
        assert mine == sorted(mine)
    assert handler.dropped == 0


def test_the_prober_times_a_write_without_the_caller_waiting_for_all_of_it() -> None:
    from anycore.logging._access import PROBER

    lock = threading.Lock()
    lock.acquire()
    done: list[str] = []
    # A fast write: the caller holds the lock again when timed() returns.
    assert PROBER.timed(lambda: done.append("fast"), lock, 10.0) is True
    assert done == ["fast"]
    assert not lock.acquire(False)
    # A write still running after `wait`: the caller goes on without the
    # lock, which the helper releases when the write returns.
    release = threading.Event()
    started = time.perf_counter()
    assert PROBER.timed(lambda: release.wait(30), lock, 0.01) is False
    assert time.perf_counter() - started < 5  # 2 x wait, and a loaded machine
    assert not lock.acquire(False)
    release.set()
    assert lock.acquire(timeout=10)
    lock.release()


def test_timed_rotation(tmp_path: Path, logger: logging.Logger) -> None:
    path = tmp_path / "t.log"
    handler = TimedRotatingFileHandler(path, when="S", interval=1, backupCount=5)
    logger.addHandler(handler)
    logger.info("rec 0")
    assert handler.wait_flushed(5)
    handler.rolloverAt = int(time.time())  # due now
    logger.info("rec 1")
    handler.close()
    rotated = list(glob.glob(f"{path}.*"))
    assert len(rotated) == 1
    assert numbers(rotated[0]) == [0]
    assert numbers(path) == [1]


def test_watched_file_reopens_after_move(tmp_path: Path, logger: logging.Logger) -> None:
    path = tmp_path / "w.log"
    handler = WatchedFileHandler(path)
    logger.addHandler(handler)
    logger.info("rec 0")
    assert handler.wait_flushed(5)
    os.rename(path, tmp_path / "w.log.1")  # what logrotate does
    logger.info("rec 1")
    handler.close()
    assert numbers(tmp_path / "w.log.1") == [0]
    assert numbers(path) == [1]


def test_stream_handler_and_late_records_after_close(logger: logging.Logger) -> None:
    stream = io.StringIO()
    handler = StreamHandler(stream)
    logger.addHandler(handler)
    for i in range(100):
        logger.info("rec %d", i)
    handler.close()
    logger.info("rec %d", 100)  # written synchronously after close
    assert [int(x.split()[1]) for x in stream.getvalue().splitlines()] == list(range(101))


async def test_flush_on_the_loop_does_not_block(logger: logging.Logger) -> None:
    sink = BlockingSink()
    logger.addHandler(sink)
    logger.info("rec 0")
    assert await asyncio.to_thread(sink.entered.wait, 10)
    sink.flush()  # on the loop thread: only wakes the writer
    assert not sink.passed  # flush returned while the writer was still stuck
    assert not await sink.aflush(0.05)
    sink.release.set()
    assert await sink.aflush(10)


def test_isinstance_and_stdlib_arguments(tmp_path: Path) -> None:
    h = RotatingFileHandler(str(tmp_path / "x.log"), "a", 100, 2, delay=True)
    try:
        assert isinstance(h, logging.handlers.RotatingFileHandler)
        assert not (tmp_path / "x.log").exists()  # delay keeps the stdlib meaning
    finally:
        h.close()


CHILD = textwrap.dedent(
    """
    import asyncio, logging, sys
    import anycore
    from anycore.logging import FileHandler

    handler = FileHandler(sys.argv[1], queue_size=2_000_000)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("child")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    count = 0

    async def main():
        global count
        print("READY", flush=True)
        while True:
            for _ in range(200):
                log.info("rec %d", count)
                count += 1
            await asyncio.sleep(0)
            if sys.argv[2] == "raise" and count >= 20_000:
                raise RuntimeError("main failed")
            if count >= 1_000_000:
                # Stay below the queue's bound (the guarantee is "nothing lost
                # below the bound"), however slow a loaded machine's writer is.
                await asyncio.Event().wait()

    try:
        anycore.run(main)
    finally:
        print("LOGGED", count, handler.dropped, flush=True)
    """
)


@pytest.mark.parametrize("how", ["sigterm", "raise"])
def test_no_record_lost_on_sigterm_or_when_main_raises(tmp_path: Path, how: str) -> None:
    path = tmp_path / "child.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        if how == "sigterm":
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # polling OS state: the file's size
                if path.exists() and path.stat().st_size > 200_000:
                    break
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    m = re.search(r"LOGGED (\d+) (\d+)", out)
    assert m, (out, err)
    logged, dropped = int(m.group(1)), int(m.group(2))
    assert dropped == 0
    assert logged >= 20_000 if how == "raise" else logged > 0
    assert numbers(path) == list(range(logged))
    if how == "raise":
        assert "RuntimeError: main failed" in err
    else:
        assert proc.returncode == 0, err


def test_forked_child_does_not_duplicate_parent_records(tmp_path: Path) -> None:
    path = tmp_path / "fork.log"
    sink = BlockingSink()
    lg = logging.getLogger("test.sink.fork")
    lg.propagate = False
    lg.addHandler(sink)
    fh = FileHandler(path)
    fh.setFormatter(logging.Formatter("%(message)s"))
    lg.addHandler(fh)
    try:
        lg.warning("rec 0")
        assert sink.entered.wait(10)
        lg.warning("rec 1")  # queued in the parent's sink while the writer is stuck
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                lg.warning("rec 2")
                # The parent's queued "rec 1" is not ours to write; only our
                # own record may be waiting for our (new) writer.
                ok = fh.wait_flushed(30) and list(sink._pending.items) in ([], ["rec 2"])
                os._exit(0 if ok else 1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        sink.release.set()
        assert sink.wait_flushed(10)
        assert fh.wait_flushed(10)
        assert sink.lines == ["rec 0", "rec 1"]
        assert sorted(numbers(path)) == [0, 1, 2]
    finally:
        sink.release.set()
        for h in (sink, fh):
            lg.removeHandler(h)
            h.close()


class SlowFileHandler(FileHandler):
    def _write_bytes(self, data: bytes) -> None:
        time.sleep(0.002)
        super()._write_bytes(data)


def test_runtime_logs_phase_drains_before_run_returns(tmp_path: Path) -> None:
    import anycore

    path = tmp_path / "rt.log"
    handler = SlowFileHandler(path, queue_size=100_000, max_batch=16)
    handler.setFormatter(logging.Formatter("%(message)s"))
    lg = logging.getLogger("test.sink.runtime")
    lg.setLevel(logging.INFO)
    lg.propagate = False
    lg.addHandler(handler)
    reports: list[Any] = []

    async def main() -> None:
        for i in range(5_000):
            lg.info("rec %d", i)
        assert handler.queued > 0  # the slow writer is behind when main returns
        reports.append(anycore.current_runtime())

    try:
        anycore.run(main)
        # No close, no atexit yet: the runtime's LOGS step drained the queue.
        assert handler.queued == 0
        assert numbers(path) == list(range(5_000))
        steps = [(s.name, s.outcome) for s in reports[0].report.steps]
        assert ("anycore.logging", "done") in steps
    finally:
        lg.removeHandler(handler)
        handler.close()


def test_a_trio_loop_thread_with_a_lossy_policy_never_waits(logger: logging.Logger) -> None:
    import trio

    sink = BlockingSink(queue_size=5, overflow="drop_oldest")
    logger.addHandler(sink)

    async def main() -> None:
        logger.info("rec first")
        with trio.fail_after(10):
            await trio.to_thread.run_sync(sink.entered.wait)
        for i in range(50):
            logger.info("rec %d", i)
        sink.flush()
        assert not sink.passed  # neither the logging nor flush() waited

    try:
        trio.run(main)
        assert sink.dropped == 45
    finally:
        sink.release.set()
    assert sink.wait_flushed(10)
