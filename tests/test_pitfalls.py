"""Known failures of today's async tools, reproduced against anycore.

/work/shared/PITFALLS.md lists how asyncio, anyio, trio, multiprocessing and
logging fail their users.  Most bullets already have a test next to the
facility they concern (docs/pitfalls.md maps every bullet to its tests); this
file holds the scenarios that had none.  Each test sets up the situation that
breaks the stdlib tool - real processes, pipes, sockets and signals, loopback
only - and asserts that anycore gets through it.  Where the stdlib failure is
cheap and deterministic to show, the test shows it first.

Waiting is done on events, READY lines and bounded polling of /proc, never on
fixed sleeps.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
import textwrap
import threading
import warnings
import weakref
from pathlib import Path
from typing import Any

import anyio
import pytest

import anycore
import anycore.logging as alog
from _support import io_field, wait_until, wchan

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent


# -- helpers ---------------------------------------------------------------------------


def _on_uvloop() -> bool:
    return type(asyncio.get_running_loop()).__module__.startswith("uvloop")


# -- subprocesses: streaming stdout and stderr together ----------------------------------

# The child interleaves 4 MiB on stdout with 4 MiB on stderr, 4 KiB at a time.
_BOTH_STREAMS = (
    "import sys\n"
    "o, e = sys.stdout.buffer, sys.stderr.buffer\n"
    "for i in range(1024):\n"
    "    o.write(b'o' * 4095 + b'\\n'); o.flush()\n"
    "    e.write(b'e' * 4095 + b'\\n'); e.flush()\n"
)
_STREAM_TOTAL = 1024 * 4096


async def test_streaming_stdout_and_stderr_together_stays_bounded() -> None:
    """Streaming both pipes at once neither deadlocks nor buffers without bound.

    A reader that stalls on stderr while stdout is consumed makes the child
    block in write() on the stderr pipe (backpressure reaches it) while
    anycore holds at most ``limit`` bytes of stderr; once stderr is read
    again both streams complete, whole and in order.
    """
    limit = 32 * 1024
    slack = 256 * 1024  # one read (and one grown pipe) may overshoot the limit
    resume_err = anyio.Event()
    peak = {"out": 0, "err": 0}
    got = {"out": 0, "err": 0}
    async with anycore.Process(
        [PY, "-c", _BOTH_STREAMS], stdout=anycore.PIPE, stderr=anycore.PIPE, limit=limit
    ) as proc:
        assert isinstance(proc.stdout, anycore.ProcessReader)
        assert isinstance(proc.stderr, anycore.ProcessReader)

        async def pump(name: str, reader: anycore.ProcessReader, marker: bytes) -> None:
            if name == "err":
                await reader.receive(1)  # one byte, then stall until told to go on
                got[name] += 1
                await resume_err.wait()
            async for line in reader:
                assert line.rstrip(b"\n").strip(marker) == b"", line[:20]
                got[name] += len(line)
                peak[name] = max(peak[name], reader.buffered)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump, "out", proc.stdout, b"o")
            tg.start_soon(pump, "err", proc.stderr, b"e")
            # The child fills the stderr pipe and blocks there: the stdout
            # pump starves, nothing piles up in our process.
            stderr = proc.stderr
            await wait_until(
                lambda: stderr.buffered >= limit and wchan(proc.pid).endswith("pipe_write"), 20
            )
            stalled_at = io_field(proc.pid, "wchar")
            assert proc.stderr.buffered <= limit + slack
            # stdout written ~= stderr written ~= the stderr pipe + our buffer
            assert stalled_at < 2 * (limit + 2 * slack) + 65536
            resume_err.set()
        assert await proc.wait() == 0
    assert got == {"out": _STREAM_TOTAL, "err": _STREAM_TOTAL}
    assert peak["out"] <= limit + slack
    assert peak["err"] <= limit + slack


# -- subprocesses: uvloop and SIGCHLD ----------------------------------------------------


async def test_children_are_watched_without_sigchld_and_with_uvloop_only_options() -> None:
    """uvloop cannot take a SIGCHLD handler and rejects ``process_group``.

    anycore never installs a SIGCHLD handler (a pidfd per child), so the
    process-wide disposition is untouched on both loops, and the options the
    loop's own subprocess support refuses work through anycore's spawn path.
    A user's own SIGCHLD subscription either works or fails with a clear
    ``SignalError`` - never an obscure RuntimeError from deep in the loop.
    """
    loop = asyncio.get_running_loop()
    on_uvloop = _on_uvloop()
    if on_uvloop:  # the stdlib-shaped API fails on this loop
        with pytest.raises(ValueError, match="process_group"):
            await loop.subprocess_exec(asyncio.SubprocessProtocol, "true", process_group=0)
    before = signal.getsignal(signal.SIGCHLD)
    code = "import os; print(os.getpid(), os.getpgid(0), oct(os.umask(0)))"
    async with anycore.Process(
        [PY, "-c", code], stdout=anycore.PIPE, process_group=0, umask=0o027
    ) as proc:
        assert signal.getsignal(signal.SIGCHLD) == before
        assert proc.stdout is not None
        out = await proc.stdout.read()
        assert await proc.wait() == 0
    pid, pgid, mask = out.split()
    assert int(pid) == int(pgid) == proc.pid
    assert mask == b"0o27"
    assert signal.getsignal(signal.SIGCHLD) == before
    if on_uvloop:
        with pytest.raises(anycore.SignalError, match="SIGCHLD"):
            async with anycore.open_signals(signal.SIGCHLD):
                pass
    else:
        async with anycore.open_signals(signal.SIGCHLD) as receiver:
            async with anycore.Process(["true"]) as child:
                assert await child.wait() == 0
            with anyio.fail_after(10):
                assert await receiver.receive() == signal.SIGCHLD
    assert signal.getsignal(signal.SIGCHLD) == before


# -- pools: fork() after threads ---------------------------------------------------------

_HELD_BY_A_THREAD = threading.Lock()


def _lock_is_free() -> bool:
    """In a child: can the module lock be taken? (Never waits.)"""
    free = _HELD_BY_A_THREAD.acquire(blocking=False)
    if free:
        _HELD_BY_A_THREAD.release()
    return free


def _fork_child_reports_lock() -> None:
    os._exit(0 if _lock_is_free() else 3)


async def test_children_started_while_a_thread_holds_a_lock_do_not_inherit_it() -> None:
    """fork() copies a lock held by another thread: the child would deadlock.

    A thread holds a module-level lock (as logging's or a C library's lock is
    held at any moment).  A ``fork`` child inherits it locked - any call that
    takes it hangs forever.  anycore's ChildProcess and process pools start
    from the fork server, so their children see a fresh, free lock.
    """
    release = threading.Event()
    holding = threading.Event()

    def hold() -> None:
        with _HELD_BY_A_THREAD:
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert await anyio.to_thread.run_sync(holding.wait, 10)
        # The stdlib's fork start method: the child gets the lock held.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
            forked = multiprocessing.get_context("fork").Process(target=_fork_child_reports_lock)
            forked.start()
        await anyio.to_thread.run_sync(forked.join, 20)
        assert forked.exitcode == 3  # a blocking acquire() would never return
        # anycore: a fresh interpreter state in every child.
        async with anycore.ChildProcess(_lock_is_free) as child:
            assert await child.result() is True
        async with anycore.WorkerPool("processes", workers=2) as pool:
            assert await pool.apply(_lock_is_free) is True
    finally:
        release.set()
        await anyio.to_thread.run_sync(holder.join, 10)


# -- logging: several processes, one rotating file ---------------------------------------


def _log_from_child(cfg: dict[str, Any], tag: int, count: int) -> int:
    alog.install_child_forwarding(cfg)
    log = logging.getLogger("pitfalls.rotating")
    for i in range(count):
        log.info("rec %d %06d %s", tag, i, "x" * 40)
    return os.getpid()


async def test_several_processes_log_into_one_rotating_file(tmp_path: Path) -> None:
    """Several processes rotating one file lose and mangle records.

    With the stdlib each process owns a RotatingFileHandler on the same path
    and they rename the file under each other.  anycore: one writer in the
    parent; child processes forward their records to it.  Every record of
    every child lands exactly once, in order per child, and no file passes
    ``maxBytes``.
    """
    path = tmp_path / "shared.log"
    max_bytes = 8_000
    handler = alog.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=500)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("pitfalls.rotating")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    children, per_child = 3, 2_000
    try:
        cfg = alog.child_logging_config("INFO")
        pids: list[int] = []

        async def one(tag: int) -> None:
            async with anycore.ChildProcess(_log_from_child, cfg, tag, per_child) as child:
                pids.append(await child.result())

        async with anyio.create_task_group() as tg:
            for tag in range(children):
                tg.start_soon(one, tag)
        assert len(set(pids)) == children
        assert os.getpid() not in pids
        await alog.aflush_all(10)
    finally:
        log.removeHandler(handler)
        log.propagate = True
        handler.close()
    files = sorted(
        tmp_path.glob("shared.log*"),
        key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0,
    )  # oldest backup first, the live file last
    assert len(files) > 10, "the file should have rotated many times"
    seen: dict[int, list[int]] = {tag: [] for tag in range(children)}
    for f in files:
        assert f.stat().st_size <= max_bytes, f
        for line in f.read_text().splitlines():
            _, who, i, pad = line.split()
            assert pad == "x" * 40, line  # never two records torn into one line
            seen[int(who)].append(int(i))
    assert seen == {tag: list(range(per_child)) for tag in range(children)}
    assert handler.dropped == 0


# -- logging: a stuck sink ---------------------------------------------------------------


class _Echo(anycore.LineHandler):
    delimiter = b"\n"

    def line_received(self, line: bytes) -> None:
        logging.getLogger("pitfalls.stuck").info("echo %r %s", line, "p" * 150)
        self.send_line(line)


async def test_a_log_pipe_nobody_reads_does_not_freeze_the_server() -> None:
    """A StreamHandler writing to a full pipe blocks the thread that logs.

    With the stdlib, a service logging to a pipe (a stuck log collector, a
    paused terminal) freezes on the loop thread once the pipe's 64 KiB are
    full.  anycore's handler writes from its own thread: the server keeps
    answering while the writer is stuck, and nothing is lost once the pipe
    drains.
    """
    r, w = os.pipe()
    stream = os.fdopen(w, "w", encoding="utf-8")
    handler = alog.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("pitfalls.stuck")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    rounds = 2_000  # ~330 KB of log lines: five times what the pipe holds
    try:
        async with anycore.serve(_Echo, "tcp://127.0.0.1:0") as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            with anyio.fail_after(20):
                for i in range(rounds):
                    writer.write(b"%d\n" % i)
                    assert await reader.readline() == b"%d\n" % i
            # Every answer came back while the log writer could not finish.
            assert handler.queued > 0
            writer.close()
            await writer.wait_closed()
    finally:
        log.removeHandler(handler)
        log.propagate = True
    # Now a collector reads the pipe: every record arrives, in order.
    chunks: list[bytes] = []

    def collect() -> None:
        while data := os.read(r, 65536):
            chunks.append(data)

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        await handler.aclose()
        stream.close()
        await anyio.to_thread.run_sync(collector.join, 20)
    finally:
        os.close(r)
    lines = b"".join(chunks).decode().splitlines()
    assert [line.split()[1] for line in lines] == [repr(b"%d" % i) for i in range(rounds)]
    assert handler.dropped == 0


# -- signals and shutdown: SIGTERM in the middle of a request -----------------------------

_SERVER = textwrap.dedent(
    """
    import asyncio, signal, sys
    import anycore

    class Slow(anycore.LineHandler):
        delimiter = b"\\n"

        async def line_received(self, line):
            async with anycore.open_signals(signal.SIGUSR1) as go_on:
                print("BUSY", flush=True)
                await go_on.receive()
            self.send_line(b"done " + line)

    async def main():
        async with anycore.serve(Slow, "tcp://127.0.0.1:0") as server:
            print("PORT", server.port, flush=True)
            await asyncio.Event().wait()

    anycore.run(main, drain_timeout=20, loop=sys.argv[1])
    """
)


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


async def test_sigterm_mid_request_lets_the_request_finish() -> None:
    """asyncio.run dies on SIGTERM (or cancels handlers before they finish).

    Under anycore.run, SIGTERM starts the staged shutdown: the listener stops
    accepting at once, the request in flight completes and its reply reaches
    the client, and the process then exits 0.  The server runs on the same
    kind of loop as this test.
    """
    loop = "uvloop" if _on_uvloop() else "asyncio"
    async with anycore.Process(
        [PY, "-c", _SERVER, loop], stdout=anycore.PIPE, cwd=ROOT, grace_period=1
    ) as proc:
        assert proc.stdout is not None
        with anyio.fail_after(15):
            first = (await proc.stdout.readline()).split()
            assert first[0] == b"PORT", first
            port = int(first[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"job\n")
            assert await proc.stdout.readline() == b"BUSY\n"
            proc.send_signal(signal.SIGTERM)
            await wait_until(lambda: _refused(port))  # stopped accepting; still running
            assert proc.returncode is None
            proc.send_signal(signal.SIGUSR1)  # the handler may finish now
            assert await reader.readline() == b"done job\n"
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
            assert await proc.wait() == 0


# -- fire-and-forget tasks and the garbage collector -------------------------------------


async def _orphan(box: list[weakref.ref[asyncio.Future[int]]], done: list[int]) -> None:
    # Awaits a future that only this task references: nothing outside the
    # task keeps it alive (cpython#117379).
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    box.append(weakref.ref(fut))
    done.append(await fut)


async def test_fire_and_forget_task_is_not_garbage_collected() -> None:
    """A task nobody references is destroyed mid-flight by the collector.

    ``asyncio.create_task`` keeps only a weak reference: the collector
    destroys the pending task ("Task was destroyed but it is pending!").
    ``anycore.spawn`` holds it until it ends, with or without a runtime.
    """
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: reported.append(str(ctx.get("message"))))
    try:
        box: list[weakref.ref[asyncio.Future[int]]] = []
        done: list[int] = []
        loop.create_task(_orphan(box, done))  # noqa: RUF006 - dropping it is the pitfall
        await asyncio.sleep(0)
        gc.collect()
        assert box[0]() is None  # the task, its coroutine and future are gone
        assert reported == ["Task was destroyed but it is pending!"]
    finally:
        loop.set_exception_handler(previous)

    async def spawn_and_forget() -> None:
        box: list[weakref.ref[asyncio.Future[int]]] = []
        done: list[int] = []
        anycore.spawn(_orphan, box, done, name="forgotten")  # the returned task is dropped
        await asyncio.sleep(0)
        gc.collect()
        fut = box[0]()
        assert fut is not None, "anycore.spawn let the collector take the task"
        assert "forgotten" in [t.get_name() for t in anycore.live_tasks()]
        fut.set_result(42)
        with anyio.fail_after(5):
            while not done:
                await asyncio.sleep(0)
        assert done == [42]

    await spawn_and_forget()  # no runtime: spawn keeps the reference itself
    async with anycore.open_runtime(handle_signals=False):
        await spawn_and_forget()  # the runtime owns it
