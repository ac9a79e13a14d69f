"""connect(): tcp and unix, timeouts, retry with backoff, Happy Eyeballs."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import anycore._net._client as client_module
from anycore import LineHandler, connect, move_on_after as anycore_move_on, serve
from anycore._net._client import happy_eyeballs
from anycore.errors import ConnectError, EndpointError


class Echo(LineHandler):
    def line_received(self, line: bytes) -> None:
        self.send_line(line)


class Collector(LineHandler):
    def __init__(self) -> None:
        self.lines: asyncio.Queue[bytes] = asyncio.Queue(10)

    async def line_received(self, line: bytes) -> None:
        await self.lines.put(line)


@contextmanager
def black_hole() -> Iterator[int]:
    """A loopback port whose accept queue is full: new SYNs are dropped and
    connect() hangs (no routing tricks, loopback only)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(16):
            s = socket.socket()
            s.setblocking(False)
            fillers.append(s)
            s.connect_ex(("127.0.0.1", port))
            _, writable, _ = select.select([], [s], [], 0.2)
            if not writable:
                break
        else:
            pytest.skip("could not fill the accept queue of a loopback listener")
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_connect_tcp_and_talk() -> None:
    async with serve(Echo, "tcp://127.0.0.1:0") as server:
        h = await connect(f"tcp://127.0.0.1:{server.port}", Collector)
        h.send_line(b"hello")
        assert await asyncio.wait_for(h.lines.get(), 5) == b"hello"
        sock = h.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        h.close()
        await asyncio.wait_for(h.wait_closed(), 5)
        assert h.is_closing()


async def test_connect_unix(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    async with serve(Echo, f"unix://{path}"):
        h = await connect(f"unix://{path}", Collector)
        h.send_line(b"over unix")
        assert await asyncio.wait_for(h.lines.get(), 5) == b"over unix"
        h.close()
        await h.wait_closed()


async def test_connect_by_name_with_several_addresses() -> None:
    async with serve(Echo, "tcp://127.0.0.1:0") as server:
        # "localhost" may resolve to ::1 first; nothing listens there, so Happy
        # Eyeballs moves on to 127.0.0.1.
        h = await connect(f"tcp://localhost:{server.port}", Collector, timeout=10)
        h.send_line(b"by name")
        assert await asyncio.wait_for(h.lines.get(), 5) == b"by name"
        h.close()
        await h.wait_closed()


async def test_connect_timeout() -> None:
    with black_hole() as port:
        start = time.monotonic()
        with pytest.raises(ConnectError, match="timed out"):
            await connect(f"tcp://127.0.0.1:{port}", Echo, timeout=0.3)
        assert 0.25 <= time.monotonic() - start < 5


async def test_happy_eyeballs_moves_past_an_address_that_hangs() -> None:
    async with serve(Echo, "tcp://127.0.0.1:0") as server:
        with black_hole() as port:
            infos = [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", server.port)),
            ]
            start = time.monotonic()
            sock = await asyncio.wait_for(happy_eyeballs(infos, 0.1), 5)
            try:
                assert sock.getpeername()[1] == server.port
                assert time.monotonic() - start < 3
            finally:
                sock.close()


async def test_happy_eyeballs_reports_every_failure() -> None:
    closed = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))  # bound, not listening: connection refused
        closed.append(s)
    try:
        infos = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", s.getsockname()) for s in closed]
        with pytest.raises(ConnectionRefusedError, match="other address"):
            await happy_eyeballs(infos, 0.05)
    finally:
        for s in closed:
            s.close()


async def test_refused_connection_raises_connect_error_after_retries() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    try:
        with pytest.raises(ConnectError, match="3 attempt") as info:
            await connect(f"tcp://127.0.0.1:{port}", Echo, retries=2, backoff=0.01)
        assert isinstance(info.value, OSError)
        assert isinstance(info.value.__cause__, ConnectionRefusedError)
    finally:
        s.close()


async def test_retry_with_backoff_until_the_server_appears(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    delays: list[float] = []
    real_delay = client_module.backoff_delay

    def delay(attempt: int, backoff: float, max_backoff: float) -> float:
        d = real_delay(attempt, backoff, max_backoff)
        delays.append(d)
        if attempt == 2:
            sock.listen(5)  # the server "comes up" after two refusals
        return d

    monkeypatch.setattr(client_module, "backoff_delay", delay)
    try:
        h = await connect(f"tcp://127.0.0.1:{port}", Echo, retries=5, backoff=0.02)
        assert len(delays) == 2
        assert 0.015 <= delays[0] <= 0.025  # 0.02 +- 25% jitter
        assert 0.03 <= delays[1] <= 0.05  # doubled
        h.close()
        conn, _ = sock.accept()
        conn.close()
        await h.wait_closed()
    finally:
        sock.close()


def test_retry_delay_is_capped() -> None:
    assert client_module.backoff_delay(30, 0.1, 2.0) <= 2.5


async def test_connect_rejects_datagram_endpoints() -> None:
    with pytest.raises(EndpointError):
        await connect("udp://127.0.0.1:5", Echo)


async def test_name_resolution_failure_is_a_connect_error() -> None:
    with pytest.raises(ConnectError):
        await connect("tcp://no-such-host.invalid:80", Echo, timeout=5)


async def test_the_connected_handler_is_an_async_context_manager() -> None:
    async with serve(Echo, "tcp://127.0.0.1:0") as server:
        async with await connect(f"tcp://127.0.0.1:{server.port}", Collector) as handler:
            handler.send_line(b"hi")
            assert await asyncio.wait_for(handler.lines.get(), 5) == b"hi"
            assert not handler.is_closing()
        assert handler.is_closing()
        await asyncio.wait_for(handler.wait_closed(), 1)  # already gone: returns at once
        await handler.aclose()  # idempotent
    await Collector().aclose()  # never connected: nothing to do


async def test_a_cancelled_aclose_aborts_the_connection() -> None:
    # A peer that never reads: close() would wait for the buffer to drain.
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        handler = await connect(f"tcp://127.0.0.1:{listener.getsockname()[1]}", Echo)
        peer, _ = listener.accept()
        with peer:
            for _ in range(256):  # 16 MiB: more than the loopback buffers hold
                handler.send(b"x" * 65536)
            with anycore_move_on(0.2) as scope:
                await handler.aclose()
            assert scope.cancelled_caught  # the graceful close was still waiting
            await asyncio.wait_for(handler.wait_closed(), 5)
            assert handler.is_closing()
    finally:
        listener.close()
