"""Signals: fan-out, scoped receivers, restoring previous handlers, threads."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from types import FrameType

import pytest

import anycore


def _kill(sig: int) -> None:
    os.kill(os.getpid(), sig)


async def test_receiver_gets_signal() -> None:
    async with anycore.open_signals(signal.SIGUSR1, signal.SIGUSR2) as receiver:
        _kill(signal.SIGUSR2)
        assert await asyncio.wait_for(receiver.receive(), 5) == signal.SIGUSR2


async def test_async_iteration_and_coalescing() -> None:
    async with anycore.open_signals(signal.SIGUSR1, signal.SIGUSR2) as receiver:
        got = []
        # Raised while nobody is receiving: repeats of a pending signal coalesce.
        _kill(signal.SIGUSR1)
        _kill(signal.SIGUSR1)
        _kill(signal.SIGUSR2)
        await asyncio.sleep(0)
        async for sig in receiver:
            got.append(sig)
            if len(got) == 2:
                break
        assert got == [signal.SIGUSR1, signal.SIGUSR2]
        assert not receiver._pending


async def test_fan_out_to_every_subscriber() -> None:
    seen: list[str] = []
    done = asyncio.Event()

    async def async_cb(sig: int) -> None:
        seen.append("async")
        done.set()

    with (
        anycore.on_signal(signal.SIGUSR1, lambda s: seen.append("first")),
        anycore.on_signal(signal.SIGUSR1, lambda s: seen.append("second")),
        anycore.on_signal(signal.SIGUSR1, async_cb),
    ):
        async with anycore.open_signals(signal.SIGUSR1) as receiver:
            _kill(signal.SIGUSR1)
            assert await asyncio.wait_for(receiver.receive(), 5) == signal.SIGUSR1
            await asyncio.wait_for(done.wait(), 5)
    assert seen == ["first", "second", "async"]


async def test_previous_python_handler_is_restored() -> None:
    calls: list[int] = []

    def previous(sig: int, frame: FrameType | None) -> None:
        calls.append(sig)

    old = signal.signal(signal.SIGUSR1, previous)
    try:
        async with anycore.open_signals(signal.SIGUSR1) as receiver:
            inner = anycore.on_signal(signal.SIGUSR1, lambda s: None)
            inner.remove()  # not the last subscriber: still handled by anycore
            _kill(signal.SIGUSR1)
            await asyncio.wait_for(receiver.receive(), 5)
        assert calls == []
        assert signal.getsignal(signal.SIGUSR1) is previous
        _kill(signal.SIGUSR1)
        assert calls == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, old)


async def test_runtime_policy_keeps_working_next_to_subscribers() -> None:
    async with (
        anycore.open_runtime() as runtime,
        anycore.open_signals(signal.SIGTERM) as receiver,
    ):
        _kill(signal.SIGTERM)
        assert await asyncio.wait_for(receiver.receive(), 5) == signal.SIGTERM
        await asyncio.sleep(0)
        assert runtime.shutting_down
        assert runtime.report.signal == signal.SIGTERM
        # Shutdown cancels this body; leave it cleanly.
        await asyncio.Event().wait()


async def test_uncatchable_and_invalid_signals() -> None:
    with pytest.raises(anycore.SignalError, match="SIGKILL"):
        anycore.on_signal(signal.SIGKILL, lambda s: None)
    with pytest.raises(ValueError, match="not a signal"):
        anycore.on_signal(0, lambda s: None)
    with pytest.raises(ValueError, match="at least one"):
        anycore.open_signals()


async def test_next_signal_and_timeout() -> None:
    assert await anycore.next_signal(signal.SIGUSR2, timeout=0.01) is None
    asyncio.get_running_loop().call_soon(_kill, signal.SIGUSR2)
    assert await anycore.next_signal(signal.SIGUSR2, timeout=5) == signal.SIGUSR2


async def test_closed_receiver_raises() -> None:
    receiver = anycore.open_signals(signal.SIGUSR1)
    async with receiver:
        pass
    with pytest.raises(anycore.ClosedError):
        await receiver.receive()


async def test_loop_in_other_thread_is_routed_through_main_thread() -> None:
    ready = threading.Event()
    result: list[object] = []

    def thread_main() -> None:
        async def listen() -> None:
            # Entering waits until the main thread's loop has installed it.
            async with anycore.open_signals(signal.SIGUSR2) as receiver:
                ready.set()
                result.append(await asyncio.wait_for(receiver.receive(), 10))

        asyncio.run(listen())

    # The main thread's loop owns signals while it has a subscription.
    with anycore.on_signal(signal.SIGUSR1, lambda s: None):
        t = threading.Thread(target=thread_main)
        t.start()
        await asyncio.to_thread(ready.wait, 10)
        _kill(signal.SIGUSR2)
        await asyncio.to_thread(t.join, 10)
    assert result == [signal.SIGUSR2]


def test_other_thread_without_owner_gets_clear_error() -> None:
    errors: list[BaseException] = []

    def thread_main() -> None:
        async def listen() -> None:
            anycore.on_signal(signal.SIGUSR1, lambda s: None)

        try:
            asyncio.run(listen())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=thread_main)
    t.start()
    t.join(10)
    assert len(errors) == 1
    assert isinstance(errors[0], anycore.SignalError)
    assert "main thread" in str(errors[0])


async def test_failing_callback_is_logged_and_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def bad(sig: int) -> None:
        raise RuntimeError("callback bug")

    with anycore.on_signal(signal.SIGUSR1, bad):
        async with anycore.open_signals(signal.SIGUSR1) as receiver:
            _kill(signal.SIGUSR1)
            assert await asyncio.wait_for(receiver.receive(), 5) == signal.SIGUSR1
    assert "callback bug" in caplog.text


# -- trio, through anyio --------------------------------------------------------------


def test_trio_receivers_and_callbacks_restore_the_previous_handler() -> None:
    import anyio

    seen: list[int] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        seen.append(-signum)

    async def main() -> None:
        got = anyio.Event()

        async def callback(sig: int) -> None:  # async callbacks are awaited
            seen.append(sig)
            got.set()

        async with anycore.open_signals(signal.SIGUSR1) as receiver:
            _kill(signal.SIGUSR1)
            assert await receiver.receive() == signal.SIGUSR1
        with anycore.on_signal(signal.SIGUSR2, callback) as handle:
            await handle.wait_installed()
            _kill(signal.SIGUSR2)
            with anyio.fail_after(5):
                await got.wait()
        await anyio.wait_all_tasks_blocked()  # the callback's job has ended
        assert await anycore.next_signal(signal.SIGUSR1, timeout=0.01) is None

    old1 = signal.signal(signal.SIGUSR1, previous)
    old2 = signal.signal(signal.SIGUSR2, previous)
    try:
        anyio.run(main, backend="trio")
        assert signal.getsignal(signal.SIGUSR1) is previous
        assert signal.getsignal(signal.SIGUSR2) is previous
    finally:
        signal.signal(signal.SIGUSR1, old1)
        signal.signal(signal.SIGUSR2, old2)
    assert seen == [signal.SIGUSR2]


def test_trio_signals_outside_the_main_thread_are_a_clear_error() -> None:
    import anyio

    errors: list[BaseException] = []

    async def main() -> None:
        with pytest.raises(anycore.SignalError, match="main thread"):
            anycore.on_signal(signal.SIGUSR1, print)
        with pytest.raises(anycore.SignalError, match="main thread"):
            async with anycore.open_signals(signal.SIGUSR1):
                pass

    def in_thread() -> None:
        try:
            anyio.run(main, backend="trio")
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert errors == []


def test_trio_fan_out_to_every_subscriber_and_the_runtime_policy() -> None:
    import anyio

    seen: list[str] = []

    async def main() -> None:
        both = anyio.Event()

        def first(sig: int) -> None:
            seen.append("first")

        def second(sig: int) -> None:
            seen.append("second")
            both.set()

        async with anycore.open_runtime() as runtime:
            with (
                anycore.on_signal(signal.SIGUSR1, first) as one,
                anycore.on_signal(signal.SIGUSR1, second) as two,
            ):
                await one.wait_installed()
                await two.wait_installed()
                async with anycore.open_signals(signal.SIGUSR1, signal.SIGTERM) as receiver:
                    _kill(signal.SIGUSR1)
                    assert await receiver.receive() == signal.SIGUSR1
                    with anyio.fail_after(5):
                        await both.wait()
                    # SIGTERM reaches this receiver *and* the runtime's policy.
                    _kill(signal.SIGTERM)
                    assert await receiver.receive() == signal.SIGTERM
                    seen.append("receiver")
                    await anyio.sleep_forever()  # the runtime's shutdown cancels main
        assert runtime.report.signal == signal.SIGTERM
        seen.append("shut down")

    anyio.run(main, backend="trio")
    assert seen == ["first", "second", "receiver", "shut down"]
