"""Datagram handlers, serve_datagram and open_datagram_endpoint (both loops)."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

from anycore import (
    ClosedError,
    EndpointError,
    LocalProtocolError,
    RuntimeStateError,
)
from anycore._core._runtime import Phase, open_runtime
from anycore._net._datagram import Address, DatagramHandler, _Glue
from anycore._net._datagram_client import open_datagram_endpoint
from anycore._net._datagram_server import DatagramServer, serve_datagram


class Echo(DatagramHandler):
    def __init__(self) -> None:
        self.made = 0
        self.lost: list[BaseException | None] = []

    def connection_made(self) -> None:
        self.made += 1

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.sendto(data.upper(), addr)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


def _serving(server: DatagramServer) -> bool:
    # A function call, so that mypy does not narrow the property across awaits.
    return server.is_serving()


async def _spin_until(predicate: Any, limit: int = 20000) -> None:
    """Yield to the loop until predicate() holds (bounded; no sleeping)."""
    for _ in range(limit):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_echo_roundtrip_and_bound_address() -> None:
    async with serve_datagram(Echo, "udp://127.0.0.1:0") as server:
        assert isinstance(server, DatagramServer)
        (addr,) = server.addresses
        assert addr[0] == "127.0.0.1"
        assert addr[1] != 0
        assert server.port == addr[1]
        assert [str(e) for e in server.endpoints] == [f"udp://127.0.0.1:{addr[1]}"]
        assert server.is_serving()
        async with open_datagram_endpoint(server.endpoints[0]) as client:
            assert client.remote_address == addr
            for i in range(20):
                client.send(b"hello %d" % i)
                data, sender = await client.receive()
                assert data == b"HELLO %d" % i
                assert sender[:2] == addr[:2]
        stats = server.statistics()
        assert stats.datagrams_received == 20
        assert stats.datagrams_sent == 20
        assert stats.bytes_received == sum(len(b"hello %d" % i) for i in range(20))
        (handler,) = server.handlers
        assert isinstance(handler, Echo)
        assert handler.made == 1
    assert not _serving(server)
    assert handler.lost == [None]
    assert handler.closing
    with pytest.raises(ClosedError):
        handler.sendto(b"x", addr)


async def test_reuse_port_shares_a_port() -> None:
    async with (
        serve_datagram(Echo, "udp://127.0.0.1:0", reuse_port=True) as first,
        serve_datagram(Echo, first.endpoints[0], reuse_port=True) as second,
    ):
        assert second.port == first.port


def _has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback on this machine")
async def test_ipv6_and_several_endpoints() -> None:
    async with serve_datagram(Echo, "udp://[::1]:0", "udp://127.0.0.1:0") as server:
        assert len(server.handlers) == 2
        v6, v4 = server.endpoints
        assert str(v6).startswith("udp://[::1]:")
        for endpoint in (v6, v4):
            async with open_datagram_endpoint(endpoint) as client:
                client.send(b"abc")
                assert (await client.receive())[0] == b"ABC"


async def test_hostname_binds_every_address_on_one_port() -> None:
    async with serve_datagram(Echo, "udp://localhost:0") as server:
        ports = {a[1] for a in server.addresses}
        assert len(ports) == 1
        assert all(a[0] in ("127.0.0.1", "::1") for a in server.addresses)


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://127.0.0.1:0",
        "udp://127.0.0.1",
        "udp://127.0.0.1:99999",
        "udp://h:1?bogus=1",
        "udp://:7000",
        "127.0.0.1:7000",
    ],
)
async def test_bad_endpoints(endpoint: str) -> None:
    with pytest.raises(EndpointError):
        async with serve_datagram(Echo, endpoint):
            pass


async def test_no_endpoint_is_an_error() -> None:
    with pytest.raises(EndpointError):
        serve_datagram(Echo)
    with pytest.raises(EndpointError):
        open_datagram_endpoint()


async def test_bind_failure_closes_what_was_bound() -> None:
    async with serve_datagram(Echo, "udp://127.0.0.1:0") as taken:
        failing = serve_datagram(Echo, "udp://127.0.0.1:0", taken.endpoints[0])
        with pytest.raises(OSError):
            await failing.start()
        assert failing.addresses == []
        (first,) = failing.handlers
        assert isinstance(first, Echo)
        assert first.lost == [None]


async def test_async_handler_keeps_order_and_runs_one_at_a_time() -> None:
    seen: list[bytes] = []
    running = 0
    most = 0

    class Slow(DatagramHandler):
        async def datagram_received(self, data: bytes, addr: Address) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            seen.append(data)
            running -= 1
            self.sendto(b"done " + data, addr)

    async with (
        serve_datagram(Slow, "udp://127.0.0.1:0") as server,
        open_datagram_endpoint(server.endpoints[0]) as client,
    ):
        for i in range(30):
            client.send(b"%d" % i)
        replies = [(await client.receive())[0] for _ in range(30)]
    assert seen == [b"%d" % i for i in range(30)]
    assert replies == [b"done %d" % i for i in range(30)]
    assert most == 1


async def test_sync_hook_returning_awaitable_is_awaited_in_order() -> None:
    seen: list[bytes] = []

    class Mixed(DatagramHandler):
        def datagram_received(self, data: bytes, addr: Address) -> Any:
            if data == b"slow":
                return self._slow(data)
            seen.append(data)
            return None

        async def _slow(self, data: bytes) -> None:
            await asyncio.sleep(0)
            seen.append(data)

    async with (
        serve_datagram(Mixed, "udp://127.0.0.1:0") as server,
        open_datagram_endpoint(server.endpoints[0]) as client,
    ):
        for d in (b"a", b"slow", b"b", b"c"):
            client.send(d)
        await _spin_until(lambda: len(seen) == 4)
    assert seen == [b"a", b"slow", b"b", b"c"]


async def test_async_connection_made_runs_before_datagrams() -> None:
    order: list[str] = []
    gate = asyncio.Event()

    class Starting(DatagramHandler):
        async def connection_made(self) -> None:
            await gate.wait()
            order.append("made")

        def datagram_received(self, data: bytes, addr: Address) -> None:
            order.append(data.decode())

    async with (
        serve_datagram(Starting, "udp://127.0.0.1:0") as server,
        open_datagram_endpoint(server.endpoints[0]) as client,
    ):
        client.send(b"one")
        client.send(b"two")
        await _spin_until(lambda: server.statistics().datagrams_received == 2)
        assert order == []
        gate.set()
        await _spin_until(lambda: len(order) == 3)
    assert order == ["made", "one", "two"]


async def test_oversized_datagrams_dropped_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    too_large: list[int] = []

    class Small(Echo):
        max_datagram_size = 100

        def datagram_too_large(self, size: int, addr: Address) -> None:
            too_large.append(size)
            super().datagram_too_large(size, addr)

    with caplog.at_level(logging.WARNING, logger="anycore.datagram"):
        async with (
            serve_datagram(Small, "udp://127.0.0.1:0") as server,
            open_datagram_endpoint(server.endpoints[0]) as client,
        ):
            client.send(b"x" * 101)
            client.send(b"y" * 100)
            data, _ = await client.receive()
            assert data == b"Y" * 100
            stats = server.statistics()
            assert stats.dropped_too_large == 1
            assert stats.datagrams_received == 1
            (handler,) = server.handlers
            with pytest.raises(LocalProtocolError):
                handler.sendto(b"z" * 101, client.local_address)
    assert too_large == [101]
    assert "dropped a 101-byte datagram" in caplog.text


async def test_client_refuses_oversized_send() -> None:
    async with (
        serve_datagram(Echo, "udp://127.0.0.1:0") as server,
        open_datagram_endpoint(server.endpoints[0]) as client,
    ):
        with pytest.raises(LocalProtocolError):
            client.send(b"x" * 70000)
        with pytest.raises(LocalProtocolError, match="empty"):
            client.send(b"")


async def test_handler_error_is_logged_and_socket_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Fragile(Echo):
        def datagram_received(self, data: bytes, addr: Address) -> None:
            if data == b"boom":
                raise ValueError("bad datagram")
            super().datagram_received(data, addr)

    class FragileAsync(Echo):
        async def datagram_received(self, data: bytes, addr: Address) -> None:  # type: ignore[override]
            if data == b"boom":
                raise ValueError("bad datagram")
            super().datagram_received(data, addr)

    for cls in (Fragile, FragileAsync):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="anycore.datagram"):
            async with (
                serve_datagram(cls, "udp://127.0.0.1:0") as server,
                open_datagram_endpoint(server.endpoints[0]) as client,
            ):
                client.send(b"boom")
                client.send(b"fine")
                assert (await client.receive())[0] == b"FINE"
                assert server.statistics().handler_errors == 1
        assert "bad datagram" in caplog.text


async def test_connection_refused_reaches_receive() -> None:
    # Bind then close a socket to find a port nobody listens on.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with open_datagram_endpoint(f"udp://127.0.0.1:{port}") as client:
        client.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError):
            await client.receive()
        assert client.statistics().os_errors == 1
        # The endpoint stays usable.
        client.send(b"still here")


async def test_receive_needs_queue_mode_and_async_iteration_ends_on_close() -> None:
    async with (
        serve_datagram(Echo, "udp://127.0.0.1:0") as server,
        open_datagram_endpoint(server.endpoints[0], Echo) as with_handler,
    ):
        with pytest.raises(RuntimeStateError):
            await with_handler.receive()
        assert isinstance(with_handler.handler, Echo)

        client = open_datagram_endpoint(server.endpoints[0])
        with pytest.raises(RuntimeStateError):
            client.send(b"not started")
        async with client:
            for word in (b"a", b"b", b"c"):
                client.send(word)
            got = []
            async for data, _addr in client:
                got.append(data)
                if len(got) == 3:
                    await client.aclose()
            assert got == [b"A", b"B", b"C"]
        with pytest.raises(ClosedError):
            await client.receive()


async def test_unconnected_endpoint_with_sendto() -> None:
    async with (
        serve_datagram(Echo, "udp://127.0.0.1:0") as server,
        open_datagram_endpoint(local="udp://127.0.0.1:0") as client,
    ):
        assert client.remote_address is None
        client.sendto(b"hi", server.addresses[0])
        data, addr = await client.receive()
        assert (data, addr[:2]) == (b"HI", server.addresses[0][:2])


async def test_client_queue_is_bounded() -> None:
    async with (
        serve_datagram(Echo, "udp://127.0.0.1:0") as server,
        open_datagram_endpoint(server.endpoints[0], max_queued=3) as client,
    ):
        for _ in range(10):
            client.send(b"x")
        await _spin_until(lambda: server.statistics().datagrams_sent == 10)
        await _spin_until(lambda: client.statistics().datagrams_received == 10)
        assert client.dropped == 7
        assert [(await client.receive())[0] for _ in range(3)] == [b"X"] * 3


async def test_async_backlog_is_bounded() -> None:
    gate = asyncio.Event()
    handled: list[bytes] = []

    class Blocked(DatagramHandler):
        max_queued_datagrams = 4

        async def datagram_received(self, data: bytes, addr: Address) -> None:
            await gate.wait()
            handled.append(data)

    async with (
        serve_datagram(Blocked, "udp://127.0.0.1:0") as server,
        open_datagram_endpoint(server.endpoints[0]) as client,
    ):
        for i in range(20):
            client.send(b"%d" % i)
        (handler,) = server.handlers
        transport = handler.transport
        can_pause = hasattr(transport, "pause_reading")
        if can_pause:
            # asyncio: reading pauses at the bound; the rest waits in the kernel.
            await _spin_until(lambda: server.statistics().queued == 4)
            for _ in range(100):
                await asyncio.sleep(0)
            assert server.statistics().datagrams_received == 4
        else:
            # uvloop cannot pause a UDP transport: the excess is dropped.
            await _spin_until(
                lambda: server.statistics().datagrams_received == 20,
            )
            assert server.statistics().dropped_backlog == 16
        assert server.statistics().queued <= 4
        gate.set()
        if can_pause:
            await _spin_until(lambda: len(handled) == 20)
            assert handled == [b"%d" % i for i in range(20)]
        else:
            await _spin_until(lambda: len(handled) == 4)
            assert handled == [b"%d" % i for i in range(4)]


async def test_graceful_close_finishes_queued_async_work() -> None:
    handled: list[bytes] = []
    lost: list[BaseException | None] = []

    class Worker(DatagramHandler):
        async def datagram_received(self, data: bytes, addr: Address) -> None:
            await asyncio.sleep(0)
            handled.append(data)

        async def connection_lost(self, exc: BaseException | None) -> None:
            await asyncio.sleep(0)
            lost.append(exc)

    server = serve_datagram(Worker, "udp://127.0.0.1:0")
    async with server, open_datagram_endpoint(server.endpoints[0]) as client:
        for i in range(5):
            client.send(b"%d" % i)
        await _spin_until(lambda: server.statistics().datagrams_received == 5)
    assert handled == [b"%d" % i for i in range(5)]
    assert lost == [None]


async def test_close_deadline_cancels_stuck_handler_then_connection_lost_once() -> None:
    cancelled = asyncio.Event()
    lost: list[BaseException | None] = []
    started = asyncio.Event()

    class Stuck(DatagramHandler):
        async def datagram_received(self, data: bytes, addr: Address) -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        def connection_lost(self, exc: BaseException | None) -> None:
            lost.append(exc)

    server = serve_datagram(Stuck, "udp://127.0.0.1:0", drain_timeout=0.05)
    async with server, open_datagram_endpoint(server.endpoints[0]) as client:
        client.send(b"x")
        await started.wait()
    assert cancelled.is_set()
    assert lost == [None]
    await server.aclose()  # idempotent
    assert lost == [None]


async def test_cancelled_close_aborts() -> None:
    class Stuck(DatagramHandler):
        async def datagram_received(self, data: bytes, addr: Address) -> None:
            await asyncio.Event().wait()

    server = serve_datagram(Stuck, "udp://127.0.0.1:0", drain_timeout=None)
    await server.start()
    async with open_datagram_endpoint(server.endpoints[0]) as client:
        client.send(b"x")
        await _spin_until(lambda: server.statistics().queued == 1)
    closing = asyncio.ensure_future(server.aclose())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not closing.done()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    (handler,) = server.handlers
    await _spin_until(lambda: handler.closing and server.addresses == [])
    await server.aclose()


async def test_serve_forever_until_cancelled() -> None:
    server = serve_datagram(Echo, "udp://127.0.0.1:0")
    task = asyncio.ensure_future(server.serve_forever())
    await _spin_until(server.is_serving)
    async with open_datagram_endpoint(server.endpoints[0]) as client:
        client.send(b"q")
        assert (await client.receive())[0] == b"Q"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not server.is_serving()
    (handler,) = server.handlers
    assert isinstance(handler, Echo)
    assert handler.lost == [None]


async def test_runtime_shutdown_stops_the_server() -> None:
    server = serve_datagram(Echo, "udp://127.0.0.1:0")
    async with open_runtime(handle_signals=False) as runtime:
        await server.start()
        names = [name for name, _ in runtime._steps[Phase.STOP_ACCEPTING]]
        assert any("datagram server" in n for n in names)
        await runtime.shutdown("test")
    assert not server.is_serving()
    (handler,) = server.handlers
    assert isinstance(handler, Echo)
    assert handler.lost == [None]


async def test_closing_first_unregisters_from_the_runtime() -> None:
    async with open_runtime(handle_signals=False) as runtime:
        async with serve_datagram(Echo, "udp://127.0.0.1:0"):
            assert len(runtime._steps[Phase.STOP_ACCEPTING]) == 1
        assert runtime._steps[Phase.STOP_ACCEPTING] == []


async def test_drain_waits_for_resume_writing() -> None:
    async with serve_datagram(Echo, "udp://127.0.0.1:0") as server:
        (handler,) = server.handlers
        await handler.drain()  # not paused: returns at once
        glue = handler._glue
        assert isinstance(glue, _Glue)
        glue.pause_writing()
        waiter = asyncio.ensure_future(handler.drain())
        for _ in range(3):
            await asyncio.sleep(0)
        assert not waiter.done()
        glue.resume_writing()
        await waiter
        glue.pause_writing()
        waiter = asyncio.ensure_future(handler.drain())
        await asyncio.sleep(0)
    with pytest.raises(ClosedError):
        await waiter


async def test_handler_factory_must_return_a_handler() -> None:
    def bad() -> Any:
        return object()

    with pytest.raises(TypeError):
        async with serve_datagram(bad, "udp://127.0.0.1:0"):
            pass


async def test_connection_made_failure_fails_start() -> None:
    class Broken(DatagramHandler):
        def connection_made(self) -> None:
            raise RuntimeError("cannot start")

    with pytest.raises(RuntimeError, match="cannot start"):
        async with serve_datagram(Broken, "udp://127.0.0.1:0"):
            pass


# -- the portable path (anyio UDP sockets): trio, and asyncio with portable=True --------


class OrderedAsync(DatagramHandler):
    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.lost: list[BaseException | None] = []

    async def datagram_received(self, data: bytes, addr: Address) -> None:
        import anyio

        await anyio.sleep(0)
        self.seen.append(data)
        self.sendto(b"ack " + data, addr)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


async def _portable_scenario(portable: bool | None) -> None:
    import anyio

    async with serve_datagram(Echo, "udp://127.0.0.1:0", portable=portable) as server:
        assert server.is_serving()
        (addr,) = server.addresses
        async with open_datagram_endpoint(server.endpoints[0], portable=portable) as client:
            assert client.remote_address == addr
            for i in range(10):
                client.send(b"hello %d" % i)
                data, _ = await client.receive()
                assert data == b"HELLO %d" % i
            with pytest.raises(LocalProtocolError):
                client.send(b"x" * 70000)
        assert server.statistics().datagrams_received == 10
        (echo,) = server.handlers
        assert isinstance(echo, Echo)
    assert echo.lost == [None]
    assert not _serving(server)

    async with serve_datagram(OrderedAsync, "udp://127.0.0.1:0", portable=portable) as server:
        async with open_datagram_endpoint(server.endpoints[0], portable=portable) as client:
            for i in range(20):
                client.send(b"%d" % i)
            replies = [(await client.receive())[0] for _ in range(20)]
        (ordered,) = server.handlers
        assert isinstance(ordered, OrderedAsync)
    assert replies == [b"ack %d" % i for i in range(20)]
    assert ordered.seen == [b"%d" % i for i in range(20)]
    assert ordered.lost == [None]

    from anycore._core._backend import current_backend

    if current_backend() != "trio":
        return  # anyio's asyncio UDP sockets drop ICMP errors (error_received)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with open_datagram_endpoint(f"udp://127.0.0.1:{port}", portable=portable) as client:
        client.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError), anyio.fail_after(10):
            await client.receive()


async def test_portable_path_on_asyncio() -> None:
    await _portable_scenario(True)


def test_trio_backend() -> None:
    import anyio

    anyio.run(_portable_scenario, None, backend="trio")


def test_trio_close_cancels_a_stuck_handler_then_connection_lost_once() -> None:
    import anyio

    events: list[str] = []

    class Stuck(DatagramHandler):
        async def datagram_received(self, data: bytes, addr: Address) -> None:
            events.append("started")
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                events.append("cancelled")
                raise

        def connection_lost(self, exc: BaseException | None) -> None:
            events.append("lost")

    async def main() -> None:
        server = serve_datagram(Stuck, "udp://127.0.0.1:0", drain_timeout=0.05)
        async with server, open_datagram_endpoint(server.endpoints[0]) as client:
            client.send(b"x")
            with anyio.fail_after(10):
                while server.statistics().datagrams_received == 0:
                    await anyio.sleep(0)
        await server.aclose()

    anyio.run(main, backend="trio")
    assert events == ["started", "cancelled", "lost"]


def test_trio_cancelled_close_aborts_the_sockets() -> None:
    import anyio

    events: list[str] = []

    class Stuck(DatagramHandler):
        async def datagram_received(self, data: bytes, addr: Address) -> None:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                events.append("cancelled")
                raise

        def connection_lost(self, exc: BaseException | None) -> None:
            events.append("lost")

    async def main() -> None:
        server = serve_datagram(Stuck, "udp://127.0.0.1:0", drain_timeout=None)
        async with server:
            async with open_datagram_endpoint(server.endpoints[0]) as client:
                client.send(b"x")
                with anyio.fail_after(10):
                    while server.statistics().datagrams_received == 0:
                        await anyio.sleep(0)
            with anyio.move_on_after(0.05) as scope:
                await server.aclose()  # waits forever for Stuck: cancelled
            assert scope.cancelled_caught
            assert events == ["cancelled", "lost"]
            assert server.addresses == []

    anyio.run(main, backend="trio")


async def test_datagram_serve_forever_reports_started_to_a_task_group() -> None:
    import anyio

    async with anyio.create_task_group() as tg:
        server = await tg.start(serve_datagram(Echo, "udp://127.0.0.1:0").serve_forever)
        assert server.endpoints
        tg.cancel_scope.cancel()
