"""Shared memory: values, arrays, the channel and the process-shared primitives,
with real child processes (anycore.ChildProcess and multiprocessing)."""

from __future__ import annotations

import array
import asyncio
import contextlib
import multiprocessing
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings, strategies as st

from anycore import (
    ChildProcess,
    ProcessEvent,
    ProcessLock,
    ProcessSemaphore,
    RawSharedArray,
    SharedArray,
    SharedValue,
    ShmChannel,
)
from anycore._messaging._sharedmem import TYPECODES
from anycore.errors import (
    BrokenError,
    BusyError,
    ClosedError,
    MessageTooLarge,
    PeerClosed,
    RuntimeStateError,
    TooManyReleases,
    WouldBlock,
)

sys.path.insert(0, str(Path(__file__).parent))
import _sharedmem_children as children

FRAMEWORK = str(Path(__file__).resolve().parent.parent / "framework")
TESTS = str(Path(__file__).resolve().parent)


def shm_path(name: str) -> Path:
    return Path("/dev/shm") / name


def fifo_paths(*sems: ProcessSemaphore | ProcessEvent) -> list[Path]:
    return [Path(s.path) for s in sems]


# -- the channel across processes ----------------------------------------------


async def test_channel_parent_to_child_moves_arrays() -> None:
    async with ShmChannel(80_000) as chan, ChildProcess(children.sum_arrays, chan, 5) as child:
        for i in range(5):
            await chan.send(array.array("d", [float(i)]) * 10_000)
        with anyio.fail_after(30):
            sums = await child.result()
    assert sums == [i * 10_000.0 for i in range(5)]


async def test_channel_child_to_parent_until_eof() -> None:
    chan = ShmChannel(8 * 1000, slots=1)
    async with chan, ChildProcess(children.send_arrays, chan, 7, 1000) as child:
        got = []
        with anyio.fail_after(30):
            while True:
                try:
                    got.append(await chan.recv_array())
                except PeerClosed:
                    break
            assert await child.result() == 7
    assert [a.typecode for a in got] == ["d"] * 7
    assert [a[0] for a in got] == [float(i) for i in range(7)]
    assert all(len(a) == 1000 for a in got)


async def test_both_directions_with_two_channels() -> None:
    out, back = ShmChannel(4096), ShmChannel(4096)
    async with out, back, ChildProcess(children.double_back, out, back) as child:
        with anyio.fail_after(30):
            for n in range(1, 6):
                await out.send(array.array("q", range(n)))
                reply = await back.recv()
                assert reply.format == "q"
                assert reply.tolist() == [2 * i for i in range(n)]
            out.close()
            with pytest.raises(PeerClosed):
                await back.recv()
            assert await child.result() == 5


async def test_child_using_the_async_api() -> None:
    chan = ShmChannel(800)
    async with chan, ChildProcess(children.async_receive_sum, chan, 3) as child:
        for _ in range(3):
            await chan.send(array.array("d", [1.5] * 100))
        with anyio.fail_after(30):
            assert await child.result() == 450.0


async def test_channel_with_multiprocessing_process() -> None:
    ctx = multiprocessing.get_context("spawn")
    async with ShmChannel(800) as chan:
        p = ctx.Process(target=children.send_arrays, args=(chan, 3, 100))
        p.start()
        try:
            with anyio.fail_after(30):
                got = [await chan.recv_array() for _ in range(3)]
                with pytest.raises(PeerClosed):
                    await chan.recv()
        finally:
            await anyio.to_thread.run_sync(p.join, 30)
    assert p.exitcode == 0
    assert [a[0] for a in got] == [0.0, 1.0, 2.0]


async def test_close_wakes_a_receiver_blocked_in_another_process() -> None:
    async with ShmChannel(64) as chan:
        async with ChildProcess(children.count_until_eof, chan) as child:
            await chan.send(b"one")
            await chan.send(b"two")
            chan.close()
            with anyio.fail_after(30):
                assert await child.result() == 2
        with pytest.raises(ClosedError):
            await chan.send(b"late")


# -- the channel in one process ---------------------------------------------------


async def test_messages_keep_format_and_shape() -> None:
    async with ShmChannel(1024) as chan:
        await chan.send(memoryview(bytearray(48)).cast("d", (2, 3)))
        view = await chan.recv()
        assert (view.format, view.shape) == ("d", (2, 3))
        await chan.send(b"raw bytes")
        assert await chan.recv_bytes() == b"raw bytes"
        await chan.send(array.array("i", [1, 2, 3]))
        buf = array.array("i", [0] * 5)
        assert await chan.recv_into(buf) == 12
        assert buf.tolist() == [1, 2, 3, 0, 0]


async def test_oversized_message_is_refused_before_waiting() -> None:
    async with ShmChannel(100, slots=1) as chan:
        await chan.send(bytes(100))  # the only slot is now full
        with anyio.fail_after(5), pytest.raises(MessageTooLarge) as info:
            await chan.send(bytes(101))  # refused at once, not after a wait
        assert (info.value.size, info.value.limit) == (101, 100)
        assert isinstance(info.value, ValueError)
        with pytest.raises(TypeError):
            await chan.send(12345)


async def test_recv_into_too_small_keeps_the_message() -> None:
    async with ShmChannel(100) as chan:
        await chan.send(b"0123456789")
        with pytest.raises(MessageTooLarge):
            await chan.recv_into(bytearray(4))
        assert await chan.recv_bytes() == b"0123456789"


async def test_cancelled_recv_leaves_the_channel_usable() -> None:
    async with ShmChannel(64) as chan:
        with anyio.move_on_after(0.05) as scope:
            await chan.recv()
        assert scope.cancelled_caught
        async with ChildProcess(children.send_arrays, chan, 2, 4) as child:
            with anyio.fail_after(30):
                first = await chan.recv_array()
                second = await chan.recv_array()
                assert await child.result() == 2
        assert (first.tolist(), second.tolist()) == ([0.0] * 4, [1.0] * 4)


async def test_cancelled_send_on_a_full_channel_takes_no_slot() -> None:
    async with ShmChannel(16, slots=1) as chan:
        await chan.send(b"first")
        with anyio.move_on_after(0.05) as scope:
            await chan.send(b"second")
        assert scope.cancelled_caught
        assert await chan.recv_bytes() == b"first"
        await chan.send(b"third")
        assert await chan.recv_bytes() == b"third"


async def test_recv_wait_does_not_block_the_loop() -> None:
    async with ShmChannel(64) as chan:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while ticks < 20:
                ticks += 1
                await asyncio.sleep(0.001)
            await chan.send(b"done")

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            with anyio.fail_after(10):
                assert await chan.recv_bytes() == b"done"
        assert ticks == 20


async def test_two_tasks_waiting_in_one_process_both_get_a_message() -> None:
    async with ShmChannel(64) as chan:
        got: list[bytes] = []

        async def receive() -> None:
            got.append(await chan.recv_bytes())

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                tg.start_soon(receive)
                await asyncio.sleep(0)
                await chan.send(b"a")
                await chan.send(b"b")
        assert sorted(got) == [b"a", b"b"]


async def test_pending_messages_arrive_before_eof() -> None:
    async with ShmChannel(64, slots=3) as chan:
        for word in (b"x", b"y", b"z"):
            await chan.send(word)
        await chan.recv_bytes()
        stats = chan.statistics()
        assert (stats.sent, stats.received, stats.pending, stats.closed) == (3, 1, 2, False)
        assert (stats.capacity, stats.slots) == (64, 3)
        await chan.send(b"x")
        chan.close()
        assert chan.statistics().closed
        chan.close()  # idempotent
        assert chan.closed
        assert [await chan.recv_bytes() for _ in range(3)] == [b"y", b"z", b"x"]
        for _ in range(2):  # EOF stays EOF
            with pytest.raises(PeerClosed):
                await chan.recv()


def test_sync_side_refuses_to_block_a_running_loop() -> None:
    async def main() -> None:
        async with ShmChannel(8) as chan:
            with pytest.raises(RuntimeStateError):
                chan.sync_recv()

    asyncio.run(main())


def test_sync_recv_times_out() -> None:
    chan = ShmChannel(8)
    try:
        with pytest.raises(TimeoutError):
            chan.sync_recv(timeout=0.01)
        chan.sync_send(b"ok", timeout=1)
        assert bytes(chan.sync_recv(timeout=1)) == b"ok"
    finally:
        asyncio.run(chan.aclose())


async def test_numpy_arrays_round_trip() -> None:
    np = pytest.importorskip("numpy")
    async with ShmChannel(8 * 12) as chan:
        await chan.send(np.arange(12, dtype=np.float64).reshape(3, 4))
        out = np.asarray(await chan.recv())
        assert out.shape == (3, 4)
        assert (out == np.arange(12).reshape(3, 4)).all()


# -- values and arrays --------------------------------------------------------------


async def test_value_incremented_from_four_processes_loses_nothing() -> None:
    # Each increment yields between its read and its write; without the lock
    # most updates are lost (measured: about 2,000 of 5,000 survive).
    times = 1000
    go, ready = ProcessEvent(), ProcessSemaphore(0)
    async with (
        contextlib.aclosing(go),
        contextlib.aclosing(ready),
        SharedValue("q", 0) as value,
        contextlib.AsyncExitStack() as stack,
    ):
        procs = [
            await stack.enter_async_context(
                ChildProcess(children.increment, value, times, ready, go)
            )
            for _ in range(4)
        ]
        with anyio.fail_after(60):
            for _ in procs:
                await ready.acquire()
            go.set()
            for _ in range(times):  # the parent takes part too, through the async lock
                async with value.lock:
                    seen = value.value
                    await asyncio.sleep(0)
                    value.value = seen + 1
            for p in procs:
                assert await p.result() == times
        assert value.value == 5 * times


async def test_array_slices_shared_with_a_child() -> None:
    async with SharedArray("d", [0.0] * 10) as arr:
        arr[0:2] = [1.0, 2.0]
        arr[::3] = [7.0, 7.0, 7.0, 7.0]
        assert arr[:4] == [7.0, 2.0, 0.0, 7.0]
        with pytest.raises(ValueError, match="needs 3 items"):
            arr[0:3] = [1.0]
        async with ChildProcess(children.fill, arr, 5, 8, 4.5) as child:
            with anyio.fail_after(30):
                seen = await child.result()
        assert seen == arr[:] == [7.0, 2.0, 0.0, 7.0, 0.0, 4.5, 4.5, 4.5, 0.0, 7.0]
        assert len(arr) == 10
        assert list(arr) == arr.tolist()
        assert arr.get_lock() is arr.lock


async def test_raw_array_written_by_a_child() -> None:
    async with RawSharedArray("i", 50) as raw:
        assert not hasattr(raw, "lock")
        async with ChildProcess(children.squares, raw) as child:
            with anyio.fail_after(30):
                await child.result()
        assert raw[:] == [i * i for i in range(50)]
        with raw.buffer as view:
            assert view.format == "i"
            assert view[7] == 49


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="typecode"):
        RawSharedArray("x", 3)
    with pytest.raises(ValueError, match="size"):
        RawSharedArray("d", -1)
    with pytest.raises(TypeError):
        SharedValue("i", "text")
    with pytest.raises(ValueError):
        ShmChannel(-1)
    with pytest.raises(ValueError):
        ShmChannel(10, slots=0)


# -- cleanup --------------------------------------------------------------------------


async def test_scope_end_leaves_nothing_in_dev_shm() -> None:
    async with SharedValue("d", 1.0) as v, SharedArray("b", 3) as a, ShmChannel(10) as c:
        names = [shm_path(v.name), shm_path(a.name), shm_path(c.name)]
        names += fifo_paths(v.lock, a.lock, c._empty, c._full, c._send_lock, c._recv_lock)
        assert all(p.exists() for p in names)
    assert not [p for p in names if p.exists()]
    with pytest.raises(ClosedError):
        _ = v.value


async def test_a_live_view_at_scope_end_is_reported_and_still_unlinked() -> None:
    arr = RawSharedArray("d", 4)
    view = arr.buffer
    with pytest.raises(BusyError):
        await arr.aclose()
    assert not shm_path(arr.name).exists()
    view.release()


_SCENARIO = """
import array, asyncio, pickle, sys
from anycore import ChildProcess, SharedValue, ShmChannel
sys.path.insert(0, sys.argv[1])
import _sharedmem_children as children

async def main():
    async with SharedValue("i") as v, ShmChannel(800) as chan:
        async with ChildProcess(children.increment, v, 10) as child:
            await child.result()
        async with ChildProcess(children.sum_arrays, chan, 1) as child:
            await chan.send(array.array("d", [1.0] * 100))
            assert await child.result() == [100.0]
        assert v.value == 10
        # An unrelated process attaches (its own resource tracker, cpython#82300).
        code = "import pickle, sys; a = pickle.loads(sys.stdin.buffer.read()); print(a.value)"
        out = __import__("subprocess").run(
            [sys.executable, "-c", code], input=pickle.dumps(v), capture_output=True, timeout=60
        )
        assert out.stdout.strip() == b"10", out
        assert out.stderr == b"", out.stderr
        print("segment still there:", __import__("os").path.exists("/dev/shm/" + v.name))

asyncio.run(main())
"""


def test_no_resource_tracker_warning_and_no_leak_across_processes() -> None:
    env = {**os.environ, "PYTHONPATH": FRAMEWORK}
    before = set(os.listdir("/dev/shm"))
    out = subprocess.run(
        [sys.executable, "-c", _SCENARIO, TESTS],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "segment still there: True" in out.stdout
    assert "resource_tracker" not in out.stderr, out.stderr
    assert "leaked" not in out.stderr, out.stderr
    ours = {n for n in set(os.listdir("/dev/shm")) - before if "psm_" in n or "anycore" in n}
    assert not ours


# -- process-shared primitives ----------------------------------------------------------


async def test_process_event_wakes_a_child() -> None:
    event, ready = ProcessEvent(), ProcessEvent()
    try:
        async with ChildProcess(children.wait_event, event, ready, 30.0) as child:
            with anyio.fail_after(30):
                await ready.wait()
                assert not event.is_set()
                event.set()
                assert await child.result() is True
        event.clear()
        assert not event.is_set()
    finally:
        event.close()
        ready.close()
    assert not [p for p in fifo_paths(event, ready) if p.exists()]


async def test_process_semaphore_across_processes() -> None:
    async with contextlib.aclosing(ProcessSemaphore(0)) as sem:
        async with ChildProcess(children.take_and_release, sem, 30.0) as child:
            sem.release()
            with anyio.fail_after(30):
                assert await child.result() is True
        assert sem.value == 1
        await sem.acquire()
        with pytest.raises(WouldBlock):
            sem.acquire_nowait()


async def test_lock_semantics() -> None:
    lock = ProcessLock()
    try:
        async with lock:
            assert lock.locked()
            with pytest.raises(WouldBlock):
                lock.acquire_nowait()
        assert not lock.locked()
        with pytest.raises(TooManyReleases):
            lock.release()
        copy = pickle.loads(pickle.dumps(lock))
        async with copy:
            assert lock.locked()
        copy.close()
        with pytest.raises(ClosedError):
            await copy.acquire()
        async with lock:
            with pytest.raises(RuntimeStateError):
                lock.sync_acquire()  # it would block the loop thread: refused
    finally:
        lock.close()


async def test_cancelled_acquire_takes_no_token() -> None:
    async with contextlib.aclosing(ProcessSemaphore(0)) as sem:
        with anyio.move_on_after(0.05):
            await sem.acquire()
        sem.release()
        assert sem.value == 1
        with anyio.fail_after(5):
            await sem.acquire()


def test_semaphore_value_range() -> None:
    with pytest.raises(ValueError):
        ProcessSemaphore(-1)
    with pytest.raises(ValueError):
        ProcessSemaphore(100_000)


# -- the example ----------------------------------------------------------------------


def test_shm_channel_example_runs() -> None:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "examples/shm_channel.py"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
        env={**os.environ, "PYTHONPATH": FRAMEWORK},
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert "resource_tracker" not in out.stderr, out.stderr
    assert "batch 3: 250,000 samples, mean 3.003, range 2.000..4.000" in out.stdout
    assert "child closed its channel" in out.stdout
    assert "child processed 4 batches, 1,000,000 samples" in out.stdout
    assert "the loop ticked" in out.stdout


# -- any message comes back as it was sent ------------------------------------------

_ROUND_TRIP = ShmChannel(8 * 64, slots=1)


@settings(max_examples=60)
@given(
    typecode=st.sampled_from(TYPECODES),
    data=st.data(),
)
def test_any_typed_array_round_trips(typecode: str, data: st.DataObject) -> None:
    itemsize = array.array(typecode).itemsize
    raw = data.draw(st.binary(max_size=8 * 64).map(lambda b: b[: len(b) // itemsize * itemsize]))
    sent = array.array(typecode)
    sent.frombytes(raw)
    _ROUND_TRIP.sync_send(sent, timeout=5)
    view = _ROUND_TRIP.sync_recv(timeout=5)
    assert view.format == typecode
    assert view.tobytes() == raw
    _ROUND_TRIP.sync_send(sent, timeout=5)
    back = _ROUND_TRIP.sync_recv_array(timeout=5)
    assert back.typecode == typecode
    assert back.tobytes() == raw


def teardown_module() -> None:
    asyncio.run(_ROUND_TRIP.aclose())


async def test_an_attached_copy_closing_leaves_the_segment() -> None:
    async with RawSharedArray("d", [1.0, 2.0]) as arr:
        copy = pickle.loads(pickle.dumps(arr))
        copy.close()
        assert copy.closed
        assert shm_path(arr.name).exists()
        assert arr[:] == [1.0, 2.0]
        with pytest.raises(ClosedError):
            pickle.dumps(copy)


async def test_two_child_senders_share_one_channel() -> None:
    chan = ShmChannel(16, slots=2)
    async with (
        chan,
        ChildProcess(children.send_tagged, chan, 1, 150) as one,
        ChildProcess(children.send_tagged, chan, 2, 150) as two,
    ):
        seen: dict[int, list[int]] = {1: [], 2: []}
        with anyio.fail_after(60):
            for _ in range(300):
                tag, i = (await chan.recv()).tolist()
                seen[tag].append(i)
            assert await one.result() == await two.result() == 150
    # Every message exactly once, and each sender's in its order.
    assert seen == {1: list(range(150)), 2: list(range(150))}


async def test_receives_cancelled_at_random_lose_and_duplicate_nothing() -> None:
    import random

    rng = random.Random(1234)
    chan = ShmChannel(8 * 4, slots=2)
    async with chan, ChildProcess(children.send_arrays, chan, 200, 4) as child:
        got: list[float] = []
        with anyio.fail_after(60):
            while len(got) < 200:
                with anyio.move_on_after(rng.choice((0, 0.0001, 0.001))):
                    got.append((await chan.recv_array())[0])
            with pytest.raises(PeerClosed):
                await chan.recv()
            assert await child.result() == 200
    assert got == [float(i) for i in range(200)]


async def test_value_and_array_can_share_one_lock() -> None:
    async with SharedValue("i") as count, SharedArray("d", 4, lock=count.lock) as arr:
        assert arr.lock is count.lock
        async with count.lock:
            arr[count.value] = 1.5
            count.value += 1
        assert arr[0] == 1.5
    # The array did not own the lock; the value did, and its scope removed it.
    assert not Path(count.lock.path).exists()


def test_bounded_semaphore_refuses_an_extra_release() -> None:
    sem = ProcessSemaphore(2, bounded=True)
    try:
        sem.acquire_nowait()
        sem.release()
        with pytest.raises(TooManyReleases):
            sem.release()
        assert sem.value == 2
    finally:
        sem.close()


async def test_ctypes_types_as_typecodes_and_multiprocessing_children() -> None:
    import ctypes

    ctx = multiprocessing.get_context("spawn")
    async with SharedArray(ctypes.c_double, 6) as arr, SharedValue(ctypes.c_int, 0) as v:
        assert (arr.typecode, v.typecode) == ("d", "i")
        procs = [ctx.Process(target=children.increment, args=(v, 200)) for _ in range(2)]
        procs.append(ctx.Process(target=children.fill, args=(arr, 1, 4, 2.5)))
        for p in procs:
            p.start()
        for p in procs:
            await anyio.to_thread.run_sync(p.join, 30)
        assert [p.exitcode for p in procs] == [0, 0, 0]
        assert v.value == 400
        assert arr[:] == [0.0, 2.5, 2.5, 2.5, 0.0, 0.0]
    with pytest.raises(ValueError, match="ctypes type"):
        SharedValue(ctypes.c_char)


def test_segment_removed_behind_our_back_still_ends_cleanly() -> None:
    code = (
        "import asyncio, os\n"
        "from anycore import SharedValue\n"
        "async def main():\n"
        "    async with SharedValue('d', 1.0) as v:\n"
        "        os.unlink('/dev/shm/' + v.name)\n"
        "asyncio.run(main())\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": FRAMEWORK},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert "resource_tracker" not in out.stderr, out.stderr


async def test_a_corrupt_slot_header_is_a_clear_error() -> None:
    async with ShmChannel(16) as chan:
        await chan.send(b"fine")
        # Another process scribbles over the slot header (nbytes > capacity).
        struct.pack_into("=Q", chan._view, 64, 1 << 40)
        with pytest.raises(BrokenError, match="corrupt"):
            await chan.recv()


def test_threads_wait_on_one_semaphore_at_once() -> None:
    import threading

    sem = ProcessSemaphore(0)
    got: list[bool] = []
    try:
        threads = [
            threading.Thread(target=lambda: got.append(sem.sync_acquire(timeout=30)))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for _ in threads:
            sem.release()
        for t in threads:
            t.join(30)
        assert got == [True, True, True]
        assert sem.value == 0
    finally:
        sem.close()
