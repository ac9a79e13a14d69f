"""Every public primitive under anyio.run on asyncio, uvloop and trio.

Each probe uses one primitive for real (sockets, signals, threads, processes)
inside ``anyio.run``.  On asyncio and uvloop every probe must work; on trio a
probe must work or raise :class:`~anycore.errors.BackendNotSupported` (for
primitives still being ported, any :class:`~anycore.AnycoreError`), never a
bare "no running event loop".  The outcomes are the table of
docs/portability.md: a test compares them, and ``python tests/test_trio.py``
prints the table to paste there.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.abc
import pytest

import anycore
from anycore.errors import AnycoreError, BackendNotSupported

DOC = Path(__file__).resolve().parent.parent / "docs" / "portability.md"
BACKENDS = ("asyncio", "uvloop", "trio")
# Being ported elsewhere: on trio these may raise any AnycoreError for now.
ANY_ANYCORE_ERROR = {
    "ChildProcess",
    "WorkerPool(processes)",
    "WorkerPool(threads)",
    "run_process",
    "open_process",
    "pipeline",
    "open_pty",
    "ProcessQueue",
    "Supervisor",
    "serve_datagram",
    "open_datagram_endpoint",
}

# Failing on trio with a bare error today, in files other engineers own.
NOT_YET_PORTED: set[str] = set()

Probe = Callable[[], Awaitable[None]]
PROBES: dict[str, Probe] = {}


def probe(name: str) -> Callable[[Probe], Probe]:
    def register(fn: Probe) -> Probe:
        PROBES[name] = fn
        return fn

    return register


class Echo(anycore.LineHandler):
    def line_received(self, line: bytes) -> None:
        self.send_line(line)


class DatagramEcho(anycore.DatagramHandler):
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sendto(data, addr)


def _double(x: int) -> int:
    return 2 * x


async def _echo_once(port: int) -> None:
    async with await anyio.connect_tcp("127.0.0.1", port) as client:
        await client.send(b"ping\r\n")
        data = b""
        while not data.endswith(b"\r\n"):
            data += await client.receive()
        assert data == b"ping\r\n"


# -- runtime and tasks -----------------------------------------------------------


@probe("open_runtime")
async def _open_runtime() -> None:
    ran: list[str] = []

    async def step() -> None:
        ran.append("pools")

    async with anycore.open_runtime(handle_signals=False) as runtime:
        assert anycore.current_runtime() is runtime
        runtime.add_shutdown_step(anycore.Phase.POOLS, "step", step)
    assert ran == ["pools"]
    assert anycore.current_runtime() is None


@probe("Runtime.shutdown")
async def _runtime_shutdown() -> None:
    async with anycore.open_runtime(handle_signals=False) as runtime:
        runtime.shutdown("probe")
        await anyio.sleep_forever()  # cancelled by the shutdown
    assert runtime.report.reason == "probe"


@probe("open_runtime signal policy")
async def _runtime_signals() -> None:
    async with anycore.open_runtime() as runtime:
        os.kill(os.getpid(), signal.SIGTERM)
        await anyio.sleep_forever()  # SIGTERM shuts down, cancelling this
    assert runtime.report.signal == signal.SIGTERM


@probe("spawn")
async def _spawn() -> None:
    async def work() -> int:
        return 1

    assert await anycore.spawn(work) == 1


@probe("live_tasks / active_count")
async def _live_tasks() -> None:
    assert anycore.active_count() >= 1
    assert anycore.live_tasks()


@probe("TaskLocal")
async def _task_local() -> None:
    local = anycore.TaskLocal(user=None)
    seen: list[object] = []

    async def child() -> None:
        seen.append(local.user)
        local.user = "child"

    local.user = "parent"
    async with anyio.create_task_group() as tg:
        tg.start_soon(child)
    assert seen == ["parent"]
    assert local.user == "parent"


# -- signals -----------------------------------------------------------------------


@probe("open_signals")
async def _open_signals() -> None:
    async with anycore.open_signals(signal.SIGUSR1) as receiver:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await receiver.receive() == signal.SIGUSR1


@probe("on_signal")
async def _on_signal() -> None:
    got = anyio.Event()
    seen: list[int] = []

    def callback(sig: int) -> None:
        seen.append(sig)
        got.set()

    with anycore.on_signal(signal.SIGUSR2, callback) as handle:
        await handle.wait_installed()
        os.kill(os.getpid(), signal.SIGUSR2)
        await got.wait()
    assert seen == [signal.SIGUSR2]


@probe("next_signal")
async def _next_signal() -> None:
    assert await anycore.next_signal(signal.SIGUSR1, timeout=0.01) is None

    async def send() -> None:
        await anyio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
        assert await anycore.next_signal(signal.SIGUSR1, timeout=10) == signal.SIGUSR1


# -- timers --------------------------------------------------------------------------


@probe("Timer")
async def _timer() -> None:
    hits: list[int] = []
    async with anycore.Timer(0.01, hits.append, 1) as timer:
        await timer.wait()
    assert hits == [1]
    assert timer.fired
    idle = anycore.Timer(60, hits.append, 2)
    idle.start()
    assert idle.is_alive()
    idle.cancel()
    await idle.wait()
    assert not idle.fired
    assert hits == [1]


@probe("every")
async def _every() -> None:
    ticks = [tick.index async for tick in anycore.every(0.005, limit=3)]
    assert ticks == [0, 1, 2]


@probe("fail_after / move_on_after")
async def _deadlines() -> None:
    with anycore.move_on_after(0.01) as scope:
        await anyio.sleep_forever()
    assert scope.cancelled_caught
    with pytest.raises(TimeoutError), anycore.fail_after(0.01):
        await anyio.sleep_forever()


# -- networking ----------------------------------------------------------------------


@probe("serve")
async def _serve() -> None:
    async with anycore.serve(Echo, "tcp://127.0.0.1:0") as server:
        await _echo_once(server.endpoints[0].port or 0)
        with anyio.move_on_after(0.05):
            await server.serve_forever()


@probe("connect")
async def _connect() -> None:
    async with anycore.serve(Echo, "tcp://127.0.0.1:0") as server:
        handler = await anycore.connect(server.endpoints[0], Echo)
        handler.close()


@probe("run_handler")
async def _run_handler() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:

        async def serve_one(stream: anyio.abc.ByteStream) -> None:
            await anycore.run_handler(Echo(), stream)

        tg.start_soon(listener.serve, serve_one)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        await _echo_once(port)
        tg.cancel_scope.cancel()


@probe("serve_datagram")
async def _serve_datagram() -> None:
    async with anycore.serve_datagram(DatagramEcho, "udp://127.0.0.1:0") as server:
        port = server.endpoints[0].port or 0
        async with await anyio.create_connected_udp_socket("127.0.0.1", port) as udp:
            await udp.send(b"hi")
            assert await udp.receive() == b"hi"


@probe("open_datagram_endpoint")
async def _datagram_endpoint() -> None:
    async with anycore.open_datagram_endpoint(local="udp://127.0.0.1:0"):
        pass


# -- processes ------------------------------------------------------------------------


@probe("run_process")
async def _run_process() -> None:
    done = await anycore.run_process(["true"])
    assert done.returncode == 0


@probe("open_process")
async def _open_process() -> None:
    async with anycore.open_process(["true"]) as proc:
        assert await proc.wait() == 0


@probe("pipeline")
async def _pipeline() -> None:
    await anycore.pipeline(["true"], ["cat"]).run()


@probe("open_pty")
async def _open_pty() -> None:
    async with anycore.open_pty(["true"]) as term:
        await term.wait()


@probe("ChildProcess")
async def _child_process() -> None:
    async with anycore.ChildProcess(_double, 21) as child:
        assert await child.result() == 42


@probe("WorkerPool(threads)")
async def _pool_threads() -> None:
    async with anycore.WorkerPool("threads", 2) as pool:
        assert await pool.apply(_double, (4,)) == 8


@probe("WorkerPool(processes)")
async def _pool_processes() -> None:
    async with anycore.WorkerPool("processes", 1) as pool:
        assert await pool.apply(_double, (4,)) == 8


@probe("Supervisor")
async def _supervisor() -> None:
    program = anycore.Program("p", command=("sleep", "30"))
    async with anycore.Supervisor([program]):
        pass


# -- queues, actors, synchronisation ----------------------------------------------------


async def _handoff(
    put: Callable[[int], Awaitable[None]], get: Callable[[], Awaitable[int]]
) -> None:
    """A getter waits (really) until another task puts."""
    got: list[int] = []

    async def getter() -> None:
        got.append(await get())

    async with anyio.create_task_group() as tg:
        tg.start_soon(getter)
        await anyio.wait_all_tasks_blocked()
        await put(7)
    assert got == [7]


async def _queue_with_threads(queue: anycore.Queue[int]) -> None:
    await _handoff(queue.put, queue.get)  # a task waits for a task

    async def put_from_thread(item: int) -> None:
        await anyio.to_thread.run_sync(queue.sync_put, item)

    await _handoff(put_from_thread, queue.get)  # a thread wakes a waiting task
    queue.put_nowait(1)  # full (maxsize 1): a putting task waits for a thread
    async with anyio.create_task_group() as tg:
        tg.start_soon(queue.put, 2)
        await anyio.wait_all_tasks_blocked()
        assert await anyio.to_thread.run_sync(queue.sync_get) == 1
    assert queue.get_nowait() == 2


@probe("Queue / LifoQueue / PriorityQueue")
async def _queue() -> None:
    for cls in (anycore.Queue, anycore.LifoQueue, anycore.PriorityQueue):
        await _queue_with_threads(cls(1))


@probe("ProcessQueue")
async def _process_queue() -> None:
    async with anycore.ProcessQueue[int]() as queue:
        await _handoff(queue.put, queue.get)


@probe("Actor")
async def _actor() -> None:
    seen: list[int] = []

    def handle(message: int) -> int:
        seen.append(message)
        return 2 * message

    async with anycore.Actor(handle, mailbox_size=4) as actor:
        assert await actor.ask(3) == 6
        await actor.send(4)
        await anyio.to_thread.run_sync(actor.sync_send, 5)  # from a plain thread
    assert seen == [3, 4, 5]  # leaving the block drained the mailbox


async def _contend(lock: anycore.RLock | anycore.BoundedSemaphore | anycore.Lock) -> None:
    order: list[str] = []

    async def second() -> None:
        async with lock:
            order.append("second")

    async with anyio.create_task_group() as tg, lock:
        tg.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        order.append("first")
    assert order == ["first", "second"]


@probe("Lock / Semaphore / Event / Condition / CapacityLimiter")
async def _anyio_sync() -> None:
    await _contend(anycore.Lock())
    event = anycore.Event()
    await _handoff(lambda _x: _set(event), lambda: _wait(event))
    condition = anycore.Condition()
    async with condition:
        condition.notify_all()
    async with anycore.CapacityLimiter(1), anycore.Semaphore(1):
        pass


async def _set(event: anycore.Event | anycore.ThreadSafeEvent) -> None:
    event.set()


async def _wait(event: anycore.Event | anycore.ThreadSafeEvent) -> int:
    await event.wait()
    return 7


@probe("RLock / BoundedSemaphore")
async def _own_sync() -> None:
    await _contend(anycore.RLock())
    await _contend(anycore.BoundedSemaphore(1))


@probe("ThreadSafeEvent")
async def _thread_safe_event() -> None:
    event = anycore.ThreadSafeEvent()
    setter = threading.Timer(0.02, event.set)
    setter.start()
    try:
        await event.wait()
    finally:
        setter.join()


@probe("ThreadSafeLock / ThreadSafeSemaphore")
async def _thread_safe_lock() -> None:
    await _contend(anycore.ThreadSafeLock())  # type: ignore[arg-type]
    await _contend(anycore.ThreadSafeSemaphore(1))  # type: ignore[arg-type]
    lock = anycore.ThreadSafeLock()
    lock.sync_acquire()  # held by "a thread"; released from a real one
    releaser = threading.Timer(0.02, lock.release)
    releaser.start()
    try:
        async with lock:
            pass
    finally:
        releaser.join()


# -- running the probes ------------------------------------------------------------------


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@functools.cache
def outcome(name: str, backend: str) -> tuple[str, type[BaseException] | None]:
    """What ``name`` does on ``backend``: ("yes", None) or ("no: Error", Error)."""

    async def main() -> None:
        with anyio.fail_after(30):
            await PROBES[name]()

    options: dict[str, object] = {}
    if backend == "uvloop":
        options["use_uvloop"] = True
    try:
        anyio.run(main, backend="trio" if backend == "trio" else "asyncio", backend_options=options)
    except Exception as group:
        exc = _unwrap(group)
        return f"no: {type(exc).__name__}", type(exc)
    return "yes", None


def table() -> str:
    lines = ["| primitive | " + " | ".join(BACKENDS) + " |", "|---" * (len(BACKENDS) + 1) + "|"]
    for name in PROBES:
        cells = [outcome(name, backend)[0] for backend in BACKENDS]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@pytest.mark.parametrize("backend", ["asyncio", "uvloop"])
@pytest.mark.parametrize("name", list(PROBES))
def test_every_primitive_works_on_asyncio_loops(name: str, backend: str) -> None:
    assert outcome(name, backend)[0] == "yes"


def _trio_cases() -> list[object]:
    cases: list[object] = []
    for name in PROBES:
        if name in NOT_YET_PORTED:
            reason = "its module (not ported here) fails on trio with a bare error today"
            cases.append(pytest.param(name, marks=pytest.mark.xfail(reason=reason, strict=False)))
        else:
            cases.append(name)
    return cases


@pytest.mark.parametrize("name", _trio_cases())
def test_on_trio_a_primitive_works_or_says_what_to_use(name: str) -> None:
    cell, error = outcome(name, "trio")
    if error is None:
        return
    allowed = AnycoreError if name in ANY_ANYCORE_ERROR else BackendNotSupported
    assert issubclass(error, allowed), f"{name} on trio: {cell}, not a {allowed.__name__}"


def test_backend_not_supported_names_the_alternative() -> None:
    async def main() -> None:
        async def work() -> None:
            pass

        with pytest.raises(BackendNotSupported, match=r"spawn\(\) needs asyncio.*task group"):
            anycore.spawn(work)
        with pytest.raises(BackendNotSupported, match=r"live_tasks\(\) needs asyncio"):
            anycore.live_tasks()

    anyio.run(main, backend="trio")


def test_portability_page_shows_what_the_probes_found() -> None:
    text = DOC.read_text()
    start = text.index("| primitive |")
    end = text.find("\n\n", start)
    documented = text[start : end if end != -1 else len(text)].strip()
    expected = table()
    assert documented == expected, (
        "docs/portability.md is out of date; its table should be:\n" + expected
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "framework"))
    print(table())
